"""Bad inputs: every case gets a clear error or a per-image failure record, the run completes, and no partial
or corrupt file is left behind.

Two tables make the case -> outcome mapping explicit (the test ids are the case names):

* ``FILE_CASES``: image files written into one folder dataset and evaluated with two fast baselines in ONE
  ``evaluate`` run; expected per-image outcome ``ok`` or ``failed`` + a reason substring.
* ``API_CASES``: tensors, keys, payloads, weights, method names and configs; expected exception type + a
  message substring (or, for keys/payloads, a fail-closed result).
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from badfiles import _png16_rgb, corrupt_jpeg_bytes, huge_png_bytes  # tests/ is on sys.path
from PIL import Image

from g2face_eval.harness import evaluate as E

FACES = Path(E.__file__).resolve().parents[1] / "data" / "embedded" / "faces"
METHODS = ["pixelate_8", "mask_black"]


def _face(name: str = "tom_hanks__tom_hanks.jpg") -> np.ndarray:
    return np.asarray(Image.open(FACES / name).convert("RGB"))


def _enc(arr_or_img, fmt: str, **kw) -> bytes:
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _truncated_junk_jpeg() -> bytes:
    """Headers up to the SOS segment, 40 junk bytes, then the file ends (no EOI): a truncation."""
    good = _enc(_face(), "JPEG", quality=95)
    sos = good.index(b"\xff\xda")
    junk = np.random.default_rng(0).integers(0, 255, 400, dtype=np.uint8).tobytes().replace(b"\xff", b"\x00")
    return good[: sos + 14] + junk[:40]


def _five_faces() -> np.ndarray:
    names = sorted(p.name for p in FACES.glob("*.jpg") if "hflip" not in p.name)[:5]
    tiles = [np.asarray(Image.open(FACES / n).convert("RGB").resize((256, 256))) for n in names]
    return np.concatenate(tiles, axis=1)  # 1280 x 256, five faces side by side


# case id -> (file name, bytes factory, expected status, reason substring)
FILE_CASES: dict[str, tuple[str, callable, str, str]] = {
    "good_face_control": ("good.jpg", lambda: _enc(_face(), "JPEG", quality=95), "ok", ""),
    "truncated_jpeg_junk_scan": ("truncated_junk.jpg", _truncated_junk_jpeg, "failed", "load failed: truncated"),
    # junk inside the scan data, length and EOI kept: Pillow alone decodes it to garbage without an error
    "corrupt_jpeg_scan_eoi_kept": (
        "corrupt.jpg",
        lambda: corrupt_jpeg_bytes(_enc(_face(), "JPEG", quality=95), seed=0),
        "failed",
        "load failed: corrupt image data",
    ),
    "truncated_jpeg": (
        "truncated.jpg",
        lambda: (lambda b: b[: len(b) // 2])(_enc(_face(), "JPEG", quality=95)),
        "failed",
        "truncated",
    ),
    "truncated_png": (
        "truncated.png",
        lambda: (lambda b: b[: len(b) // 2])(_enc(_face(), "PNG")),
        "failed",
        "load failed",
    ),
    "zero_byte": ("zero.jpg", lambda: b"", "failed", "zero-byte"),
    "text_as_jpeg": ("text.jpg", lambda: b"not an image\n" * 40, "failed", "not an image"),
    "one_by_one": ("one.png", lambda: _enc(np.zeros((1, 1, 3), np.uint8), "PNG"), "failed", "too small"),
    "huge_10000x10000": ("huge.png", lambda: huge_png_bytes(10000, 10000), "failed", "too large"),
    "grayscale_face": ("gray.png", lambda: _enc(Image.fromarray(_face()).convert("L"), "PNG"), "ok", ""),
    "rgba_face": ("rgba.png", lambda: _enc(Image.fromarray(_face()).convert("RGBA"), "PNG"), "ok", ""),
    "rgb16_face": ("rgb16.png", lambda: _png16_rgb(_face()), "ok", ""),
    "cmyk_jpeg_face": (
        "cmyk.jpg",
        lambda: _enc(Image.fromarray(_face()).convert("CMYK"), "JPEG", quality=95),
        "ok",
        "",
    ),
    "no_face": ("flat.png", lambda: _enc(np.full((128, 128, 3), 128, np.uint8), "PNG"), "failed", "no face"),
    "five_faces": ("five.png", lambda: _enc(_five_faces(), "PNG"), "ok", ""),
    # an extreme aspect ratio (YuNet has returned infinite boxes on such strips): no face, not a crash
    "strip_16x5000": (
        "strip.png",
        lambda: _enc(np.asarray(Image.fromarray(_face()).resize((5000, 16))), "PNG"),
        "failed",
        "no face",
    ),
    # YuNet does not find a face lying on its side: a clear per-image failure, the run goes on
    "face_rotated_90": (
        "rot90.png",
        lambda: _enc(np.ascontiguousarray(np.rot90(_face())), "PNG"),
        "failed",
        "no face",
    ),
}


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("bad_inputs")
    root = tmp / "imgs"
    root.mkdir()
    for fname, make, _, _ in FILE_CASES.values():
        (root / fname).write_bytes(make())
    cfg = {
        "methods": METHODS,
        "datasets": ["folder"],
        "dataset_options": {"folder": {"root": str(root)}},
        "recognizers": ["sface"],
        "detectors": ["yunet"],
        "results_dir": str(tmp / "results"),
        "cache_dir": str(tmp / "cache"),
        "reports_dir": str(tmp / "reports"),
        "bootstrap_samples": 50,
        "latency_repeats": 1,
        "samples_per_grid": 2,
        "batch_size": 4,
    }
    res = E.evaluate(cfg, progress=False, quiet=True)
    return res, tmp


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_file_case_outcome(bad_run, case):
    res, _ = bad_run
    fname, _, expect, reason = FILE_CASES[case]
    rec = res["records"]
    rows = rec[rec["id"] == fname]
    assert sorted(rows["method"]) == sorted(METHODS), rows  # one record per method, failures included
    assert (rows["status"] == expect).all(), rows[["method", "status", "reason"]]
    if expect == "failed":
        assert rows["reason"].str.contains(reason, case=False).all(), rows["reason"].tolist()
    else:
        assert np.isfinite(rows["ssim"].astype(float)).all()


def test_run_completes_and_leaves_no_partial_files(bad_run):
    res, tmp = bad_run
    run_dir = res["run_dir"]
    rec = res["records"]
    print("\n" + rec[["id", "method", "status", "reason"]].sort_values(["id", "method"]).to_string())
    for f in ("records.parquet", "aggregate.parquet", "aggregate.csv", "config.json", "summary.txt"):
        assert (run_dir / f).is_file(), f
    leftovers = [p for p in tmp.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.suffixes]
    assert not leftovers, leftovers
    for p in tmp.rglob("*.parquet"):
        pd.read_parquet(p)  # every parquet parses
    for p in tmp.rglob("*.json"):
        if "mlartifacts" not in p.parts or p.suffix == ".json":
            json.loads(p.read_text())  # every JSON parses
    agg = res["aggregate"]
    n_failed = agg[(agg.metric == "n_failed")].set_index("method")["value"]
    expected = sum(expect == "failed" for _, _, expect, _ in FILE_CASES.values())
    assert expected == 11 and (n_failed == expected).all()  # the refused files are counted, not dropped
    import mlflow

    client = mlflow.MlflowClient(res["tracking_uri"])
    exp = client.get_run(res["parent_run_id"]).info.experiment_id
    assert all(r.info.status == "FINISHED" for r in client.search_runs([exp]))


# ------------------------------------------------------------------------------------------------------------
# non-file cases
# ------------------------------------------------------------------------------------------------------------
def _baseline():
    from g2face_eval import methods as M

    return M.METHODS.get("pixelate_8")()


def _nan_tensor():
    x = torch.rand(2, 3, 32, 32)
    x[0, 0, 0, 0] = float("nan")
    _baseline().anonymize(x, [b"k1", b"k2"])


def _inf_tensor():
    x = torch.rand(2, 3, 32, 32)
    x[1, 2, 3, 4] = float("inf")
    _baseline().anonymize(x, [b"k1", b"k2"])


def _wrong_dtype():
    _baseline().anonymize((torch.rand(2, 3, 32, 32) * 255).to(torch.uint8), [b"k1", b"k2"])


def _wrong_rank():
    _baseline().anonymize(torch.rand(3, 32, 32), [b"k1"])


def _tiny_g2face():
    from g2face_eval.models.anonymizer import ConstantGeometry, G2FaceAnonymizer
    from g2face_eval.models.g2face import G2Face, G2FaceConfig

    cfg = G2FaceConfig.tiny(size=64)
    torch.manual_seed(0)

    class Ident(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, cfg.id_dim)

        def forward(self, x):
            return self.fc(x.mean((2, 3))) * 3

    return G2FaceAnonymizer(
        G2Face(cfg, with_discriminator=False), identity=Ident(), geometry=ConstantGeometry(), payload="keyed"
    )


def _wrong_key():
    """G2Face recover with a wrong key: authentication fails, the image is returned unchanged."""
    from g2face_eval.anonymizer import derive_keys

    anon = _tiny_g2face()
    torch.manual_seed(1)
    x = torch.rand(2, 3, 64, 64)
    out = anon.anonymize(x, derive_keys("run", ["a", "b"]))
    bad = anon.recover(out.images, derive_keys("wrong", ["a", "b"]))
    assert bad.ok.tolist() == [False, False]
    assert torch.equal(bad.images, out.images)
    return "fail-closed"


def _tampered_payload():
    """A payload whose ciphertext is modified (valid error-correcting codewords): authentication fails."""
    from g2face_eval.models.payload import KeyedPayload

    kp = KeyedPayload(16384, 512)
    torch.manual_seed(0)
    emb, key = torch.randn(1, 512), b"\x01" * 32
    cws = kp.encode_bytes(emb[0].numpy(), key)
    msg = bytearray(b"".join(bytes(kp.rs.decode(bytearray(c))[0]) for c in cws))
    msg[20] ^= 0x01
    forged = [bytes(kp.rs.encode(bytes(msg[c * kp.k : (c + 1) * kp.k]))) for c in range(kp.n_cw)]
    stream = torch.from_numpy(kp._layout(forged, key))[None]
    tampered = torch.empty_like(stream)
    tampered[:, kp._perm_cpu] = stream
    d = kp.decode(tampered, [key], is_bits=True)
    assert d.ok.tolist() == [False] and torch.count_nonzero(d.embeddings) == 0
    return "fail-closed"


def _missing_weight(tmp_path, monkeypatch):
    from g2face_eval import zoo

    monkeypatch.setenv("G2FACE_WEIGHTS_DIR", str(tmp_path / "weights"))
    (tmp_path / "weights").mkdir(exist_ok=True)
    zoo.path("g2face_official")


def _wrong_sha256(tmp_path, monkeypatch):
    from g2face_eval import zoo

    monkeypatch.setenv("G2FACE_WEIGHTS_DIR", str(tmp_path / "weights"))
    spec = zoo.WEIGHTS.get("g2face_official")
    f = tmp_path / "weights" / spec.filename
    f.parent.mkdir(exist_ok=True)
    torch.save({"w": torch.zeros(2)}, f)
    monkeypatch.setitem(zoo.WEIGHTS._items, spec.name, dataclasses.replace(spec, sha256="ab" * 32))
    zoo.load("g2face_official")


def _unknown_method(tmp_path, monkeypatch):
    E.evaluate(
        {"methods": ["no_such_method"], "results_dir": str(tmp_path / "r"), "cache_dir": str(tmp_path / "c")},
        progress=False,
        quiet=True,
    )


def _invalid_config_key(tmp_path, monkeypatch):
    from g2face_eval.harness import config as C

    f = tmp_path / "bad.toml"
    f.write_text("nonsense_key = 1\n")
    C.make_config(file=f)


def _invalid_config_syntax(tmp_path, monkeypatch):
    from g2face_eval.harness import config as C

    f = tmp_path / "bad.toml"
    f.write_text("methods = [unterminated\n")
    C.make_config(file=f)


def _invalid_config_cli(tmp_path, monkeypatch):
    """The CLI turns an invalid config file into exit code 2 with the error on stderr (no traceback)."""
    f = tmp_path / "bad.toml"
    f.write_text("nonsense_key = 1\n")
    rc = E.cli(["--config", str(f), "--no-progress"])
    assert rc == 2
    return "exit 2"


def _nan_face_mask():
    m = torch.full((2, 1, 32, 32), float("nan"))
    _baseline().anonymize(torch.rand(2, 3, 32, 32), [b"k1", b"k2"], face_masks=m)


def _face_mask_out_of_range():
    _baseline().anonymize(torch.rand(2, 3, 32, 32), [b"k1", b"k2"], face_masks=torch.full((2, 1, 32, 32), 255.0))


def _integer_face_mask():
    m = torch.ones(2, 1, 32, 32, dtype=torch.uint8)
    _baseline().anonymize(torch.rand(2, 3, 32, 32), [b"k1", b"k2"], face_masks=m)


def _empty_face_mask():
    """A mask with no face pixel (all zero) is not 'leave the image alone': the whole image is anonymized, as
    for a face the detector misses, and the output says which images that was."""
    from g2face_eval import methods as M

    x = torch.from_numpy(np.array(_face())).permute(2, 0, 1)[None].float().div(255)
    x = torch.cat([x, x])
    m = torch.zeros(2, 1, *x.shape[-2:])
    m[1, :, 40:200, 40:200] = 1.0
    for name in ("pixelate_8", "mask_black", "blur_s4", "noise_s0.2"):
        out = M.METHODS.get(name)().anonymize(x, [b"k1", b"k2"], face_masks=m)
        assert out.info["empty_face_mask"] == [0], name
        changed = (out.images != x).flatten(1).float().mean(1)
        assert changed[0] > 0.5 and 0.0 < changed[1] < 0.5, (name, changed)   # whole image vs the masked box
    return "whole image"


def _empty_batch():
    _baseline().anonymize(torch.rand(0, 3, 32, 32), [])


class _WrongShape:
    """A method whose output is not its input's batch: one image too many, reordered."""

    @staticmethod
    def make(kind: str):
        from g2face_eval.anonymizer import Anonymizer, Output

        class Bad(Anonymizer):
            name = "bad_" + kind

            def _anonymize(self, images, keys, face_masks):
                if kind == "extra":
                    return Output(torch.cat([images.flip(0), images[:1]]))
                return Output(images.clone(), ok=torch.ones(images.shape[0] + 1, dtype=torch.bool))

        return Bad()


