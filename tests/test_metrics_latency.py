import time

import pytest

from g2face_eval.metrics.latency import measure, summarize


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
    assert r.peak_memory_mb > 10 and r.memory_kind == "process_peak_rss"
    assert set(r.metrics()) == {"latency_ms_per_image", "images_per_second", "peak_memory_mb"}


def test_summarize_exact():
    s = summarize([10.0, 20.0, 30.0, 40.0, 50.0], batch_size=2)
    assert s["median_ms"] == 30.0 and s["ms_per_image"] == 15.0
    assert s["p90_ms"] == pytest.approx(46.0) and s["images_per_second"] == pytest.approx(2 / 0.03)
    with pytest.raises(ValueError):
        measure(lambda: None, batch_size=0)
