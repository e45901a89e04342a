"""Latency / throughput / peak-memory measurement of a callable that processes one batch.

``measure(fn, batch_size, warmup=3, runs=10, device="cpu") -> LatencyResult``:
  * ``fn()`` runs one batch of ``batch_size`` images (inputs prepared by the caller, outside the timing).
  * ``warmup`` untimed calls first (cudnn autotuning, allocator, lazy init).
  * GPU (``device`` is CUDA): each run is bracketed by ``torch.cuda.Event(enable_timing=True)`` records and
    synchronised; peak memory is ``torch.cuda.max_memory_allocated(device)`` after
    ``reset_peak_memory_stats`` (tensor allocations by PyTorch only; not the CUDA context or other libraries).
  * CPU: ``time.perf_counter`` around each call; peak memory is the process's peak resident set size from
    ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux, bytes on macOS), i.e. the high-water mark of
    the whole process since it started — an upper bound for the callable, not a per-call figure.
  * Reported: per-batch times (ms), ``median_ms``/``p90_ms`` per batch, ``ms_per_image`` = median / batch,
    ``p90_ms_per_image``, ``images_per_second`` = batch_size / median seconds, ``peak_memory_mb`` (MiB).
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch


@dataclass
class LatencyResult:
    batch_size: int
    runs: int
    warmup: int
    device: str
    times_ms: list[float] = field(repr=False)
    median_ms: float
    p90_ms: float
    ms_per_image: float
    p90_ms_per_image: float
    images_per_second: float
    peak_memory_mb: float
    memory_kind: str  # "cuda_max_allocated" | "process_peak_rss"

    def metrics(self) -> dict[str, float]:
        """Values under the METRICS names the harness logs."""
        return {
            "latency_ms_per_image": self.ms_per_image,
            "images_per_second": self.images_per_second,
            "peak_memory_mb": self.peak_memory_mb,
        }

    def as_dict(self) -> dict:
        return asdict(self)


def peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024.0 * 1024.0) if sys.platform == "darwin" else r / 1024.0


def summarize(times_ms, batch_size: int) -> dict[str, float]:
    t = np.asarray(times_ms, dtype=np.float64)
    med = float(np.median(t))
    p90 = float(np.percentile(t, 90))
    return {
        "median_ms": med,
        "p90_ms": p90,
        "ms_per_image": med / batch_size,
        "p90_ms_per_image": p90 / batch_size,
        "images_per_second": batch_size / (med / 1000.0) if med > 0 else float("inf"),
    }


def measure(
    fn: Callable[[], object],
    batch_size: int,
    *,
    warmup: int = 3,
    runs: int = 10,
    device: str | torch.device = "cpu",
) -> LatencyResult:
    if batch_size < 1 or runs < 1 or warmup < 0:
        raise ValueError("need batch_size >= 1, runs >= 1, warmup >= 0")
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    for _ in range(warmup):
        fn()
    times: list[float] = []
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        for _ in range(runs):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(float(start.elapsed_time(end)))
        peak = torch.cuda.max_memory_allocated(dev) / (1024.0 * 1024.0)
        kind = "cuda_max_allocated"
    else:
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000.0)
        peak = peak_rss_mb()
        kind = "process_peak_rss"
    s = summarize(times, batch_size)
    return LatencyResult(
        batch_size=batch_size,
        runs=runs,
        warmup=warmup,
        device=str(dev),
        times_ms=times,
        peak_memory_mb=float(peak),
        memory_kind=kind,
        **s,
    )
