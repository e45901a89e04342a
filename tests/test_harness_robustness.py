"""Run robustness of ``evaluate`` (audit of 2026-11-27): one image failing a method fails alone; environment errors
stop the run without recording the batch; an image unreadable on resume is that image's failure; an empty dataset
is a configuration error; unavailable metrics and MLflow metric histories do not depend on the invocation; one
process per run folder (lock); ``--run-name`` reused with other methods keeps no leftovers; the output cache and
batch keys follow the methods' code; interrupted invocations keep their batch count; the realism cache follows the
config's ``cache_dir``; a damaged persisted unit stops the run with its name and is recomputed. Small and cheap:
embedded faces, at most 6 images, SFace only, fast baselines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from evalhelpers import cheap_config, run_lock_held  # tests/ is on sys.path

from g2face_eval import methods as M
from g2face_eval.anonymizer import Anonymizer, Output, derive_keys
from g2face_eval.harness import config as C
from g2face_eval.harness import evaluate as E
from g2face_eval.harness.records import BatchStore, acquire_run_lock, holds_run_lock, release_run_lock

REPO = Path(__file__).resolve().parent.parent
EMBEDDED = REPO / "g2face_eval" / "data" / "embedded" / "faces"


def _cfg(tmp: Path, **kw) -> dict:
    return cheap_config(tmp, tmp / "cache", **{"bootstrap_samples": 20, **kw})


def _folder(tmp: Path, n: int) -> Path:
    root = tmp / "imgs"
    root.mkdir(parents=True)
    for i, f in enumerate(sorted(EMBEDDED.glob("*.jpg"))[:n]):
        shutil.copy(f, root / f"face{i}.jpg")
    return root


class _Keyed(Anonymizer):
    """Flips the image; raises ``error`` on any batch holding one of the keys in ``bad``."""

    name = "keyed_fail"
    bad: set[bytes] = set()
    error: BaseException | None = None

    def config(self) -> dict:
        return {"name": self.name}

    def _anonymize(self, images, keys, face_masks):
        if self.error is not None and any(k in self.bad for k in keys):
            raise self.error
        return Output(images.flip(-1).clone())


@pytest.fixture
def keyed(monkeypatch):
    monkeypatch.setitem(M.METHODS._items, "keyed_fail", _Keyed)
    monkeypatch.setattr(_Keyed, "bad", set())
    monkeypatch.setattr(_Keyed, "error", None)
    return _Keyed


def _ids(cfg: dict) -> list[str]:
    from g2face_eval.harness.prepare import DatasetSource

    full = C.make_config(cfg)
    return DatasetSource(full["datasets"][0], full).ids


def _key_of(cfg: dict, sid: str) -> bytes:
    full = C.make_config(cfg)
    return derive_keys(f"{full['key']}:{full['seed']}", [sid])[0]


def _batches(run_dir: Path, method: str) -> list[Path]:
    return list((run_dir / "batches" / method).rglob("*.parquet")) if (run_dir / "batches" / method).is_dir() else []


# ------------------------------------------------------------------------------------------------------- 1, 11
def test_an_image_failing_a_method_fails_alone_and_its_batch_mates_are_scored(tmp_path, keyed, monkeypatch):
    """One image of a 4-image batch makes the method raise: it alone is a failure record (with its reason), the
    other three are scored, and the realism features stay aligned with the "ok" records (the Fréchet distance is
    over those three). The realism reference cache is written under the config's ``cache_dir``."""
    monkeypatch.setenv("G2FACE_CACHE_DIR", str(tmp_path / "env_cache"))
    cfg = _cfg(tmp_path, methods=["keyed_fail"], limit=4, batch_size=4, feature_extractors=["effnet_lite0"])
    ids = _ids(cfg)
    keyed.bad, keyed.error = {_key_of(cfg, ids[1])}, RuntimeError("cannot handle this face")
    res = E.evaluate(cfg, progress=False, quiet=True)
    rec = res["records"].set_index("id").loc[ids]
    assert list(rec.status) == ["ok", "failed", "ok", "ok"]
    assert rec.reason.iloc[1] == "method error: RuntimeError: cannot handle this face"
    assert rec.drop(index=ids[1]).ssim.notna().all() and np.isnan(rec.ssim.iloc[1])
    sets = json.loads((res["run_dir"] / "set_metrics.json").read_text())
    assert {s["metric"]: s["n"] for s in sets}["fd_effnet_lite0"] == 3
    # the batch's persisted features: one row per "ok" record
    (batch,) = _batches(res["run_dir"], "keyed_fail")
    with np.load(batch.with_suffix(".npz")) as z:
        assert z["effnet_lite0"].shape[0] == 3
    # item 11: the realism cache follows cache_dir, not $G2FACE_CACHE_DIR
    assert list((tmp_path / "cache" / "realism").glob("*.npz"))
    assert not (tmp_path / "env_cache" / "realism").exists()


