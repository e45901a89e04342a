"""Harness end to end on a small real subset (celebahq256 test faces with parsing masks, a few celeba_id
identities, utkface), resume after interruption, MLflow completeness, report building, config handling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from g2face_eval.harness import config as C
from g2face_eval.harness import evaluate as E

METHODS = ["pixelate_8", "blur_s1", "identity"]


def _cfg(tmp, root, **kw):
    base = {
        "datasets_root": str(root),
        "results_dir": str(tmp / "results"),
        "cache_dir": str(tmp / "cache"),
        "reports_dir": str(tmp / "reports"),
        "bootstrap_samples": 200,
        "latency_repeats": 1,
        "samples_per_grid": 3,
    }
    base.update(kw)
    return base


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, datasets_root):
    tmp = tmp_path_factory.mktemp("harness")
    cfg = _cfg(
        tmp,
        datasets_root,
        methods=METHODS,
        datasets=["celebahq256", "celeba_id", "utkface"],
        dataset_options={
            "celebahq256": {"split": "test", "limit": 8},
            "celeba_id": {"limit": 4},
            "utkface": {"limit": 4},
        },
        gallery_per_identity=2,
        batch_size=4,
    )
    res = E.evaluate(cfg, progress=False, quiet=True)
    return res, cfg


def _value(agg, method, dataset, metric):
    a = agg[(agg.method == method) & (agg.dataset == dataset) & (agg.metric == metric)]
    assert len(a) == 1, (method, dataset, metric)
    return float(a.value.iloc[0])


def test_records_and_aggregate(small_run):
    res, _ = small_run
    run_dir = res["run_dir"]
    for f in (
        "records.parquet",
        "records.csv",
        "aggregate.parquet",
        "aggregate.csv",
        "config.json",
        "environment.json",
        "latency.json",
        "demographics.csv",
    ):
        assert (run_dir / f).is_file(), f
    rec = pd.read_parquet(run_dir / "records.parquet")
    assert set(rec.method) == set(METHODS)
    assert set(rec.dataset) == {"celebahq256", "celeba_id", "utkface"}
    ok = rec[rec.status == "ok"]
    assert (ok.groupby("method").size() >= 12).all()  # 8 + 4 (+ probes) per method, minus failures
    agg = res["aggregate"]
    m = agg[(agg.metric == "ssim") & (agg.dataset == "celebahq256")]
    assert (m.ci_lo <= m.value + 1e-12).all() and (m.value <= m.ci_hi + 1e-12).all()
    # demographic columns carried from utkface
    u = ok[ok.dataset == "utkface"]
    assert u.gender.notna().all() and u.race.notna().all() and u.age_band.notna().all()
    # identification on celeba_id, with the originals' rates as reference
    assert {"id_rank1_sface", "id_rank1_original_sface", "id_rank5_sface"} <= set(ok.columns)
    # Fréchet distance on offline features is always there; FID only with the Inception weights
    assert (agg.metric == "fd_effnet_lite0").any()
    assert (agg[agg.metric == "latency_ms_per_image"].value > 0).all()
    # cleaned face region: celebahq256 had parsing masks
    assert (run_dir / "samples" / "pixelate_8__celebahq256.png").is_file()


def test_sanity_strong_vs_tiny_vs_identity(small_run):
    res, _ = small_run
    agg = res["aggregate"]
    for ds in ("celebahq256", "utkface"):
        for rec in ("sface", "dlib"):
            if (agg.metric == f"deid_success_rate_{rec}").any():
                assert _value(agg, "pixelate_8", ds, f"deid_success_rate_{rec}") >= 0.75
                assert _value(agg, "blur_s1", ds, f"deid_success_rate_{rec}") <= 0.25
                assert _value(agg, "identity", ds, f"deid_success_rate_{rec}") == 0.0
                assert _value(agg, "identity", ds, f"recovered_id_success_{rec}") == 1.0
            # similarity-based sanity holds whether or not thresholds are validated
            assert _value(agg, "blur_s1", ds, f"deid_mean_similarity_{rec}") > 0.8
            assert _value(agg, "identity", ds, f"deid_mean_similarity_{rec}") > 0.999
            # dlib's cosine similarities are compressed near 1 (it is a Euclidean-distance model): order only
            margin = 0.3 if rec == "sface" else 0.0
            assert (
                _value(agg, "pixelate_8", ds, f"deid_mean_similarity_{rec}")
                < _value(agg, "blur_s1", ds, f"deid_mean_similarity_{rec}") - margin
            )
        assert _value(agg, "identity", ds, "recovery_psnr") == E.PSNR_CAP_DB
        assert _value(agg, "identity", ds, "recovery_ssim") == pytest.approx(1.0)
        assert _value(agg, "identity", ds, "ssim") == pytest.approx(1.0)
    assert _value(agg, "identity", "celeba_id", "id_rank1_sface") == _value(
        agg, "identity", "celeba_id", "id_rank1_original_sface"
    )


def test_demographics_break_down_every_per_image_metric(small_run):
    """utkface: every per-image metric per gender/race/age band, with the aggregate table's aggregation --
    each value equals the records' mean over that group."""
    res, _ = small_run
    demo = res["demographics"]
    rec = res["records"]
    u = rec[(rec.status == "ok") & (rec.dataset == "utkface")]
    assert {"gender", "race", "age_band"} <= set(demo.attribute)
    for metric in ("deid_success_rate_sface", "ssim", "pose_error_deg", "detection_rate_yunet",
                   "recovery_psnr"):
        d = demo[(demo.metric == metric) & (demo.attribute == "gender") & (demo.dataset == "utkface")]
        assert not d.empty, metric
        for r in d.itertuples():
            v = u[(u.method == r.method) & (u.gender == r.group)][metric].to_numpy(float)
            v = v[np.isfinite(v)]
            assert r.n == v.size and r.value == pytest.approx(v.mean(), abs=1e-12), (metric, r.method, r.group)
            assert r.ci_lo <= r.value + 1e-12 <= r.ci_hi + 2e-12
    agg = res["aggregate"]
    a = agg[(agg.metric == "ssim")].aggregation.iloc[0]
    assert set(demo[demo.metric == "ssim"].aggregation) == {a}


