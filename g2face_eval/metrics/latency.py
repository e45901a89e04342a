"""Latency / throughput / peak-memory measurement of a callable that processes one batch.

``measure(fn, batch_size, warmup=3, runs=10, device="cpu") -> LatencyResult``:
  * ``fn()`` runs one batch of ``batch_size`` images (inputs prepared by the caller, outside the timing).
  * ``warmup`` untimed calls first (cudnn autotuning, allocator, lazy init), then ``runs`` timed calls.
  * GPU (``device`` is CUDA): each run is bracketed by ``torch.cuda.Event(enable_timing=True)`` records and
    synchronised. CPU: ``time.perf_counter`` around each call.
  * Reported: per-batch times (ms), ``median_ms``/``p90_ms`` per batch, ``ms_per_image`` = median / batch,
    ``p90_ms_per_image``, ``images_per_second`` = batch_size / median seconds, ``peak_memory_mb`` (MiB).

``peak_memory_mb`` is the *peak additional memory of the timed calls*: the highest memory use while the
``runs`` timed calls ran, minus the use just before the first of them. What was already held before them
(the method's own weights, other methods' models, the metric oracles, Python and torch themselves) is not
counted, on either device; ``memory_baseline_mb`` keeps that starting level (baseline + peak = absolute peak).
  * GPU, ``memory_kind = "cuda_allocated_peak_increase"``: ``torch.cuda.max_memory_allocated(device)`` after
    ``reset_peak_memory_stats`` minus ``torch.cuda.memory_allocated(device)`` at that reset -- bytes of live
    PyTorch tensors on that device only (not the caching allocator's reserved-but-free blocks, the CUDA
    context, cuDNN/cuBLAS handles or other libraries' allocations).
  * CPU, ``memory_kind = "rss_peak_increase"`` (Linux >= 4.0): the kernel's resident-set high-water mark is
    reset to the current RSS by writing ``5`` to ``/proc/self/clear_refs``; after the calls ``VmHWM`` minus the
    ``VmRSS`` read at the reset (both from ``/proc/self/status``) is reported -- resident pages of the whole
    process, whatever allocated them (torch, numpy, other libraries, other threads of the process). Before the
    reset ``gc.collect()`` and glibc's ``malloc_trim(0)`` hand the heap memory freed by the warm-up calls back
    to the kernel, so that memory the calls free and allocate again every time (their activations) is counted
    even where malloc keeps freed memory (``g2face_eval.allocator``'s tuning keeps up to 1 GiB); as a side
    effect the first timed call faults those pages in again (one slower run, which the median of three or
    more runs ignores).
    Buffers kept across calls (persistent scratch pads, caches filled during warm-up) are in the baseline.
    Read it as the RSS growth over the ``runs`` calls, an upper bound of one call's working set: where freed
    blocks are not reused from one call to the next (heap fragmentation), it grows with ``runs`` and depends on
    what the process did before (a review measured 25, 75 and 150 MiB at 1, 3 and 6 runs of a function with a
    25 MiB working set, and 50-75 MiB for 8 repeats at 3 runs in one process); compare methods measured the
    same way only.
  * CPU where that is impossible (no ``/proc``: macOS, Windows; ``clear_refs`` not writable: restricted
    container; kernel < 4.0): ``peak_memory_mb`` is NaN, ``memory_kind = "unavailable"`` and ``memory_note``
    says why -- never the process-lifetime peak (``getrusage().ru_maxrss``), which only grows and would give
    every method evaluated in one process the same figure. NaN metrics are not logged to MLflow (``tracking``).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

PROC_SELF = Path("/proc/self")  # module attribute so that tests can point it at a directory without the files

KIND_CUDA = "cuda_allocated_peak_increase"
KIND_RSS = "rss_peak_increase"
KIND_UNAVAILABLE = "unavailable"


def device_name(device: str | torch.device) -> str:
    """What a latency was measured on, for reports: the GPU's name, or the CPU's model (``/proc/cpuinfo``),
    with the number of threads torch uses."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or dev.type
    return f"{name}, {torch.get_num_threads()} thread{'s' if torch.get_num_threads() != 1 else ''}"


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
    peak_memory_mb: float  # peak increase over memory_baseline_mb during the timed calls; NaN when unavailable
    memory_kind: str  # KIND_CUDA | KIND_RSS | KIND_UNAVAILABLE
    memory_baseline_mb: float = float("nan")  # allocated (GPU) / resident (CPU) MiB just before the timed calls
    memory_note: str = ""  # why the memory figure is unavailable ("" otherwise)

    def metrics(self) -> dict[str, float]:
        """Values under the METRICS names the harness logs."""
        return {
            "latency_ms_per_image": self.ms_per_image,
            "images_per_second": self.images_per_second,
            "peak_memory_mb": self.peak_memory_mb,
        }

    def as_dict(self) -> dict:
        return asdict(self)


