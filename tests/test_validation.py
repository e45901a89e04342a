"""LFW View 2 protocol: unit tests of the protocol pieces, and the real protocol on fold 0 (600 pairs,
split into 10 balanced sub-folds) from a cold cache, asserting >= 98% for SFace and dlib."""

from __future__ import annotations

import numpy as np
import pytest

from g2face_eval.oracles import validation as V


def test_best_threshold_and_kfold():
    rng = np.random.default_rng(0)
    same = np.r_[np.ones(300, bool), np.zeros(300, bool)]
    sims = np.where(same, rng.normal(0.7, 0.1, 600), rng.normal(0.1, 0.1, 600))
    t = V.best_threshold(sims, same)
    assert 0.25 < t < 0.55
    acc, std, ths = V.kfold_accuracy(sims, same, np.arange(600) % 10)
    assert acc > 0.99 and len(ths) == 10
    # separable data: the threshold sits in the middle of the gap
    assert abs(V.best_threshold(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1], bool)) - 0.5) < 0.11


def test_threshold_at_far():
    neg = np.linspace(0, 1, 3000)
    t = V.threshold_at_far(neg, 1e-3)
    assert (neg > t).sum() == 3 and (neg >= t).sum() == 4


def test_operating_threshold_accepts_at_most_far_negatives_under_the_metrics_rule():
    """The recorded threshold is used with "same iff similarity >= threshold" (metrics.identity): it must lie
    above the 4th-largest negative, where rounding to 6 digits could land on or below it (one negative more)."""
    from g2face_eval.metrics import identity as I

    rng = np.random.default_rng(0)
    for neg in (rng.uniform(-0.2, 0.6, 3000), np.r_[np.linspace(0, 0.3, 2996), 0.338464, 0.35, 0.36, 0.39]):
        t = V.operating_threshold(V.threshold_at_far(neg, 1e-3))
        assert I.recovered_success(neg, t).sum() == 3  # exactly floor(FAR * N) negatives accepted
        assert abs(t * 1e6 - round(t * 1e6)) < 1e-6  # on the 1e-6 grid


def test_shipped_thresholds_match_the_published_accuracies():
    """The thresholds every de-identification rate uses come from a full LFW run within 0.5 points of the
    published accuracy, at FAR <= 1e-3 measured at the recorded threshold."""
    import json

    from g2face_eval.oracles.recognizers import THRESHOLDS_FILE

    recs = json.loads(THRESHOLDS_FILE.read_text())["recognizers"]
    for name in ("sface", "dlib"):
        r = recs[name]
        assert r["n_pairs"] == 6000 and r["folds"] == list(range(10)), name
        assert abs(r["accuracy"] - r["published_accuracy"]) <= 0.5, (name, r["accuracy"])
        assert r["far_measured"] <= 1e-3 and 0 < r["threshold"] < 1, name


def test_thresholds_hold_for_the_weights_they_were_measured_with(monkeypatch, tmp_path):
    """A threshold recorded with other weight files is not used (None: the de-identification rate is then
    reported unavailable), and the LFW embedding cache of other weights is another file (found by a review: a
    recognizer with new weights reused the old embeddings and threshold)."""
    import json

    from g2face_eval.oracles import recognizers as R

    r = R.get_recognizer("sface")
    shipped = json.loads(R.THRESHOLDS_FILE.read_text())
    assert shipped["recognizers"]["sface"]["weights_sha256"] == r.weights_sha256   # the shipped entries record them
    assert r.threshold == shipped["recognizers"]["sface"]["threshold"]
    other = json.loads(json.dumps(shipped))
    other["recognizers"]["sface"]["weights_sha256"] = {"sface": "0" * 64}
    monkeypatch.setattr(R, "load_thresholds", lambda: other)
    assert r.threshold is None
    assert R.fingerprint("sface") == r.fingerprint != R.fingerprint("sface", {"sface": "0" * 64})
    monkeypatch.setenv("G2FACE_CACHE_DIR", str(tmp_path))
    stem = V._cache_names(["sface"])["sface"]
    assert r.fingerprint in stem
    monkeypatch.setattr(R, "EMBED_VERSION", R.EMBED_VERSION + 1)   # new embedding code: new cache file
    assert V._cache_names(["sface"])["sface"] != stem