def test_mlflow_parent_children_artifacts(small_run):
    import mlflow

    res, _ = small_run
    client = mlflow.MlflowClient(res["tracking_uri"])
    parent = client.get_run(res["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["datasets"]
    exp = parent.info.experiment_id
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.info.run_name for c in children) == sorted(METHODS)
    for c in children:
        assert c.info.status == "FINISHED"
        assert any(k.endswith("ssim") for k in c.data.metrics)
        assert any(k.endswith("_ci_lo") for k in c.data.metrics)
        assert "method.name" in c.data.params
        arts = {a.path for a in client.list_artifacts(c.info.run_id)}
        assert {"records.parquet", "aggregate.csv", "config.json", "environment.json", "samples"} <= arts
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"tables", "samples", "report", "config.json", "environment.json"} <= arts
    env = json.loads((res["run_dir"] / "environment.json").read_text())
    assert env["packages"]["torch"] and "git_hash" in env and "python" in env


def test_report_built(small_run):
    res, cfg = small_run
    out = C.make_config(cfg)["reports_dir"]
    from pathlib import Path

    page = Path(out) / res["run_name"] / "report.html"
    assert page.is_file()
    assert page.read_text().count("data:image/png;base64,") >= 4


def test_resume_equals_uninterrupted(tmp_path, datasets_root):
    kw = dict(
        methods=["pixelate_16", "identity"],
        datasets=["celebahq256"],
        dataset_options={"celebahq256": {"split": "test", "limit": 4}},
        batch_size=2,
    )
    a = E.evaluate(_cfg(tmp_path / "a", datasets_root, **kw), progress=False, quiet=True)
    cfg_b = _cfg(tmp_path / "b", datasets_root, **kw)
    with pytest.raises(E.Interrupted):
        E.evaluate(cfg_b, progress=False, quiet=True, _interrupt_after=3)
    b = E.evaluate(cfg_b, progress=False, quiet=True)
    assert b["run_dir"].name == a["run_dir"].name  # same config -> same run name (resume target)
    pd.testing.assert_frame_equal(a["records"], b["records"])
    cols = ["method", "dataset", "metric", "value", "ci_lo", "ci_hi", "n"]
    # everything but the timing rows (latency, throughput, peak memory: dataset "all") is bit-identical
    sa = a["aggregate"][a["aggregate"].dataset != "all"][cols].reset_index(drop=True)
    sb = b["aggregate"][b["aggregate"].dataset != "all"][cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(sa, sb, check_exact=True)
    import mlflow

    client = mlflow.MlflowClient(b["tracking_uri"])
    runs = client.search_runs([client.get_run(b["parent_run_id"]).info.experiment_id])
    assert all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    assert sum(1 for r in runs if "mlflow.parentRunId" not in r.data.tags) == 1  # the parent was reused


def test_config_file_and_flags(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text(
        'methods = ["blur_s4"]\ndatasets = ["celebahq256"]\nlimit = 5\n'
        '[dataset_options.celebahq256]\nsplit = "test"\n'
    )
    cfg = C.make_config({"batch_size": 3}, file=f)
    assert cfg["methods"] == ["blur_s4"] and cfg["limit"] == 5 and cfg["batch_size"] == 3
    assert cfg["dataset_options"]["celebahq256"]["split"] == "test"
    bad = tmp_path / "bad.toml"
    bad.write_text("nonsense_key = 1\n")
    with pytest.raises(ValueError, match="unknown keys"):
        C.make_config(file=bad)
    assert C.config_hash(C.make_config({"batch_size": 3})) == C.config_hash(C.make_config({"batch_size": 7}))
    assert C.config_hash(C.make_config({"seed": 1})) != C.config_hash(C.make_config({"seed": 2}))
    import argparse

    ap = argparse.ArgumentParser()
    C.add_arguments(ap)
    ns = ap.parse_args(["--methods", "a,b", "--limit", "2", "--config", str(f)])
    cfg = C.from_args(ns)
    assert cfg["methods"] == ["a", "b"] and cfg["limit"] == 2
    from pathlib import Path

    shipped = C.make_config(file=Path(__file__).resolve().parent.parent / "configs" / "shared_datasets.toml")
    assert shipped["datasets"] == ["celebahq256", "celeba_id", "utkface"]


def test_failure_records_for_faceless_images(tmp_path):
    """Images where no face is found become failure records; the run continues."""
    import cv2

    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(root / "noise.png"), rng.integers(0, 255, (128, 128, 3), np.uint8))
    cv2.imwrite(str(root / "flat.png"), np.full((64, 64, 3), 128, np.uint8))
    (root / "broken.jpg").write_bytes(b"not an image")
    res = E.evaluate(
        _cfg(
            tmp_path,
            tmp_path,
            methods=["blur_s4"],
            datasets=["folder"],
            dataset_options={"folder": {"root": str(root)}},
        ),
        progress=False,
        quiet=True,
    )
    rec = res["records"]
    assert len(rec) == 3 and (rec.status == "failed").all()
    assert rec.reason.str.contains("face|load", regex=True).all()


def test_repeat_option_gives_distinct_ids_loading_the_same_pixels():
    """dataset option ``repeat`` (scale benchmarks): the dataset's images again under distinct ids, cut to
    ``limit``; a repeated id loads the same pixels as its original."""
    from g2face_eval.harness import config as C
    from g2face_eval.harness.prepare import DatasetSource

    cfg = C.make_config({"datasets": ["embedded"], "dataset_options": {"embedded": {"repeat": 3, "limit": 70}}})
    src = DatasetSource("embedded", cfg)
    base = DatasetSource("embedded", C.make_config({"datasets": ["embedded"]})).ids
    assert len(src.ids) == 70 == len(set(src.ids)) and src.ids[: len(base)] == base
    rep = src.ids[len(base)]
    assert rep == f"{base[0]}#r1"
    np.testing.assert_array_equal(src.load(rep).image, src.load(base[0]).image)
    assert src.load(rep).id == rep


def test_batch_metrics_measure_the_subjects_face(datasets_root):
    """Detection and the face mesh are taken at the subject's place: with the subject's face blacked out, a second
    face elsewhere in the output is not counted as detected and gets no pose error (it did count before); with the
    subject kept (blurred), every detector finds it and the pose error is that of the subject's own mesh."""
    from types import SimpleNamespace

    import cv2

    from g2face_eval.metrics import attributes as A
    from g2face_eval.oracles import detectors as Dt
    from g2face_eval.oracles.geometry import get_face_mesh

    files = sorted((datasets_root / "celebahq256" / "images").glob("*.jpg"))[:3]
    rd = [np.ascontiguousarray(cv2.imread(str(f))[:, :, ::-1]) for f in files]
    orig = []
    for i in range(2):  # the subject (256 px) with a bystander (160 px) beside it
        scene = np.full((256, 448, 3), 110, np.uint8)
        scene[:, :256] = rd[i]
        scene[48:208, 280:440] = cv2.resize(rd[2], (160, 160), interpolation=cv2.INTER_AREA)
        orig.append(scene)
    dets = {n: Dt.get_detector(n) for n in ("yunet", "mtcnn", "dlib_hog")}
    mesh = get_face_mesh()
    subject = [min(dets["yunet"].detect(im), key=lambda f: f.box[0]) for im in orig]  # the face on the left
    assert all(f.box[0] + f.box[2] < 270 for f in subject)
    blurred = cv2.GaussianBlur(orig[0], (0, 0), 2)
    masked = orig[1].copy()
    x, y, w, h = (int(round(v)) for v in subject[1].box)
    masked[max(0, y - h // 5):y + h + h // 5, max(0, x - w // 5):x + w + w // 5] = 0
    assert all(det.detect(masked) for det in dets.values())  # the bystander is still found by every detector
    assert mesh.analyze(masked) is not None  # and meshed, when the mesh is not told whose face to take
    oracles = SimpleNamespace(recognizers={}, detectors=dets, mesh=mesh, lpips=None)
    oracles.mesh_of = lambda img, subject=None: E.Oracles.mesh_of(oracles, img, subject)
    items = [SimpleNamespace(id=f"f{i}", meta={}, image=im, face=f)
             for i, (im, f) in enumerate(zip(orig, subject, strict=True))]
    ctx = E.BatchContext("celebahq256", {}, [mesh.analyze(im, subject=f) for im, f in zip(orig, subject, strict=True)])
    df = E.batch_metrics(items, [blurred, masked], ctx, oracles, reversible=False)
    for d in dets:
        assert df[f"detection_rate_{d}"].tolist() == [1.0, 0.0], d
    assert df["mesh_detected_rate"].tolist() == [1.0, 0.0]
    assert np.isnan(df["pose_error_deg"][1]) and np.isnan(df["mesh_shape_distance"][1])
    a, o = mesh.analyze(blurred, subject=subject[0]), ctx.mesh[0]
    want = A.pose_error(np.array([[a.yaw, a.pitch, a.roll]]), np.array([[o.yaw, o.pitch, o.roll]]))[0]
    assert df["pose_error_deg"][0] == pytest.approx(want, abs=1e-9) and want < 10


def _runner(tmp_path, name: str, cached: bool | None = None):
    """A MethodRunner with its own output cache; ``cached`` overrides the method's ``cache_outputs``."""
    from g2face_eval import methods as M
    from g2face_eval.harness.records import ArrayCache, ImageCache

    method = M.METHODS.get(name)()
    if cached is not None:
        method.cache_outputs = cached
    return E.MethodRunner(name, method, C.method_hash(method.config()), ImageCache(tmp_path / "out"),
                          ArrayCache(tmp_path / "arr"), "cpu")


def _embedded_faces(n: int, size: int = 256) -> list[np.ndarray]:
    from PIL import Image

    faces = sorted((Path(E.__file__).resolve().parents[1] / "data" / "embedded" / "faces").glob("*.jpg"))[:n]
    return [np.asarray(Image.open(p).convert("RGB").resize((size, size))) for p in faces]


def test_output_cache_is_keyed_by_the_input_pixels_and_mask(tmp_path):
    """The output cache is shared across runs: the same dataset/id/key with another mask or another prepared
    image (e.g. another image_size) is another input, never a cache hit on the old output."""
    img = _embedded_faces(1)[0]
    mask = np.zeros(img.shape[:2], np.uint8)
    mask[40:120, 60:200] = 1
    key = [b"k" * 32]
    shared = _runner(tmp_path / "shared", "mask_black", cached=True)  # a cheap method, cached for the test
    with_mask = shared.anonymize("ds", ["a"], [img], key, [mask])[0][0]
    assert len(list((tmp_path / "shared" / "out").rglob("*.png"))) == 1
    no_mask = shared.anonymize("ds", ["a"], [img], key, [None])[0][0]
    fresh = _runner(tmp_path / "fresh", "mask_black").anonymize("ds", ["a"], [img], key, [None])[0][0]
    assert np.array_equal(no_mask, fresh)
    assert not np.array_equal(no_mask, with_mask)
    assert (with_mask[40:120, 60:200] == 0).all()  # the mask region is blacked out, the rest is not all black
    small = np.ascontiguousarray(img[::2, ::2])  # the same face prepared at 128 px
    assert shared.anonymize("ds", ["a"], [small], key, [None])[0][0].shape == small.shape


def test_only_methods_costlier_than_a_png_write_use_the_output_cache(tmp_path, monkeypatch):
    """The closed-form baselines and identity recompute their outputs (nothing written to the cache, the same
    output every call); a method with ``cache_outputs`` (the learned ones) writes its output and side array once,
    and the next call with the same input reads them back instead of running the method."""
    from g2face_eval import methods as M
    from g2face_eval.models.anonymizer import G2FaceAnonymizer

    assert not any(M.METHODS.get(n)().cache_outputs for n in (*M.CLASSIC_METHODS, "identity"))
    assert G2FaceAnonymizer.cache_outputs
    img = _embedded_faces(1)[0]
    key = [b"k" * 32]
    cheap = _runner(tmp_path / "cheap", "pixelate_8")
    first = cheap.anonymize("ds", ["a"], [img], key, [None])[0][0]
    assert not (tmp_path / "cheap" / "out").exists() and not (tmp_path / "cheap" / "arr").exists()
    assert np.array_equal(first, cheap.anonymize("ds", ["a"], [img], key, [None])[0][0])

    cached = _runner(tmp_path / "cached", "pixelate_8", cached=True)
    out = cached.anonymize("ds", ["a"], [img], key, [None])[0][0]
    assert np.array_equal(out, first)
    assert len(list((tmp_path / "cached" / "out").rglob("*.png"))) == 1
    assert len(list((tmp_path / "cached" / "arr").rglob("*.npy"))) == 1

    def not_called(*a, **k):
        raise AssertionError("a cached output was recomputed")

    monkeypatch.setattr(cached.method, "_anonymize", not_called)
    assert np.array_equal(cached.anonymize("ds", ["a"], [img], key, [None])[0][0], first)


def test_face_masks_apply_per_image_not_per_batch(tmp_path):
    """A batch mixing images with and without a face mask: each output equals that image run alone."""
    a, b = _embedded_faces(2)
    mask = np.zeros(a.shape[:2], np.uint8)
    mask[30:110, 50:210] = 1
    keys = [b"a" * 32, b"b" * 32]
    mixed = _runner(tmp_path / "mixed", "pixelate_8").anonymize("ds", ["a", "b"], [a, b], keys, [mask, None])[0]
    alone_a = _runner(tmp_path / "a", "pixelate_8").anonymize("ds", ["a"], [a], keys[:1], [mask])[0][0]
    alone_b = _runner(tmp_path / "b", "pixelate_8").anonymize("ds", ["b"], [b], keys[1:], [None])[0][0]
    assert np.array_equal(mixed[0], alone_a) and np.array_equal(mixed[1], alone_b)
    # the mask was used for image a (pixelation outside its detected face box but inside the mask would differ)
    detected_a = _runner(tmp_path / "d", "pixelate_8").anonymize("ds", ["a"], [a], keys[:1], [None])[0][0]
    assert not np.array_equal(alone_a, detected_a)


def test_a_method_failing_everywhere_leaves_a_complete_run(tmp_path, monkeypatch):
    """Its images become failure records, its latency an error entry; the other methods' results, the
    aggregate and records are written."""
    from PIL import Image

    from g2face_eval import methods as M
    from g2face_eval.anonymizer import Anonymizer

    class AlwaysFails(Anonymizer):
        name = "always_fails"

        def _anonymize(self, images, keys, face_masks):
            raise RuntimeError("boom")

    monkeypatch.setitem(M.METHODS._items, "always_fails", AlwaysFails)
    root = tmp_path / "imgs"
    root.mkdir()
    for i, im in enumerate(_embedded_faces(2)):
        Image.fromarray(im).save(root / f"{i}.png")
    cfg = _cfg(tmp_path, tmp_path, methods=["always_fails", "pixelate_8"], datasets=["folder"],
               dataset_options={"folder": {"root": str(root)}}, recognizers=["sface"], detectors=["yunet"],
               key="secret-master-key-42")
    res = E.evaluate(cfg, progress=False, quiet=True)
    # the master key is never recorded (config.json, MLflow params), only its fingerprint
    written = (Path(res["run_dir"]) / "config.json").read_text()
    assert "secret-master-key-42" not in written and E.key_fingerprint("secret-master-key-42") in written
    import mlflow

    params = mlflow.MlflowClient(res["tracking_uri"]).get_run(res["parent_run_id"]).data.params
    assert params["key"] == E.key_fingerprint("secret-master-key-42")
    assert not any("secret-master-key-42" in v for v in params.values())
    rec = res["records"]
    bad = rec[rec.method == "always_fails"]
    assert len(bad) == 2 and (bad.status == "failed").all() and bad.reason.str.contains("boom").all()
    assert (rec[rec.method == "pixelate_8"].status == "ok").all()
    lat = json.loads((Path(res["run_dir"]) / "latency.json").read_text())
    assert "boom" in lat["always_fails"]["error"] and lat["pixelate_8"]["latency_ms_per_image"] > 0
    assert lat["pixelate_8"]["device"] == "cpu" and "thread" in lat["pixelate_8"]["device_name"]
    agg = res["aggregate"]
    rows = agg[(agg.method == "pixelate_8") & agg.metric.isin(["latency_ms_per_image", "peak_memory_mb"])]
    assert dict(zip(rows.metric, rows.aggregation, strict=True)) == {"latency_ms_per_image": "median",
                                                                     "peak_memory_mb": "set"}
    assert not ((agg.method == "always_fails") & (agg.metric == "latency_ms_per_image")).any()


def test_resume_by_other_code_is_reported(tmp_path):
    said: list[str] = []
    say = lambda fmt, *a: said.append(fmt % a)  # noqa: E731
    env = {"git_hash": "abc", "git_dirty": False, "python": "3.11.7 (main)", "torch": "2.14.1",
           "packages": {"numpy": "2.1.0", "g2face-eval": "0.1"}}
    E._warn_on_mixed_code(tmp_path, env, say)  # first invocation
    (tmp_path / "invocations.json").write_text(json.dumps([{"git_hash": "abc", "git_dirty": False,
                                                             "software": E.software(env)}]))
    assert E.software(env) == {"python": "3.11.7", "torch": "2.14.1", "numpy": "2.1.0"}
    E._warn_on_mixed_code(tmp_path, env, say)  # same code and software: silent
    assert said == []
    E._warn_on_mixed_code(tmp_path, {**env, "git_hash": "def"}, say)
    E._warn_on_mixed_code(tmp_path, {**env, "git_dirty": True}, say)
    assert len(said) == 2 and "def" in said[0] and "abc" in said[0] and "uncommitted" in said[1]
    # the same commit after a package upgrade: said, with what changed
    E._warn_on_mixed_code(tmp_path, {**env, "torch": "2.15.0", "packages": {"numpy": "2.1.0"}}, say)
    assert len(said) == 3 and "torch 2.14.1 -> 2.15.0" in said[2] and "numpy" not in said[2]


def test_failed_closed_recoveries_are_not_scored_as_recoveries(tmp_path, monkeypatch):
    """A keyed method whose recovery authenticates for some images only: recovery PSNR/SSIM average the
    authenticated ones (a failed-closed recovery returned its input, the anonymized face), and a failed one
    counts as identity not recovered."""
    import torch
    from PIL import Image

    from g2face_eval import methods as M
    from g2face_eval.anonymizer import Anonymizer, Output

    class FlipHalfRecovers(Anonymizer):
        name, reversible = "flip_half", True

        def _anonymize(self, images, keys, face_masks):
            return Output(images.flip(-1), ok=torch.ones(len(keys), dtype=torch.bool))

        def _recover(self, images, keys):
            ok = torch.tensor([k[0] % 2 == 0 for k in keys])  # authenticates for about half of the keys
            return Output(torch.where(ok[:, None, None, None], images.flip(-1), images), ok=ok)

    monkeypatch.setitem(M.METHODS._items, "flip_half", FlipHalfRecovers)
    root = tmp_path / "imgs"
    root.mkdir()
    for i, im in enumerate(_embedded_faces(6)):
        Image.fromarray(im).save(root / f"{i}.png")
    cfg = _cfg(tmp_path, tmp_path, methods=["flip_half"], datasets=["folder"], recognizers=["sface"],
               detectors=["yunet"], dataset_options={"folder": {"root": str(root)}})
    rec = E.evaluate(cfg, progress=False, quiet=True)["records"]
    ok = rec.recovery_ok_rate.to_numpy() == 1.0
    assert 0 < ok.sum() < len(rec)
    assert np.isfinite(rec.recovery_psnr[ok]).all() and (rec.recovery_psnr[ok] >= E.PSNR_CAP_DB - 1e-9).all()
    assert rec.recovery_psnr[~ok].isna().all() and rec.recovery_ssim[~ok].isna().all()
    assert (rec.recovered_id_success_sface[~ok] == 0).all() and (rec.recovered_id_success_sface[ok] == 1).all()


def test_celebahq256_defaults_to_its_held_out_test_split(datasets_root, caplog):
    """The shipped learned checkpoints were trained on celebahq256's train split: the harness evaluates the
    test split unless asked otherwise, and says so when asked otherwise."""
    from g2face_eval.data import datasets as D
    from g2face_eval.harness.prepare import DatasetSource

    test_ids = set(D.open_dataset("celebahq256", root=datasets_root, split="test").ids())
    train_ids = set(D.open_dataset("celebahq256", root=datasets_root, split="train").ids())
    src = DatasetSource("celebahq256", {"datasets_root": str(datasets_root), "limit": 20})
    assert len(src.ids) == 20 and set(src.ids) <= test_ids and not caplog.records
    src = DatasetSource("celebahq256", {"datasets_root": str(datasets_root), "limit": 20,
                                        "dataset_options": {"celebahq256": {"split": "all"}}})
    assert set(src.ids) & train_ids and "not held-out" in caplog.text


def test_demographics_count_each_groups_failures():
    """Failures that fall on one group show in its n_failed (they are left out of its rates, as in the aggregate
    table), and the rates are over that group's processed images only."""
    rows = []
    for i in range(200):
        g = "F" if i % 2 else "M"
        failed = g == "F" and i < 120  # 60 of the 100 F images fail, no M image does
        rows.append(dict(method="blur", dataset="utkface", id=f"{i:03d}", status="failed" if failed else "ok",
                         reason="no face" if failed else None, gender=g,
                         deid_success_rate_sface=np.nan if failed else float(i % 3 == 0)))
    rec = pd.DataFrame(rows)
    demo = E.demographics(rec, n_boot=50, seed=0).set_index(["group", "metric"])
    assert demo.loc[("F", "n_failed"), "value"] == 60 and demo.loc[("M", "n_failed"), "value"] == 0
    assert demo.loc[("F", "n_images"), "value"] == 40 and demo.loc[("M", "n_images"), "value"] == 100
    f_ok = rec[(rec.gender == "F") & (rec.status == "ok")].deid_success_rate_sface
    assert demo.loc[("F", "deid_success_rate_sface"), "value"] == pytest.approx(f_ok.mean())
    assert demo.loc[("F", "deid_success_rate_sface"), "n"] == 40


def test_latency_is_reused_only_from_the_same_device_and_runs(tmp_path):
    """An earlier invocation's timing is kept only for the same method code, device and number of timed calls:
    a GPU timing reused beside CPU ones (or 1 run beside 3) would put two kinds of number on one axis."""
    from types import SimpleNamespace as NS

    S = NS(runners={m: NS(mhash="h", device="cpu") for m in "abcde"}, cfg={"latency_repeats": 3})
    ok = {"device": "cpu", "runs": 3, "method_hash": "h", "latency_ms_per_image": 1.0}
    old = {"a": ok, "b": {**ok, "device": "cuda:0"}, "c": {**ok, "runs": 1}, "d": {**ok, "method_hash": "x"},
           "e": {"error": "boom", "method_hash": "h"}, "gone": ok}
    p = tmp_path / "latency.json"
    p.write_text(json.dumps(old))
    assert E._reusable_latency(S, p) == {"a": ok}


def test_identification_gallery_failures_are_reported(tmp_path, datasets_root):
    """A gallery photo that cannot be used is listed in gallery.json (with the gallery's size) and warned about,
    instead of silently shrinking the gallery the ranks are computed against (found by a review); the dataset's
    own ``split`` option is refused in an evaluation (it crashed the run with a KeyError on the other role)."""
    import shutil

    from evalhelpers import cheap_config

    from g2face_eval.data.datasets import DatasetOptionsError

    src = datasets_root / "celeba_id" / "images"
    root = tmp_path / "data"
    for person in sorted(p.name for p in src.iterdir() if p.is_dir())[:2]:
        (root / "celeba_id" / "images" / person).mkdir(parents=True)
        for f in sorted((src / person).iterdir())[:4]:   # 3 gallery photos + 1 probe each
            shutil.copy(f, root / "celeba_id" / "images" / person / f.name)
    first = sorted((root / "celeba_id" / "images").iterdir())[0]
    bad = sorted(first.iterdir())[0]
    bad.write_bytes(b"not an image")
    cfg = cheap_config(tmp_path, tmp_path / "cache", methods=["identity"], datasets=["celeba_id"], limit=None,
                       datasets_root=str(root), gallery_per_identity=2, batch_size=4)
    res = E.evaluate(cfg, progress=False, quiet=True)
    g = json.loads((res["run_dir"] / "gallery.json").read_text())["celeba_id"]
    assert (g["n_photos"], g["n_used"], g["n_identities"], g["n_failed"]) == (4, 3, 2, 1)
    assert g["failures"][0]["id"] == f"{first.name}/{bad.name}" and "load failed" in g["failures"][0]["reason"]
    rank1 = res["aggregate"].query("method == 'identity' and metric == 'id_rank1_sface'")
    assert len(rank1) == 1 and float(rank1.value.iloc[0]) == 1.0
    with pytest.raises(DatasetOptionsError, match="celeba_id.split is not supported"):
        E._dataset_source("celeba_id", {**cfg, "dataset_options": {"celeba_id": {"split": "probe"}}})