def _status_kib(name: str) -> int:
    """A ``kB`` field (``VmRSS``, ``VmHWM``) of ``/proc/self/status``; OSError when absent."""
    with open(PROC_SELF / "status", encoding="ascii") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise OSError(f"no {name} in {PROC_SELF / 'status'}")


def release_free_heap() -> None:
    """Collect garbage and return free malloc memory to the kernel (glibc only; elsewhere a no-op)."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):  # not glibc (musl)
            return
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
        trim(0)


@contextlib.contextmanager
def heap_settled():
    """For a series of ``measure`` calls in a process holding a large heap (a run's records, models): one full
    garbage collection now, then every object alive is exempt (``gc.freeze``) from the collections that
    ``release_free_heap`` runs before each measurement, which then only traverse what was created since (a full
    collection of the harness's heap took ~0.34 s per method). Unfrozen at exit; nothing else changes."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def reset_rss_peak() -> float:
    """Reset the process's resident-set high-water mark (``VmHWM``) to its current RSS and return that RSS in
    MiB. Raises OSError where the kernel does not allow it (no /proc, clear_refs not writable, kernel < 4.0)."""
    with open(PROC_SELF / "clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # CLEAR_REFS_MM_HIWATER_RSS: touches no page, only resets mm->hiwater_rss
    return _status_kib("VmRSS") / 1024.0


def rss_peak_mb() -> float:
    """The process's resident-set high-water mark (``VmHWM``) in MiB since the last ``reset_rss_peak``."""
    return _status_kib("VmHWM") / 1024.0


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
    peak, base, note = float("nan"), float("nan"), ""
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base_b = torch.cuda.memory_allocated(dev)
        for _ in range(runs):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(float(start.elapsed_time(end)))
        torch.cuda.synchronize(dev)
        base = base_b / 2**20
        peak = (torch.cuda.max_memory_allocated(dev) - base_b) / 2**20
        kind = KIND_CUDA
    else:
        release_free_heap()
        try:
            base = reset_rss_peak()
        except OSError as e:
            note = f"cannot reset the resident-set peak ({PROC_SELF / 'clear_refs'}): {type(e).__name__}: {e}"
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000.0)
        if not note:
            try:
                peak = max(0.0, rss_peak_mb() - base)
            except OSError as e:
                note = f"cannot read VmHWM: {type(e).__name__}: {e}"
        if note:
            base = float("nan")
            log.warning("peak_memory_mb unavailable on CPU: %s", note)
        kind = KIND_UNAVAILABLE if note else KIND_RSS
    s = summarize(times, batch_size)
    return LatencyResult(
        batch_size=batch_size,
        runs=runs,
        warmup=warmup,
        device=str(dev),
        times_ms=times,
        peak_memory_mb=float(peak),
        memory_kind=kind,
        memory_baseline_mb=float(base),
        memory_note=note,
        **s,
    )