def test_read_pairs(datasets_root):
    pairs = V.read_pairs(V.lfw_root(datasets_root))
    assert len(pairs) == 6000 and sum(p.same for p in pairs) == 3000
    assert {p.fold for p in pairs} == set(range(10))
    assert all((datasets_root / "lfw" / p.a).is_file() for p in pairs[:50])


def test_missing_dataset_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="pairs.txt"):
        V.lfw_root(tmp_path)
    assert V.cli(["--datasets-root", str(tmp_path)]) == 2


def test_a_malformed_pairs_file_is_one_line_exit_2(tmp_path, capsys):
    """A View 1 pairs file (a one-number header) was an uncaught traceback; the parser is the dataset's now."""
    (tmp_path / "lfw" / "lfw-deepfunneled").mkdir(parents=True)
    (tmp_path / "lfw" / "pairs.txt").write_text("1100\nAaron_Peirsol 1 2\n")
    assert V.cli(["--datasets-root", str(tmp_path), "--no-write"]) == 2
    assert "expected a header '<folds> <pairs per class>'" in capsys.readouterr().err


@pytest.mark.slow
def test_lfw_fold_accuracy(datasets_root, tmp_path, monkeypatch):
    monkeypatch.setenv("G2FACE_CACHE_DIR", str(tmp_path / "cache"))  # cold: measures the real cost
    res = V.validate(datasets_root, ("sface", "dlib"), folds=[0], workers=2, progress=False)
    assert res["n_pairs"] == 600 and res["fallback_centre_crop"] <= 3
    for name in ("sface", "dlib"):
        r = res["recognizers"][name]
        assert r["accuracy"] >= 98.0, (name, r)
        assert 0 < r["threshold"] < 1 and r["far_measured"] <= 1e-3
    # the cache makes a rerun fast and identical
    again = V.validate(datasets_root, ("sface", "dlib"), folds=[0], progress=False)
    assert again["recognizers"] == res["recognizers"]


def test_write_thresholds_merges_per_recognizer(tmp_path):
    import json

    path = tmp_path / "t.json"
    base = {"dataset": "LFW", "detector": "yunet", "protocol": "p", "n_pairs": 6000}
    V.write_thresholds({**base, "recognizers": {"sface": {"threshold": 0.3, "n_pairs": 6000}}}, path)
    V.write_thresholds({**base, "recognizers": {"dlib": {"threshold": 0.9, "n_pairs": 3000}}}, path)
    out = json.loads(path.read_text())
    assert out["recognizers"]["sface"]["threshold"] == 0.3 and out["recognizers"]["dlib"]["n_pairs"] == 3000
    assert "n_pairs" not in out and out["protocol"] == "p"


def test_a_partial_run_too_small_for_the_far_writes_no_threshold(monkeypatch, capsys):
    """``--write-partial`` from one fold (300 negatives) would store a threshold above every negative under
    "far": 0.001 and every evaluation would use it; it is refused below 1/FAR negatives (found by a review)."""
    res = {"recognizers": {"sface": {"accuracy": 99.0, "published_accuracy": 99.4, "threshold": 0.4,
                                     "n_negatives": 300}}}
    monkeypatch.setattr(V, "validate", lambda *a, **kw: res)
    monkeypatch.setattr(V, "write_thresholds", lambda r: pytest.fail("must not write"))
    assert V.cli(["--folds", "0", "--write-partial"]) == 2
    assert "needs at least 1000 different-person pairs" in capsys.readouterr().err
    res["recognizers"]["sface"]["n_negatives"] = 1200
    written = []
    monkeypatch.setattr(V, "write_thresholds", lambda r: written.append(r) or "t.json")
    assert V.cli(["--folds", "0,1,2,3", "--write-partial"]) == 0 and written == [res]
