"""``torchrun --nproc_per_node 2`` (gloo, CPU) ``evaluate``: images sharded across ranks, records gathered to
rank 0, which writes results and MLflow; every per-image record and every aggregate (Fréchet distance
included) equals the single-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from evalhelpers import run_lock_held  # tests/ is on sys.path

REPO = Path(__file__).resolve().parent.parent

CFG = {
    "methods": ["pixelate_8", "mask_black"],
    "datasets": ["embedded"],
    "limit": 6,
    "batch_size": 2,  # 3 chunks: rank 0 gets chunk 0, rank 1 chunk 1, chunk 2 is shared (one method each)
    "recognizers": ["sface"],
    "detectors": ["yunet"],
    "bootstrap_samples": 50,
    "latency_repeats": 1,
    "samples_per_grid": 2,
}


def _run(tmp: Path, nproc: int, crash: str | None = None, cfg: dict | None = None, fails: bool = False):
    (tmp / "cfg.json").write_text(
        json.dumps({**(cfg or CFG), "cache_dir": str(tmp / "cache"), "reports_dir": str(tmp / "reports")})
    )
    args = [
        "-m",
        "g2face_eval",
        "evaluate",
        "--config",
        str(tmp / "cfg.json"),
        "--results-dir",
        str(tmp / "results"),
        "--no-progress",
    ]
    if nproc > 1:
        args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("G2FACE_CRASH_AT", None)
    if crash:
        env["G2FACE_CRASH_AT"] = crash
    p = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    if crash:
        assert p.returncode != 0, "the crash point was never reached"
        return None
    if fails:
        assert p.returncode != 0, p.stdout[-2000:] + p.stderr[-4000:]
        return p
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    (d,) = [q for q in (tmp / "results").iterdir() if q.is_dir() and q.name != "mlartifacts"]
    return d


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("one"), 1), _run(tmp_path_factory.mktemp("two"), 2)


def test_records_equal_single_process(runs):
    one, two = runs
    a, b = (
        pd.read_parquet(d / "records.parquet").sort_values(["method", "dataset", "id"]).reset_index(drop=True)
        for d in (one, two)
    )
    assert len(a) == 12 and (a.status == "ok").all()
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_aggregates_and_frechet_equal_single_process(runs):
    one, two = runs
    cols = ["method", "dataset", "metric", "value", "ci_lo", "ci_hi", "n"]
    a, b = (pd.read_parquet(d / "aggregate.parquet") for d in (one, two))
    a, b = ((x[x.dataset != "all"][cols]).sort_values(cols[:3]).reset_index(drop=True) for x in (a, b))
    assert "fd_effnet_lite0" in set(a.metric)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert json.loads((one / "set_metrics.json").read_text()) == json.loads(
        (two / "set_metrics.json").read_text()
    )


def test_work_was_sharded_and_mlflow_finished(runs):
    _, two = runs
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{(two.parent / 'mlflow.db').resolve()}")
    exp = client.get_experiment_by_name("g2face-eval")
    runs_ = client.search_runs([exp.experiment_id])
    assert len([r for r in runs_ if "mlflow.parentRunId" not in r.data.tags]) == 1  # rank 0 only
    assert len(runs_) == 1 + len(CFG["methods"])
    assert all(r.info.status == "FINISHED" for r in runs_)
    assert len(list((two / "batches").rglob("*.parquet"))) == 6
    shards = json.loads((two / "shards.json").read_text())
    assert shards["world_size"] == 2 and len(shards["batches"]) == 6
    assert sorted(shards["batches"].values()) == [0, 0, 0, 1, 1, 1]
    # the last chunk (3 chunks, 2 ranks) is shared: each rank ran one of its two methods, so neither waited a chunk
    last = {k.split("/")[0]: shards["batches"][k] for k in _last_chunk_batches(two, shards["batches"])}
    assert last == {"pixelate_8": 0, "mask_black": 1}
    (inv,) = json.loads((two / "invocations.json").read_text())
    assert inv["world_size"] == 2 and inv["batches_computed"] == inv["batches_total"] == 6
    assert len(inv["git_hash"] or "x" * 40) == 40 and inv["wall_s"] > 0


def _last_chunk_batches(run_dir: Path, names) -> set[str]:
    """Of the shard names ("method/dataset/key"), those holding the run's last chunk (the last 2 prepared ids)."""
    recs = pd.read_parquet(run_dir / "records.parquet")
    last = set(sorted(recs["id"].unique(), key=list(recs["id"]).index)[-2:])
    return {n for n in names if set(pd.read_parquet(run_dir / "batches" / f"{n}.parquet")["id"]) == last}


