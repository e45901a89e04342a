"""Crash safety: ``kill -9`` (SIGKILL, via the ``G2FACE_CRASH_AT`` hook of ``g2face_eval.crashpoints`` at a
batch / step drawn from a seeded RNG) of ``evaluate`` and ``train`` subprocesses, then the same command again:
it resumes, and the final results equal those of an uninterrupted run. No temporary leftovers, every cache
entry readable, and the MLflow parent/child runs of the evaluation FINISHED (none left RUNNING)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
RNG = random.Random(20261126)  # seeded: the kill points are reproducible

# embedded faces, limit 6, batch 2 -> 3 batches per method, 6 batch saves in all; "fit" (a learned, reversible
# method) keeps its outputs in the output cache (``Anonymizer.cache_outputs``), so the cache holds PNGs to check
EVAL_CFG = {
    "methods": ["pixelate_8", "fit"],
    "datasets": ["embedded"],
    "limit": 6,
    "batch_size": 2,
    "recognizers": ["sface"],
    "detectors": ["yunet"],
    "bootstrap_samples": 50,
    "latency_repeats": 1,
    "samples_per_grid": 2,
}


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "G2FACE_CRASH_AT"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _evaluate(tmp: Path, crash: str | None = None) -> subprocess.CompletedProcess:
    cfg = {**EVAL_CFG, "cache_dir": str(tmp / "cache"), "reports_dir": str(tmp / "reports")}
    (tmp / "cfg.json").write_text(json.dumps(cfg))
    cmd = [
        sys.executable,
        "-m",
        "g2face_eval",
        "evaluate",
        "--config",
        str(tmp / "cfg.json"),
        "--results-dir",
        str(tmp / "results"),
        "--no-progress",
    ]
    env = _env(**({"G2FACE_CRASH_AT": crash} if crash else {}))
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _run_dir(tmp: Path) -> Path:
    (d,) = [p for p in (tmp / "results").iterdir() if p.is_dir() and p.name != "mlartifacts"]
    return d


def _check_no_debris(tmp: Path) -> None:
    leftovers = [p for p in (tmp / "results").rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers
    for p in (tmp / "results").rglob("*.parquet"):
        pd.read_parquet(p)
    for p in (tmp / "results").rglob("*.json"):
        json.loads(p.read_text())
    import cv2

    pngs = list((tmp / "cache").rglob("*.png"))
    assert pngs  # the cached method's outputs
    for p in pngs:
        assert cv2.imread(str(p)) is not None, p
    for p in (tmp / "cache").rglob("*.npy"):
        np.load(p, allow_pickle=False)


def _records(run_dir: Path) -> pd.DataFrame:
    r = pd.read_parquet(run_dir / "records.parquet")
    return r.sort_values(["method", "dataset", "id"]).reset_index(drop=True)


def _agg(run_dir: Path) -> pd.DataFrame:
    a = pd.read_parquet(run_dir / "aggregate.parquet")
    a = a[a.dataset != "all"]  # timing rows (latency, throughput) are measurements, not results
    cols = ["method", "dataset", "metric", "value", "ci_lo", "ci_hi", "n"]
    return a[cols].sort_values(["method", "dataset", "metric"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference_eval(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval_ref")
    p = _evaluate(tmp)
    assert p.returncode == 0, p.stderr[-3000:]
    return _run_dir(tmp)


@pytest.mark.parametrize("point", ["batch_npz", "batch_saved"])
def test_evaluate_kill9_then_rerun_equals_uninterrupted(reference_eval, tmp_path, point):
    n = RNG.randint(1, 5)  # which batch save the kill lands on (of 6)
    killed = _evaluate(tmp_path, f"{point}:{n}")
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
    run_dir = _run_dir(tmp_path)
    assert not (run_dir / "records.parquet").exists()  # it really died mid-run
    done = list((run_dir / "batches").rglob("*.parquet"))
    assert len(done) == (n if point == "batch_saved" else n - 1)

    again = _evaluate(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _run_dir(tmp_path).name == reference_eval.name
    pd.testing.assert_frame_equal(_records(run_dir), _records(reference_eval), check_exact=True)
    pd.testing.assert_frame_equal(_agg(run_dir), _agg(reference_eval), check_exact=True)
    _check_no_debris(tmp_path)

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{(tmp_path / 'results' / 'mlflow.db').resolve()}")
    exp = client.get_experiment_by_name("g2face-eval")
    runs = client.search_runs([exp.experiment_id])
    assert all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1  # the killed run's parent was reused, not duplicated
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.tags["g2face.method"] for r in children) == sorted(EVAL_CFG["methods"])


def test_orphan_running_parent_is_adopted(tmp_path):
    """A kill between MLflow ``create_run`` and saving its id to mlflow.json leaves a RUNNING run that the
    harness does not know: the rerun adopts it (same run name tag) and finishes it."""
    from g2face_eval.harness.tracking import Tracker

    run_dir = tmp_path / "results" / "r1"
    run_dir.mkdir(parents=True)
    t1 = Tracker(tmp_path / "results", run_dir, "r1", uri=f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    pid = t1.start_parent({"a": "1"}, tags={"g2face.run": "r1"})
    cid = t1.child("m", {"a": "1"})
    (run_dir / "mlflow.json").unlink()  # as if killed before the ids were saved
    t2 = Tracker(tmp_path / "results", run_dir, "r1", uri=t1.uri)
    with t2.parent_run({"a": "1"}, tags={"g2face.run": "r1"}) as pid2:
        cid2 = t2.child("m", {"a": "1"})
        t2.end(cid2)
    assert (pid2, cid2) == (pid, cid)
    assert t2.client.get_run(pid).info.status == "FINISHED"


# ------------------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------------------
def _train(root: Path, out: Path, crash: str | None = None, mlflow_uri: str | None = None
           ) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "g2face_eval",
        "train",
        "--preset",
        "tiny",
        "--size",
        "32",
        "--tiny",
        "8",
        "--batch",
        "4",
        "--steps",
        "6",
        "--steps-per-epoch",
        "2",
        "--warmup-epochs",
        "1",
        "--ckpt-every",
        "2",
        "--log-every",
        "1",
        "--identity",
        "sface",
        "--geometry",
        "none",
        "--perceptual",
        "none",
        *(["--mlflow-uri", mlflow_uri] if mlflow_uri else ["--no-mlflow"]),
        "--limit",
        "16",
        "--data-root",
        str(root),
        "--device",
        "cpu",
        "--out",
        str(out),
        "--resume",
        "auto",
    ]
    env = _env(**({"G2FACE_CRASH_AT": crash} if crash else {}))
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _params(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "last" / "model.safetensors"))


@pytest.mark.slow
def test_train_kill9_then_resume_equals_uninterrupted(datasets_root, tmp_path):
    ref = _train(datasets_root, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    # one kill after a random step (between checkpoints), then one in the middle of the rerun's first
    # checkpoint swap
    step = RNG.choice([3, 5])
    out = tmp_path / "crashed"
    for crash in (f"train_step:{step}", "ckpt_swap:1"):
        p = _train(datasets_root, out, crash)
        assert p.returncode == -signal.SIGKILL, (crash, p.returncode, p.stderr[-2000:])
    assert not (out / "last").exists() and (out / "last.old").is_dir()  # killed mid-swap
    p = _train(datasets_root, out)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resumed from" in p.stdout
    a, b = _params(tmp_path / "ref"), _params(out)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k].numpy(), b[k].numpy()), k
    assert not (out / "last.old").exists() and not (out / "last.tmp").exists()


@pytest.mark.slow
def test_train_kill9_resume_continues_the_same_mlflow_run(datasets_root, tmp_path):
    """kill -9 leaves the training run RUNNING in MLflow; the resumed command continues that run (same id, metrics
    at later steps) and ends it FINISHED: one run, not a stale RUNNING one plus a new one."""
    import mlflow

    uri = f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    out = tmp_path / "run"
    p = _train(datasets_root, out, "train_step:3", mlflow_uri=uri)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("g2face-train").experiment_id])
    assert run.info.status == "RUNNING"  # what a kill leaves behind
    p = _train(datasets_root, out, mlflow_uri=uri)
    assert p.returncode == 0 and "resumed from" in p.stdout, p.stderr[-3000:]
    runs = client.search_runs([client.get_experiment_by_name("g2face-train").experiment_id])
    assert [r.info.run_id for r in runs] == [run.info.run_id]
    assert runs[0].info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "g_total"))
    assert steps[-1] == 6 and steps[0] < 3


def test_run_store_writes_are_fsynced_and_caches_are_not(tmp_path, monkeypatch):
    """A unit's .npz and .parquet reach the disk (file and rename) before the unit counts as done; the image
    cache's many small writes skip the fsync."""
    import os

    import numpy as np
    import pandas as pd

    from g2face_eval.harness.records import BatchStore, ImageCache

    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    store = BatchStore(tmp_path / "run")
    store.save("m", "d", "k", records=pd.DataFrame({"a": [1]}), arrays={"x": np.zeros(3)})
    assert store.done("m", "d", "k") and len(synced) == 4  # two files, each + its folder
    synced.clear()
    ImageCache(tmp_path / "cache").put("ns", "key", np.zeros((8, 8, 3), np.uint8))
    assert synced == []