# ------------------------------------------------------------------------------------------------------- 2
def test_environment_errors_stop_the_run_unrecorded_and_a_rerun_computes_the_batch(tmp_path, keyed, capsys):
    """Out of memory on one image, then an unwritable output cache (a file where its folder goes, as a full or
    broken disk): each stops the run (``RunAborted``; through the CLI exit 1 with one line), the batch is not
    recorded (no per-image "method error"), and the rerun after the cause is gone computes it."""
    cfg = _cfg(tmp_path, methods=["keyed_fail"], limit=2, batch_size=2)
    ids = _ids(cfg)
    keyed.bad, keyed.error = {_key_of(cfg, ids[0])}, torch.OutOfMemoryError("CUDA out of memory (simulated)")
    with pytest.raises(E.RunAborted, match="OutOfMemoryError.*rerun the same command"):
        E.evaluate(cfg, progress=False, quiet=True)
    (run_dir,) = [p for p in (tmp_path / "results").iterdir() if (p / "config.json").exists()]
    assert _batches(run_dir, "keyed_fail") == []  # not retried image by image, nothing recorded

    keyed.error = None
    (tmp_path / "cache" / "outputs").mkdir(parents=True)
    mhash = C.method_hash(_Keyed().config(), C.code_fingerprint())
    (tmp_path / "cache" / "outputs" / f"keyed_fail-{mhash}_anonymize").write_text("a file where a folder goes")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    assert E.cli(["--config", str(tmp_path / "cfg.json"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "aborted:" in err and "Error" in err and "Traceback" not in err
    assert _batches(run_dir, "keyed_fail") == []

    shutil.rmtree(tmp_path / "cache" / "outputs")
    res = E.evaluate(cfg, progress=False, quiet=True)
    assert (res["records"].status == "ok").all() and len(res["records"]) == 2
    assert len(_batches(run_dir, "keyed_fail")) == 1


# ------------------------------------------------------------------------------------------------------- 3
def test_an_image_unreadable_on_resume_is_that_images_failure(tmp_path):
    """A run interrupted after the first method's batch; one image file is then overwritten with junk. The
    rerun completes: the finished method keeps its records, the remaining method records that image failed
    (reason naming the file problem) and scores the others."""
    root = _folder(tmp_path, 3)
    cfg = _cfg(tmp_path, methods=["blur_s1", "pixelate_8"], datasets=["folder"], limit=None, batch_size=3,
               dataset_options={"folder": {"root": str(root)}})
    with pytest.raises(E.Interrupted):
        E.evaluate(cfg, progress=False, quiet=True, _interrupt_after=1)
    (root / "face1.jpg").write_bytes(b"no longer an image")
    res = E.evaluate(cfg, progress=False, quiet=True)
    rec = res["records"]
    assert (rec[rec.method == "blur_s1"].status == "ok").all() and len(rec) == 6
    pix = rec[rec.method == "pixelate_8"].set_index("id").loc[["face0.jpg", "face1.jpg", "face2.jpg"]]
    assert list(pix.status) == ["ok", "failed", "ok"]
    assert pix.reason.iloc[1].startswith("reload failed: not an image") and "face1.jpg" in pix.reason.iloc[1]


def test_an_image_replaced_by_another_face_before_resume_is_that_images_failure(tmp_path):
    """The same, with the file replaced by another readable face: its stored embeddings and mesh belong to the
    first image, so the reread (other pixels than the prepared ones) is that image's failure, not a score of the
    new image against the old one's references; the unchanged images are scored."""
    root = _folder(tmp_path, 4)
    cfg = _cfg(tmp_path, methods=["blur_s1", "pixelate_8"], datasets=["folder"], limit=None, batch_size=3,
               dataset_options={"folder": {"root": str(root)}})
    with pytest.raises(E.Interrupted):
        E.evaluate(cfg, progress=False, quiet=True, _interrupt_after=1)
    shutil.copy(root / "face3.jpg", root / "face1.jpg")
    rec = E.evaluate(cfg, progress=False, quiet=True)["records"]
    pix = rec[rec.method == "pixelate_8"].set_index("id").loc[["face0.jpg", "face1.jpg", "face2.jpg"]]
    assert list(pix.status) == ["ok", "failed", "ok"]
    assert pix.reason.iloc[1] == "reload failed: the image (or its mask) changed since it was prepared"


def test_the_same_file_decoded_to_other_pixels_is_warned_about_not_failed(monkeypatch, caplog):
    """What decides "changed" is the file's bytes: the same file decoded or resampled to other pixels (another
    Pillow / OpenCV version between an interruption and its resume) is used, with one warning, not recorded as
    a failure for every image (found by a review of the first version of the check)."""
    from g2face_eval.data import datasets as D
    from g2face_eval.data.io import ImageLoadError
    from g2face_eval.harness import prepare as P

    monkeypatch.setitem(P._warned, "pixels", False)
    prep = P.Preparer(64)
    img = np.full((80, 80, 3), 100, np.uint8)
    sample = D.Sample("x", img, source="file-digest")
    item = P.Item("x", None, pixels=P.pixels_digest(P.resize(img, 64), None), source="file-digest")
    prep.reload(sample, True, item)                       # the same pixels: no warning
    assert item.image is not None and not caplog.records
    item.image = None
    prep.reload(D.Sample("x", img + 1, source="file-digest"), True, item)   # same file, other decoding
    assert item.image is not None and "other pixels than when it was prepared" in caplog.text
    item.image = None
    with pytest.raises(ImageLoadError, match="changed since it was prepared"):
        prep.reload(D.Sample("x", img, source="another file"), True, item)
    assert item.image is None


# ------------------------------------------------------------------------------------------------------- 4
def test_a_dataset_without_images_is_a_configuration_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    cfg = _cfg(tmp_path, datasets=["folder"], limit=None, dataset_options={"folder": {"root": str(tmp_path / "empty")}})
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    assert E.cli(["--config", str(tmp_path / "cfg.json"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("g2face-eval evaluate: dataset 'folder' has no images") and "\n" not in err
    assert not (tmp_path / "results").exists()  # refused before any work


# ------------------------------------------------------------------------------------------------------- 5
def test_unavailable_metrics_do_not_depend_on_the_invocation(tmp_path, monkeypatch):
    """A recognizer without a validated threshold: its deid_success_rate is unavailable in the first run and in
    a rerun that finds every batch done (unavailable.json and the MLflow tag)."""
    import mlflow

    from g2face_eval.oracles import recognizers as R

    real = R.load_thresholds

    def without_sface():
        d = json.loads(json.dumps(real()))
        d.get("recognizers", {}).pop("sface", None)
        return d

    monkeypatch.setattr(R, "load_thresholds", without_sface)
    cfg = _cfg(tmp_path)
    seen = []
    for _ in range(2):
        res = E.evaluate(cfg, progress=False, quiet=True)
        client = mlflow.MlflowClient(res["tracking_uri"])
        tag = client.get_run(res["parent_run_id"]).data.tags
        (child,) = json.loads((res["run_dir"] / "mlflow.json").read_text())["children"].values()
        seen.append(((res["run_dir"] / "unavailable.json").read_text(),
                     client.get_run(child).data.tags["g2face.unavailable"]))
        assert "g2face.run" in tag
    assert seen[0] == seen[1]
    assert "deid_success_rate_sface" in json.loads(seen[1][0])


# ------------------------------------------------------------------------------------------------------- 6
def test_a_second_process_on_a_locked_run_fails_fast_and_sweeps_nothing(tmp_path, capsys):
    run_dir = tmp_path / "results" / "locked"
    stale = run_dir / "batches" / "m" / ".x.parquet.abc.tmp"  # another process's in-flight write
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"...")
    with run_lock_held(run_dir) as pid:
        BatchStore(run_dir)  # a store opened without the lock sweeps nothing
        assert stale.exists()
        with pytest.raises(E.RunLockedError, match=f"pid {pid} "):
            acquire_run_lock(run_dir)
        (tmp_path / "cfg.json").write_text(json.dumps(_cfg(tmp_path, run_name="locked")))
        assert E.cli(["--config", str(tmp_path / "cfg.json"), "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert f"is in use by another evaluation (pid {pid} " in err and "Traceback" not in err
        assert stale.exists() and not (run_dir / "config.json").exists()  # nothing done
    # the holder exited: the lock is free; within one process it is re-entrant, and its holder sweeps
    assert acquire_run_lock(run_dir) is True and acquire_run_lock(run_dir) is False
    try:
        BatchStore(run_dir)
        assert not stale.exists()
    finally:
        release_run_lock(run_dir)
    assert not holds_run_lock(run_dir)


# ------------------------------------------------------------------------------------------------------- 7
def test_a_rerun_does_not_duplicate_mlflow_metric_histories(tmp_path):
    from g2face_eval.harness.tracking import Tracker

    run_dir = tmp_path / "results" / "r"
    run_dir.mkdir(parents=True)
    uri = f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    for values in ({"a": 1.0, "b/x": 2.0}, {"a": 1.0, "b/x": 2.0}, {"a": 1.0, "b/x": 3.0}):  # run, rerun, rerun
        t = Tracker(tmp_path / "results", run_dir, "r", uri=uri)
        with t.parent_run({"p": "1"}, tags={"g2face.run": "r"}) as pid:
            t.log_metrics(pid, values)
    hist = {k: [m.value for m in t.client.get_metric_history(pid, k)] for k in ("a", "b/x")}
    assert hist == {"a": [1.0], "b/x": [2.0, 3.0]}


# ------------------------------------------------------------------------------------------------------- 8
def test_a_reused_run_name_keeps_no_leftovers_of_the_earlier_methods(tmp_path):
    import mlflow

    E.evaluate(_cfg(tmp_path, run_name="rn", methods=["blur_s1", "pixelate_8"]), progress=False, quiet=True)
    res = E.evaluate(_cfg(tmp_path, run_name="rn", methods=["blur_s1"], limit=1), progress=False, quiet=True)
    run_dir = res["run_dir"]
    lat = json.loads((run_dir / "latency.json").read_text())
    assert list(lat) == ["blur_s1"]
    rec = pd.read_parquet(run_dir / "records.parquet")             # a run without failures has a reason column
    assert (rec.status == "ok").all() and "reason" in rec.columns and rec.reason.isna().all()
    assert set(res["aggregate"].method) == {"blur_s1"}
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["blur_s1__embedded.png"]
    client = mlflow.MlflowClient(res["tracking_uri"])
    logged = [a.path for a in client.list_artifacts(res["parent_run_id"], "samples")]
    assert logged == ["samples/blur_s1__embedded.png"]
    (child,) = json.loads((run_dir / "mlflow.json").read_text())["children"].values()
    assert lat["blur_s1"]["method_hash"] == client.get_run(child).data.params["method.hash"]
    # neither the per-method tables nor the report's figures keep the dropped method (found by a review)
    assert sorted(p.name for p in (run_dir / "methods").iterdir()) == ["blur_s1"]
    figs = sorted(p.name for p in (tmp_path / "reports" / "rn" / "figures").iterdir())
    assert "samples_blur_s1__embedded.png" in figs and not any("pixelate_8" in f for f in figs)
    logged = [a.path for a in client.list_artifacts(res["parent_run_id"], "report/figures")]
    assert logged and not any("pixelate_8" in f for f in logged)


# ---------------------------------------------------------------------------------------- review 2026-11-28
def test_embeddings_and_runs_follow_the_recognizers_weights(tmp_path, monkeypatch):
    """Embeddings cached with other weight files under the same recognizer name are not reused, and a run with
    them is another run (its prepared embeddings are never resumed): the recognizer's fingerprint (weights
    sha256, embedding code version) keys the embedding cache and enters the configuration hash (found by a
    review: both were keyed by the recognizer's name only)."""
    from g2face_eval.oracles import recognizers as R

    calls = []
    real = R.SFaceRecognizer.embed_aligned

    def counted(self, crops):
        calls.append(len(crops))
        return real(self, crops)

    monkeypatch.setattr(R.SFaceRecognizer, "embed_aligned", counted)
    cfg = _cfg(tmp_path)
    first = E.evaluate(cfg, progress=False, quiet=True)
    assert sum(calls) > 0
    calls.clear()
    again = E.evaluate({**cfg, "results_dir": str(tmp_path / "results2")}, progress=False, quiet=True)
    assert sum(calls) == 0 and again["run_dir"].name == first["run_dir"].name   # same weights: all cached
    monkeypatch.setattr(R.SFaceRecognizer, "fingerprint", property(lambda self: "sface-otherweights"))
    other = E.evaluate({**cfg, "results_dir": str(tmp_path / "results3")}, progress=False, quiet=True)
    assert sum(calls) > 0 and other["run_dir"].name != first["run_dir"].name


# ------------------------------------------------------------------------------------------------------- 9
def test_method_hashes_follow_the_methods_code(tmp_path, monkeypatch):
    """Outputs cached (and batches recorded) by other code of the methods are not reused: the code fingerprint
    enters every method hash, hence the output cache's namespace and the batch keys."""
    tree = tmp_path / "code" / "models"
    tree.mkdir(parents=True)
    (tree / "a.py").write_text("x = 1\n")
    before = C.source_fingerprint([tree])
    (tree / "a.py").write_text("x = 2\n")
    after = C.source_fingerprint([tree])
    (tree / "b.py").write_text("")
    assert len({before, after, C.source_fingerprint([tree])}) == 3
    import baselines
    import g2face_eval

    pkg = Path(g2face_eval.__file__).resolve().parent
    assert C.code_fingerprint() == C.source_fingerprint(
        [pkg / "anonymizer.py", pkg / "imaging.py", pkg / "models", pkg / "oracles" / "detectors.py",
         Path(baselines.__path__[0]).resolve()])

    cfg = C.make_config(_cfg(tmp_path))
    one = E.setup(cfg)
    monkeypatch.setattr(C, "code_fingerprint", lambda: "other code")
    two = E.setup(cfg)
    r1, r2 = one.runners["blur_s1"], two.runners["blur_s1"]
    assert r1.mhash != r2.mhash and r1._ns("anonymize") != r2._ns("anonymize")
    assert one.batch_key("blur_s1", ["a", "b"]) != two.batch_key("blur_s1", ["a", "b"])
    assert one.name == two.name  # the same run: resumed with the other code, its batches computed again


# ------------------------------------------------------------------------------------------------------- 10
def test_an_interrupted_invocation_keeps_its_batch_count(tmp_path, monkeypatch):
    """``batches_computed`` is kept up to date while batches are saved (here after every batch) and written when
    the invocation stops on an interruption."""
    monkeypatch.setattr(E, "PROGRESS_EVERY_BATCHES", 1)
    cfg = _cfg(tmp_path, limit=6, batch_size=2)  # 3 batches
    counts: list[int] = []
    real = BatchStore.save

    def save(self, *parts, **kw):
        (inv,) = json.loads((self.root.parent / "invocations.json").read_text())
        counts.append(inv["batches_computed"])
        real(self, *parts, **kw)

    monkeypatch.setattr(BatchStore, "save", save)
    with pytest.raises(E.Interrupted):
        E.evaluate(cfg, progress=False, quiet=True, _interrupt_after=2)
    (run_dir,) = [p for p in (tmp_path / "results").iterdir() if (p / "config.json").exists()]
    (inv,) = json.loads((run_dir / "invocations.json").read_text())
    assert counts == [0, 1] and inv["batches_computed"] == 2 and inv["status"] == "running"

    monkeypatch.setattr(BatchStore, "save", real)
    monkeypatch.setattr(E, "PROGRESS_EVERY_BATCHES", 1000)  # the final count is written at the end anyway
    E.evaluate(cfg, progress=False, quiet=True)
    first, second = json.loads((run_dir / "invocations.json").read_text())
    assert first["status"] == "interrupted" and first["batches_computed"] == 2
    assert second["batches_computed"] == 1 and second["batches_total"] == 3


def test_a_damaged_persisted_unit_stops_the_run_with_its_name_and_a_rerun_recomputes_it(tmp_path, capsys):
    """A persisted batch and a prepared chunk overwritten with junk (a damaged disk, an edit): the rerun stops with
    one line naming the unit (CLI exit 1, no traceback), the unit is moved aside (``*.corrupt``), and the next rerun
    computes it again and equals the undamaged run."""
    cfg = _cfg(tmp_path, methods=["blur_s1", "pixelate_8"], limit=4, batch_size=2)
    first = E.evaluate(cfg, progress=False, quiet=True)
    run_dir = Path(first["run_dir"])
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    cols = ["method", "id", "psnr", "ssim", "deid_mean_similarity_sface"]
    ref = first["records"].sort_values(["method", "id"])[cols].reset_index(drop=True)
    victims = sorted((run_dir / "batches").rglob("*.parquet"))[0], sorted((run_dir / "prepared").rglob("*.npz"))[1]
    for victim in victims:
        victim.write_bytes(b"junk" * 10)
        assert E.cli(["--config", str(tmp_path / "cfg.json"), "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert "aborted:" in err and victim.stem in err and "rerun the same command" in err and "Traceback" not in err
        assert "environment error" not in err  # the unit's damage, not the machine's
        assert not victim.exists() and victim.with_name(victim.name + ".corrupt").exists()
        res = E.evaluate(cfg, progress=False, quiet=True)
        got = res["records"].sort_values(["method", "id"])[cols].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, ref, check_exact=True)
        assert victim.exists()


def test_a_file_system_error_reading_a_unit_leaves_it_in_place(tmp_path, monkeypatch):
    """An OSError with an errno (permissions, I/O error) while reading a persisted unit is the environment's, not the
    unit's damage: it propagates unchanged and the unit is not moved aside."""
    store = BatchStore(tmp_path)
    store.save("m", "d", "k", records=pd.DataFrame({"id": ["a"]}), arrays={"x": np.zeros(2)})
    monkeypatch.setattr(pd, "read_parquet", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "denied")))
    with pytest.raises(PermissionError):
        store.load("m", "d", "k")
    assert store.done("m", "d", "k") and not list(tmp_path.rglob("*.corrupt"))


def test_an_interrupted_mlflow_store_creation_leaves_no_half_made_store(tmp_path, monkeypatch):
    """The first run in a results folder creates MLflow's sqlite store (seconds of schema migrations); killed
    then, it left a half-migrated database that every later run there failed on (found by a review). The store
    is made in a temporary file renamed into place when complete: an interruption leaves no store, and the
    next run creates it and completes."""
    import mlflow

    from g2face_eval.harness import tracking as T

    real = mlflow.MlflowClient.search_experiments

    def killed_before_the_rename(self, *a, **kw):
        real(self, *a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(mlflow.MlflowClient, "search_experiments", killed_before_the_rename)
    results = tmp_path / "results"
    with pytest.raises(KeyboardInterrupt):
        T._create_sqlite_store(T.tracking_uri(results))
    assert not (results / "mlflow.db").exists()
    monkeypatch.setattr(mlflow.MlflowClient, "search_experiments", real)
    res = E.evaluate(_cfg(tmp_path), progress=False, quiet=True)
    assert (results / "mlflow.db").is_file() and not list(results.glob(".mlflow.db.creating-*"))
    assert mlflow.MlflowClient(res["tracking_uri"]).get_run(res["parent_run_id"]).info.status == "FINISHED"


def test_every_set_metric_of_a_missing_extractor_is_reported_unavailable():
    """kid_effnet_lite0 was missing from unavailable.json when its extractor was disabled (found by a review)."""
    unavailable: dict = {}
    E._feature_extractors(unavailable, "cpu", ["inception_fid"])
    assert {"fd_effnet_lite0", "kid_effnet_lite0", "fid", "kid"} <= set(unavailable)
    assert unavailable["kid_effnet_lite0"].startswith("disabled by the configuration")