def test_method_share_splits_by_cost():
    """A shared chunk's methods: every method on exactly one rank, reversible ones (4 images per face) weighted 4,
    greedy and deterministic."""
    from types import SimpleNamespace

    from g2face_eval.harness.evaluate import method_share

    rev = {"g2face": True, "fit": True, "blur_s1": False, "mask_black": False, "pixelate_8": False, "riddle": True}
    S = SimpleNamespace(runners={m: SimpleNamespace(method=SimpleNamespace(reversible=r)) for m, r in rev.items()})
    two = [method_share(S, r, 2) for r in (0, 1)]
    assert sorted(two[0] + two[1]) == sorted(rev) and not set(two[0]) & set(two[1])
    assert two == [["g2face", "riddle"], ["fit", "blur_s1", "mask_black", "pixelate_8"]]  # loads 8 and 7
    assert method_share(S, 0, 1) == list(rev)
    three = [method_share(S, r, 3) for r in range(3)]
    assert [sum(4 if rev[m] else 1 for m in t) for t in three] == [5, 5, 5]


def test_killed_distributed_run_keeps_every_rank_batches_and_resumes(runs, tmp_path):
    """kill -9 of every rank at its 2nd persisted batch: the 4 batches persisted so far (2 per rank) survive
    on disk, and rerunning the command (here with one process) computes only the rest and equals the
    uninterrupted run."""
    one, _ = runs
    assert _run(tmp_path, 2, crash="batch_saved:2") is None
    (d,) = [q for q in (tmp_path / "results").iterdir() if q.is_dir() and q.name != "mlartifacts"]
    kept = {p: p.stat().st_mtime_ns for p in (d / "batches").rglob("*.parquet")}
    # each rank dies at its 2nd saved batch (rank 0: chunk 0's two methods; rank 1: chunk 1's), unless
    # torchrun stopped it first when the other rank died
    assert 2 <= len(kept) <= 4
    assert _run(tmp_path, 1) == d
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # not recomputed
    # the killed invocation was recorded when it began (before its sharded phase) and is kept as interrupted
    killed, inv = json.loads((d / "invocations.json").read_text())
    assert killed["status"] == "interrupted" and killed["world_size"] == 2 and "finished" not in killed
    assert killed["git_hash"] == inv["git_hash"] and inv["status"] == "finished"
    assert inv["world_size"] == 1 and inv["batches_computed"] == 6 - len(kept) and inv["batches_total"] == 6
    a, b = (
        pd.read_parquet(x / "records.parquet").sort_values(["method", "dataset", "id"]).reset_index(drop=True)
        for x in (one, d)
    )
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_identification_gallery_is_sharded_and_equal_to_single_process(tmp_path, datasets_root):
    """celeba_id: the gallery chunks are prepared by both ranks (each its share), then read whole by each;
    identification hits equal the single-process run."""
    cfg = {**CFG, "methods": ["pixelate_8"], "datasets": ["celeba_id"], "limit": 4, "gallery_per_identity": 2,
           "datasets_root": str(datasets_root), "detectors": []}
    for sub in ("one", "two"):
        (tmp_path / sub).mkdir()
    one, two = _run(tmp_path / "one", 1, cfg=cfg), _run(tmp_path / "two", 2, cfg=cfg)
    a, b = (
        pd.read_parquet(d / "records.parquet").sort_values(["method", "dataset", "id"]).reset_index(drop=True)
        for d in (one, two)
    )
    assert len(a) == 4 and "id_rank1_sface" in a and a.id_rank1_original_sface.notna().all()
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    gallery = [p for p in (two / "prepared" / "celeba_id").glob("*.parquet")
               if pd.read_parquet(p).meta.map(json.loads).map(lambda m: m.get("role")).eq("gallery").all()]
    assert len(gallery) == 4  # 8 gallery images in chunks of 2, each persisted once


def test_a_distributed_run_on_a_run_folder_in_use_fails_fast(tmp_path):
    """The ranks of one job are one run: rank 0 takes the run folder's lock before the sharded phase (the other
    ranks wait for it at the barrier). With another process holding it, the job stops before any work, naming the
    holder, and nothing is written."""
    run_dir = tmp_path / "results" / "busy"
    with run_lock_held(run_dir) as pid:
        p = _run(tmp_path, 2, cfg={**CFG, "run_name": "busy"}, fails=True)
        assert f"is in use by another evaluation (pid {pid} " in p.stderr
        assert sorted(q.name for q in run_dir.iterdir()) == [".lock"]  # no config, invocation, batch
