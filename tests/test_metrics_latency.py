import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from g2face_eval.metrics import latency
from g2face_eval.metrics.latency import measure, summarize

REPO = Path(__file__).resolve().parent.parent
BIG = 200 * 2**20  # bytes the "big" method allocates and touches inside each call


def _can_reset_rss_peak() -> bool:
    """Checked here, not through the module under test, so that a broken reset fails the tests below."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


needs_hwm_reset = pytest.mark.skipif(not _can_reset_rss_peak(), reason="/proc/self/clear_refs not writable")


def big_method():
    a = np.ones(BIG, dtype=np.uint8)  # every page written: resident
    return int(a[:: 1 << 20].sum())


def small_method():
    return 0


def test_cpu_bookkeeping_with_sleep():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.005)

    r = measure(fn, batch_size=4, warmup=2, runs=5, device="cpu")
    assert len(calls) == 7 and len(r.times_ms) == 5
    assert all(t >= 4.5 for t in r.times_ms) and r.median_ms < 1000
    assert r.ms_per_image == pytest.approx(r.median_ms / 4)
    assert r.images_per_second == pytest.approx(4 / (r.median_ms / 1000))
    assert r.p90_ms >= r.median_ms
    assert set(r.metrics()) == {"latency_ms_per_image", "images_per_second", "peak_memory_mb"}
    if _can_reset_rss_peak():
        assert r.memory_kind == "rss_peak_increase" and r.memory_note == ""
        assert 0 <= r.peak_memory_mb < 20 and r.memory_baseline_mb > 10  # baseline: python + torch + numpy


def test_summarize_exact():
    s = summarize([10.0, 20.0, 30.0, 40.0, 50.0], batch_size=2)
    assert s["median_ms"] == 30.0 and s["ms_per_image"] == 15.0
    assert s["p90_ms"] == pytest.approx(46.0) and s["images_per_second"] == pytest.approx(2 / 0.03)
    with pytest.raises(ValueError):
        measure(lambda: None, batch_size=0)


@needs_hwm_reset
@pytest.mark.parametrize("order", ["big_first", "small_first"])
def test_cpu_peak_is_per_method_not_process_lifetime(order):
    """Two methods measured one after the other in one process (as the harness does): each gets the peak of
    its own calls. With the process-lifetime peak (ru_maxrss), or without resetting the high-water mark, the
    small method measured after the big one would report >= 200 MB."""
    fns = [big_method, small_method] if order == "big_first" else [small_method, big_method]
    res = {fn.__name__: measure(fn, batch_size=1, warmup=1, runs=2, device="cpu") for fn in fns}
    big, small = res["big_method"], res["small_method"]
    assert big.memory_kind == small.memory_kind == "rss_peak_increase"
    assert big.peak_memory_mb >= 190, big
    assert small.peak_memory_mb < 20, small
    assert big.metrics()["peak_memory_mb"] == big.peak_memory_mb


PROBE = """
import json, numpy as np
from g2face_eval import allocator
from g2face_eval.metrics.latency import measure
state = allocator.tune_malloc()
def big():
    a = np.ones(200 * 2**20, dtype=np.uint8); return int(a[::1 << 20].sum())
out = {"state": state}
for name, fn in (("big", big), ("small", lambda: 0)):
    out[name] = measure(fn, batch_size=1, warmup=1, runs=2, device="cpu").peak_memory_mb
print(json.dumps(out))
"""


@needs_hwm_reset
def test_cpu_peak_counts_memory_malloc_kept_from_warmup():
    """Under the CLI's malloc tuning (allocator.py: freed heap memory up to 1 GiB stays resident), the buffer
    the warm-up call freed is still resident when the timed calls start; the freed heap is handed back before
    the reset, so the timed calls' own 200 MB is still counted (it would read ~0 otherwise)."""
    env = {**os.environ, "G2FACE_MALLOC_TUNING": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["state"]["malloc_tuning"] is True
    assert r["big"] >= 190 and r["small"] < 20, r


def test_cpu_peak_unavailable_without_proc(monkeypatch, tmp_path, caplog):
    """No /proc/self/clear_refs (macOS, restricted container): NaN with a reason, never a stale figure."""
    monkeypatch.setattr(latency, "PROC_SELF", tmp_path)
    r = measure(big_method, batch_size=1, warmup=0, runs=1, device="cpu")
    assert math.isnan(r.peak_memory_mb) and math.isnan(r.memory_baseline_mb) and r.memory_kind == "unavailable"
    assert "clear_refs" in r.memory_note and "FileNotFoundError" in r.memory_note
    assert math.isnan(r.metrics()["peak_memory_mb"]) and r.median_ms > 0  # timing is still reported
    assert "peak_memory_mb unavailable" in caplog.text


def test_cpu_peak_unavailable_without_vmhwm(monkeypatch, tmp_path):
    """clear_refs accepted but no VmHWM/VmRSS in status (not Linux's format): unavailable too."""
    (tmp_path / "clear_refs").write_text("")
    (tmp_path / "status").write_text("Name:\tpython\n")
    monkeypatch.setattr(latency, "PROC_SELF", tmp_path)
    r = measure(small_method, batch_size=1, warmup=0, runs=1, device="cpu")
    assert math.isnan(r.peak_memory_mb) and r.memory_kind == "unavailable" and "VmRSS" in r.memory_note


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("order", ["big_first", "small_first"])
def test_cuda_peak_is_increase_over_allocated(order):
    dev = torch.device("cuda")
    resident = torch.ones(BIG // 2, dtype=torch.uint8, device=dev)  # 100 MiB held before and during: baseline

    def big_cuda():
        a = torch.ones(BIG, dtype=torch.uint8, device=dev)
        return a[:1]

    fns = [big_cuda, small_method] if order == "big_first" else [small_method, big_cuda]
    res = {fn.__name__: measure(fn, batch_size=1, warmup=1, runs=2, device=dev) for fn in fns}
    big, small = res["big_cuda"], res["small_method"]
    assert big.memory_kind == small.memory_kind == "cuda_allocated_peak_increase"
    assert 200 <= big.peak_memory_mb < 204, big  # the 200 MiB buffer, not the 100 MiB already resident
    assert small.peak_memory_mb < 1, small
    assert big.memory_baseline_mb >= 100 and small.memory_baseline_mb >= 100
    del resident


def test_heap_settled_exempts_only_the_objects_alive_at_entry():
    """Inside ``heap_settled`` the objects alive at entry are frozen (the per-measurement collections skip them);
    garbage cycles made inside are still collected by ``release_free_heap``; everything is unfrozen at exit."""
    import gc
    import weakref

    class Node:
        pass

    assert gc.get_freeze_count() == 0
    with latency.heap_settled():
        assert gc.get_freeze_count() > 1000
        a = Node()
        a.self = a  # a reference cycle: only the garbage collector frees it
        alive = weakref.ref(a)
        del a
        latency.release_free_heap()
        assert alive() is None
        r = measure(lambda: torch.ones(64, 64).sum(), 1, warmup=1, runs=2)
        assert r.runs == 2 and len(r.times_ms) == 2
    assert gc.get_freeze_count() == 0