def _output_extra_image():
    _WrongShape.make("extra").anonymize(torch.rand(2, 3, 32, 32), [b"k1", b"k2"])


def _output_ok_rows():
    _WrongShape.make("ok").anonymize(torch.rand(2, 3, 32, 32), [b"k1", b"k2"])


def _dataset_option_errors_cli(tmp_path, monkeypatch):
    """A dataset option it does not take, a bad value, or the folder dataset without its root: exit 2 with one
    line naming the dataset (it was a TypeError/ValueError traceback)."""
    monkeypatch.setenv("G2FACE_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.delenv("G2FACE_DATASETS", raising=False)   # else the folder dataset reads the datasets root (CI)
    common = ["--methods", "pixelate_8", "--results-dir", str(tmp_path / "r"),
              "--no-progress"]
    import contextlib

    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        assert E.cli(["--datasets", "folder", *common]) == 2
        for opt in ('bogus = 1', 'limit = "abc"'):
            f = tmp_path / "opts.toml"
            f.write_text(f'datasets = ["folder"]\n[dataset_options.folder]\nroot = "{FACES}"\n{opt}\n')
            assert E.cli(["--config", str(f), *common]) == 2, opt
    err = buf.getvalue()
    assert err.count("g2face-eval evaluate: dataset 'folder'") == 3 and "Traceback" not in err, err
    return "exit 2"


# case id -> (callable, expected exception type or None (returns a fail-closed marker), message substring)
API_CASES = {
    "dataset_option_errors_cli_exit_2": (_dataset_option_errors_cli, None, "exit 2"),
    "nan_face_mask": (_nan_face_mask, ValueError, "finite and lie in [0, 1]"),
    "face_mask_out_of_range": (_face_mask_out_of_range, ValueError, "finite and lie in [0, 1]"),
    "integer_face_mask": (_integer_face_mask, TypeError, "float in [0, 1] or bool"),
    "empty_face_mask_whole_image": (_empty_face_mask, None, "whole image"),
    "empty_batch": (_empty_batch, ValueError, "empty batch"),
    "output_with_an_extra_image": (_output_extra_image, ValueError, "returned images of shape (3, 3, 32, 32)"),
    "output_with_ok_rows_mismatch": (_output_ok_rows, ValueError, "returned ok of shape (3,) for 2 images"),
    "nan_tensor": (_nan_tensor, ValueError, "NaN or inf"),
    "inf_tensor": (_inf_tensor, ValueError, "NaN or inf"),
    "wrong_dtype_uint8": (_wrong_dtype, TypeError, "floating-point"),
    "wrong_rank": (_wrong_rank, ValueError, "(B,3,H,W)"),
    "g2face_wrong_key": (_wrong_key, None, "fail-closed"),
    "g2face_tampered_payload": (_tampered_payload, None, "fail-closed"),
    "missing_weight_file": (_missing_weight, "WeightMissingError", "G2Face.pth"),
    "weight_wrong_sha256": (_wrong_sha256, "WeightIntegrityError", "ab" * 32),
    "unknown_method": (_unknown_method, Exception, "no_such_method"),
    "invalid_config_unknown_key": (_invalid_config_key, ValueError, "unknown keys"),
    "invalid_config_syntax": (_invalid_config_syntax, ValueError, ""),
    "invalid_config_cli_exit_2": (_invalid_config_cli, None, "exit 2"),
}


@pytest.mark.parametrize("case", list(API_CASES))
def test_api_case_outcome(case, tmp_path, monkeypatch):
    import inspect

    from g2face_eval import zoo

    fn, exc, msg = API_CASES[case]
    args = (tmp_path, monkeypatch) if inspect.signature(fn).parameters else ()
    if exc is None:
        assert fn(*args) == msg
        return
    if isinstance(exc, str):
        exc = getattr(zoo, exc)
    with pytest.raises(exc) as e:
        fn(*args)
    assert msg in str(e.value), str(e.value)
    if case == "weight_wrong_sha256":  # names the file and both digests
        assert "G2Face.pth" in str(e.value) or zoo.WEIGHTS.get("g2face_official").filename in str(e.value)


def test_an_exception_in_preparation_is_that_images_failure(monkeypatch):
    """Whatever the preparation of one image raises (an OpenCV error on a degenerate detection, ...) becomes
    that image's failure record; the other images of the chunk are prepared."""
    from types import SimpleNamespace

    from g2face_eval.harness import prepare as P

    class Src:
        name, aligned = "folder", True

        def load(self, sid):
            return SimpleNamespace(id=sid, image=_face(), mask=None, meta={}, source=None)

    preparer = P.Preparer(256)
    real = preparer.prepare

    def prepare(sample, aligned):
        if sample.id == "bad":
            raise RuntimeError("cv2.error: degenerate warp")
        return real(sample, aligned)

    monkeypatch.setattr(preparer, "prepare", prepare)
    items, fails = P.load_prepare(Src(), preparer, ["good", "bad"])
    assert [it.id for it in items] == ["good"]
    assert fails[0][0] == "bad" and "prepare failed: RuntimeError: cv2.error" in fails[0][1]


# ------------------------------------------------------------------------------------------------------------
# preparation edge cases (load_prepare / Preparer level: no evaluate run)
# ------------------------------------------------------------------------------------------------------------
def test_big_face_is_detected_on_a_capped_copy():
    """YuNet misses a face ~1000 px wide at full resolution (grace_hopper x4 gave a box around one eye, cropped
    and scored as the face): the raw image is detected on a copy capped at DETECT_MAX_SIDE."""
    import cv2
    import matplotlib.cbook as cb

    from g2face_eval.data.datasets import Sample
    from g2face_eval.harness import prepare as P

    img = np.asarray(Image.open(cb.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB"))
    assert img.shape[:2] == (600, 512)  # x1: within the detection cap, detected as it is
    big = cv2.resize(img, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
    prep = P.Preparer(256)
    a, b = prep.prepare(Sample("x1", img), aligned=False), prep.prepare(Sample("x4", big), aligned=False)
    assert not isinstance(a, str) and not isinstance(b, str), (a, b)
    err = np.abs(b.src_landmarks / 4 - a.src_landmarks).max()
    assert err <= 3, f"x4 landmarks (scaled) off by {err:.1f} px"


def _non_utf8_folder(root: Path) -> Path:
    import os

    root.mkdir()
    try:
        with open(os.path.join(os.fsencode(root), b"Jos\xe9.jpg"), "wb") as f:
            f.write(_enc(_face(), "JPEG", quality=95))
    except OSError:
        pytest.skip("the file system refuses non-UTF-8 names")
    (root / "good.jpg").write_bytes(_enc(_face(), "JPEG", quality=95))
    return root


def test_file_name_not_utf8_is_prepared_under_a_safe_id(tmp_path):
    """A file name that is not valid UTF-8 next to a good face: the chunk key, the preparation and the
    chunk's records table (parquet) take it, one record per file (it used to crash the run in ``digest``)."""
    from g2face_eval.harness import prepare as P

    root = _non_utf8_folder(tmp_path / "imgs")
    src = P.DatasetSource("folder", {"dataset_options": {"folder": {"root": str(root)}}})
    key = P.chunk_key("cfg", "items", src.name, src.ids)  # hashing the ids crashed the run
    assert key == P.chunk_key("cfg", "items", src.name, list(src.ids))  # stable
    assert sorted(src.ids) == ["Jos%E9.jpg", "good.jpg"]
    items, fails = P.load_prepare(src, P.Preparer(256), src.ids)
    df = P._entry(items, fails)
    df.to_parquet(tmp_path / "chunk.parquet", index=False)
    back = pd.read_parquet(tmp_path / "chunk.parquet")
    assert sorted(back["id"]) == ["Jos%E9.jpg", "good.jpg"] and (back["status"] == "ok").all(), back


def test_repeat_keeps_ids_that_contain_the_repeat_separator(tmp_path):
    """``repeat`` adds "#r<k>" to the ids; a dataset's own id "a#r1.jpg" must load as itself (it used to be
    split into "a" and raise KeyError), and its repeats as it."""
    from g2face_eval.harness import prepare as P

    root = tmp_path / "imgs"
    root.mkdir()
    faces = {"a#r1.jpg": _face(), "b.jpg": _face("barack_obama__obama1.jpg")}
    for name, arr in faces.items():
        (root / name).write_bytes(_enc(arr, "PNG"))
    src = P.DatasetSource("folder", {"dataset_options": {"folder": {"root": str(root), "repeat": 3}}})
    assert src.ids == ["a#r1.jpg", "b.jpg", "a#r1.jpg#r1", "b.jpg#r1", "a#r1.jpg#r2", "b.jpg#r2"]
    for sid in src.ids:
        s = src.load(sid)
        base = src.base_id(sid)
        assert s.id == sid and base in faces and np.array_equal(s.image, faces[base]), (sid, base)
    assert src.base_id("a#r1.jpg") == "a#r1.jpg" and src.base_id("a#r1.jpg#r2") == "a#r1.jpg"
    items, fails = P.load_prepare(src, P.Preparer(256), src.ids)
    assert len(items) + len(fails) == 6 and not any("KeyError" in r for _, r, _ in fails)


def test_subject_is_the_central_face_not_a_tied_bystander(datasets_root):
    """celeb_187/044157.jpg: a blurry background face in the top-left corner scores 0.911, the subject 0.909.
    The subject (centre-weighted choice, the rule LFW validation uses) is cropped, and the face kept on the
    prepared image is the one the crop was made for."""
    from g2face_eval.data import datasets as D
    from g2face_eval.harness import prepare as P

    ds = D.open_dataset("celeba_id", root=datasets_root)
    s = ds.load("celeb_187/044157.jpg")
    prep = P.Preparer(256)
    raw = prep.det.detect(s.image)
    assert len(raw) == 2 and raw[0].box[0] < 20 and raw[0].box[1] < 20  # the premise: the bystander first
    it = prep.prepare(s, aligned=False)
    assert not isinstance(it, str), it
    eyes = it.src_landmarks[:2].mean(0)
    assert 60 < eyes[0] < 130 and 90 < eyes[1] < 150, it.src_landmarks  # the subject's eyes, not the corner
    exp = P.crop_landmarks(it.src_landmarks, 256)
    assert np.linalg.norm(it.face.landmarks5 - exp, axis=1).mean() < 10  # px of 256: the cropped face


def test_face_on_prepared_image_is_the_cropped_subject():
    """On the prepared image the kept face is the one nearest the crop's own landmarks, whatever the scores;
    a bystander alone is not taken for the subject."""
    from g2face_eval.harness import prepare as P
    from g2face_eval.oracles.detectors import Face

    exp = np.array([[90, 120], [166, 120], [128, 160], [98, 195], [158, 195]], np.float64)
    subject = Face(np.array([60, 70, 136, 160], np.float32), (exp + 3).astype(np.float32), 0.7)
    bystander = Face(np.array([200, 0, 56, 60], np.float32), (exp * 0.2 + [210, 5]).astype(np.float32), 0.95)
    assert P.subject_on_prepared([bystander, subject], (256, 256, 3), exp) is subject
    assert P.subject_on_prepared([bystander], (256, 256, 3), exp) is None
    assert P.subject_on_prepared([bystander, subject], (256, 256, 3), None) is subject  # centre-weighted
