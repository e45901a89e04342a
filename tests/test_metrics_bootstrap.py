import numpy as np
import pytest

from g2face_eval.metrics.bootstrap import aggregate, ci


def test_deterministic_and_seed_dependent():
    v = np.random.default_rng(0).normal(size=300)
    assert ci(v, "mean", 500, seed=1) == ci(v, "mean", 500, seed=1)
    assert ci(v, "mean", 500, seed=1) != ci(v, "mean", 500, seed=2)
    lo, hi = ci(v, "median", 500, seed=1)
    assert lo <= np.median(v) <= hi


def test_chunked_resampling_is_consistent(monkeypatch):
    from g2face_eval.metrics import bootstrap

    v = np.random.default_rng(1).normal(size=100)
    a = ci(v, "mean", 300, seed=3)
    monkeypatch.setattr(bootstrap, "_CHUNK_ELEMS", 700)  # 7 resamples per chunk: another random stream,
    b = ci(v, "mean", 300, seed=3)  # but the same statistical answer
    assert b[0] < v.mean() < b[1]
    assert b == pytest.approx(a, abs=0.1)


def test_coverage_on_normal_samples():
    rng = np.random.default_rng(123)
    hits = 0
    trials = 200
    for _ in range(trials):
        x = rng.normal(5.0, 2.0, size=60)
        lo, hi = ci(x, "mean", 400, seed=int(rng.integers(1 << 30)))
        hits += lo <= 5.0 <= hi
    assert 0.88 <= hits / trials <= 0.99  # nominal 0.95 (percentile bootstrap is slightly anti-conservative)


def test_rate_and_edge_cases():
    assert ci([], "mean") != ci([], "mean")  # (nan, nan)
    assert np.isnan(ci([0.3], "mean")).all()  # one value: no interval, not a zero-width (0.3, 0.3)
    lo, hi = ci([0, 1, 1, 1, 0, 1, 1, 1], "rate", 300, seed=0)
    assert 0 <= lo <= 0.75 <= hi <= 1
    assert aggregate([0, 1, 1, 0], "rate") == 0.5
    with pytest.raises(ValueError):
        ci([0, 0.5], "rate")
    with pytest.raises(ValueError):
        ci([1.0, float("nan")], "mean")
    with pytest.raises(ValueError):
        ci([1.0, 2.0], "set")


def test_rate_interval_is_wilson_against_scipy():
    """Rates get the Wilson score interval (scipy's binomtest as the independent reference); at 0 or n successes it
    keeps a width that shrinks with n, where a percentile bootstrap would give the zero-width [1, 1] or [0, 0]."""
    from scipy.stats import binomtest

    from g2face_eval.metrics.bootstrap import wilson

    for k, n in [(999, 999), (0, 500), (1, 2), (37, 100), (1, 1), (0, 1), (499, 500)]:
        ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson(k, n) == pytest.approx((ref.low, ref.high), abs=1e-12), (k, n)
        assert ci([1.0] * k + [0.0] * (n - k), "rate") == pytest.approx((ref.low, ref.high), abs=1e-12), (k, n)
    lo, hi = ci(np.ones(999), "rate")
    assert 0.996 < lo < 1.0 and hi == 1.0
    assert np.isnan(wilson(0, 0)).all()
    with pytest.raises(ValueError):
        wilson(3, 2)
