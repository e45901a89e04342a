"""Data layer: robust loading (bad-file corpus), dataset loaders on the shared data, the embedded default."""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pytest
from badfiles import make_corpus  # tests/ is on sys.path (rootdir-less test modules)
from PIL import Image, ImageFile

from g2face_eval.data import datasets as ds
from g2face_eval.data.io import MAX_PIXELS, ImageLoadError, image_size, load_image, load_image_and_bytes, load_mask

# ---------------------------------------------------------------------------------------------- io / corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("badfiles")
    return root, make_corpus(root)


CORPUS_NAMES = [
    "zero_byte.jpg",
    "not_an_image.jpg",
    "truncated_junk_scan.jpg",
    "corrupt_scan.jpg",
    "truncated.jpg",
    "truncated.png",
    "one_pixel.png",
    "thin_15px.png",
    "huge_10000x10000.png",
    "gray.png",
    "gray.jpg",
    "rgba.png",
    "la.png",
    "palette.png",
    "palette.gif",
    "gray16.png",
    "rgb16.png",
    "cmyk.jpg",
    "exif_rot90.jpg",
    "good.jpg",
    "progressive.jpg",
    "float.tif",
    "float_nan.tif",
    "float_inf.tif",
    "float_65535.tif",
    "float_negative.tif",
    "float_0_255.tif",
    "rgb_colour_key.png",
    "gray_colour_key.png",
    "gray16_colour_key.png",
    "bilevel_colour_key.png",
    "gray2_colour_key.png",
    "rgb16_colour_key.png",
    "int32.tif",
    "int32_70000.tif",
    "int32_negative.tif",
]


def test_corpus_lists_every_case(corpus):
    _, files = corpus
    assert sorted(files) == sorted(CORPUS_NAMES)


@pytest.mark.parametrize("name", CORPUS_NAMES)
def test_corpus_file(corpus, name):
    _, files = corpus
    bf = files[name]
    if bf.expect == "error":
        with pytest.raises(ImageLoadError) as ei:
            load_image(bf.path)
        assert ei.value.reason and bf.reason_has in ei.value.reason
        assert str(bf.path) in str(ei.value)  # the message names the file
    elif name == "rgb16_colour_key.png":  # loaded without its key, and said so
        with pytest.warns(UserWarning, match="ignoring the colour key .* of a 16-bit RGB image"):
            arr = load_image(bf.path)
        bf.check(arr)
    else:
        arr = load_image(bf.path)
        assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3 and arr.flags.c_contiguous
        if bf.check:
            bf.check(arr)


@pytest.mark.parametrize("name", CORPUS_NAMES)
def test_load_from_read_bytes_equals_load_from_file(corpus, name):
    """``load_image_and_bytes`` (one read, decoded from memory: what ``Dataset.load`` digests) gives what
    ``load_image`` gives from the file, refusals included, and the file's bytes."""
    import warnings

    path = corpus[1][name].path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            want = load_image(path)
        except ImageLoadError as e:
            with pytest.raises(ImageLoadError) as ei:
                load_image_and_bytes(path)
            assert ei.value.reason == e.reason
            return
        arr, data = load_image_and_bytes(path)
    assert np.array_equal(arr, want) and data == path.read_bytes()


def test_corrupt_jpeg_scan_data_with_end_marker_is_refused(tmp_path):
    """Junk in the entropy-coded data of a real face JPEG, EOI kept: Pillow alone returns garbage pixels
    without a word (the premise), the loader refuses the file; the intact file still loads, Pillow's pixels.
    (Junk that libjpeg cannot notice stays undetectable: see ``corrupt_jpeg_bytes``.)"""
    import io

    from badfiles import corrupt_jpeg_bytes

    face = ds.EMBEDDED_DIR / "faces" / "tom_hanks__tom_hanks.jpg"
    good = face.read_bytes()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(corrupt_jpeg_bytes(good, seed=0))
    garbage = np.asarray(Image.open(io.BytesIO(bad.read_bytes())).convert("RGB"))  # no error from Pillow
    ref = np.asarray(Image.open(face).convert("RGB"))
    assert np.abs(garbage.astype(int) - ref).mean() > 5
    with pytest.raises(ImageLoadError, match="corrupt image data") as ei:
        load_image(bad)
    assert "Corrupt JPEG data" in ei.value.reason
    assert np.array_equal(load_image(face), ref)


def test_file_name_not_utf8_gets_a_safe_stable_id(tmp_path):
    """A POSIX file name that is not valid UTF-8 (surrogate-escaped str in Python) gets an escaped id that can
    be hashed, selected (``limit`` spread) and written; the file itself still loads under it."""
    import os

    good = (ds.EMBEDDED_DIR / "faces" / "tom_hanks__tom_hanks.jpg").read_bytes()
    root = tmp_path / "imgs"
    root.mkdir()
    try:
        with open(os.path.join(os.fsencode(root), b"Jos\xe9.jpg"), "wb") as f:
            f.write(good)
    except OSError:
        pytest.skip("the file system refuses non-UTF-8 names")
    (root / "good.jpg").write_bytes(good)
    (root / "Jos%E9.jpg").write_bytes(good)  # a real file with the escaped name: no collision
    d = ds.open_dataset("folder", root)
    ids = d.ids()
    assert len(ids) == 3 and "Jos%E9.jpg" in ids and "good.jpg" in ids, ids
    escaped = [i for i in ids if i.startswith("Jos%E9.jpg~")]
    assert len(escaped) == 1 and d.path(escaped[0]).name == os.fsdecode(b"Jos\xe9.jpg")
    for i in ids:
        i.encode("utf-8")  # every id is valid Unicode
        assert d.load(i).image.shape == (256, 256, 3)
    assert ds.open_dataset("folder", root).ids() == ids  # stable
    assert len(ds.open_dataset("folder", root, limit=2).ids()) == 2  # spread selection hashes the ids
    assert ds.safe_id(os.fsdecode(b"Jos\xe9.jpg")) == "Jos%E9.jpg" and ds.safe_id("José.jpg") == "José.jpg"


def test_huge_image_refused_from_header_without_decoding(corpus, monkeypatch):
    _, files = corpus
    p = files["huge_10000x10000.png"].path
    assert p.stat().st_size < 2_000_000  # cheap to write

    def no_decode(self, *a, **k):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    monkeypatch.setattr(Image.Image, "load", no_decode)
    t = time.perf_counter()
    with pytest.raises(ImageLoadError, match="too large") as ei:
        load_image(p)
    assert "10000x10000" in ei.value.reason and time.perf_counter() - t < 1.0
    with pytest.raises(ImageLoadError, match="too large"):
        image_size(p)
    assert 10000 * 10000 > MAX_PIXELS


def test_pillow_decompression_bomb_guard_becomes_load_error(corpus, monkeypatch):
    _, files = corpus
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # good.jpg is 48x64 = 3072 px: a "bomb" now
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(files["good.jpg"].path)


def test_missing_file_and_partial_load_flag(corpus, tmp_path, monkeypatch):
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "nope.jpg")
    _, files = corpus
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # never return grey-filled partial images
    with pytest.raises(ImageLoadError):
        load_image(files["truncated.jpg"].path)


def test_load_mask_palette_indices_and_refusals(tmp_path, corpus):
    idx = (np.arange(40 * 40).reshape(40, 40) % 19).astype(np.uint8)
    m = Image.frombytes("P", (40, 40), idx.tobytes())
    m.putpalette([(i * 37) % 256 for i in range(768)])
    m.save(tmp_path / "m.png")
    out = load_mask(tmp_path / "m.png")
    assert out.dtype == np.uint8 and out.shape == (40, 40) and np.array_equal(out, idx)
    with pytest.raises(ImageLoadError, match="colour mask"):
        load_mask(corpus[1]["good.jpg"].path)
    with pytest.raises(ImageLoadError, match="zero-byte"):
        load_mask(corpus[1]["zero_byte.jpg"].path)


def test_folder_dataset_over_corpus_iterates_to_completion(corpus):
    root, files = corpus
    d = ds.open_dataset("folder", root)
    assert d.ids() == sorted(files) and not d.aligned
    seen = {}
    with pytest.warns(UserWarning, match="rgb16_colour_key.png: ignoring the colour key"):
        for item in d.iter():
            seen[item.id] = item
    assert sorted(seen) == sorted(files)
    for name, bf in files.items():
        item = seen[name]
        if bf.expect == "error":
            assert isinstance(item, ds.Failure) and item.reason, name
        else:
            assert isinstance(item, ds.Sample) and item.image.dtype == np.uint8, name
    fails = [i for i in seen.values() if isinstance(i, ds.Failure)]
    assert len(fails) == sum(bf.expect == "error" for bf in files.values())


def test_limit_subset_deterministic(corpus):
    root, files = corpus
    a = ds.open_dataset("folder", root, limit=5).ids()
    b = ds.open_dataset("folder", root, limit=5).ids()
    assert a == b == sorted(a) and len(a) == 5
    assert ds.open_dataset("folder", root, limit=5, subset="first").ids() == sorted(files)[:5]
    assert len(ds.open_dataset("folder", root, limit=1000)) == len(files)
    with pytest.raises(ValueError):
        ds.open_dataset("folder", root, limit=3, subset="random")


def test_registry_and_root_errors(monkeypatch):
    assert {"embedded", "folder", "lfw", "celebahq256", "celeba_id", "utkface"} <= set(ds.DATASETS.names())
    with pytest.raises(KeyError, match="known"):
        ds.open_dataset("nope")
    monkeypatch.delenv("G2FACE_DATASETS", raising=False)
    with pytest.raises(FileNotFoundError, match="G2FACE_DATASETS"):
        ds.open_dataset("lfw")


def test_utkface_malformed_names_are_failures(tmp_path):
    img = tmp_path / "utkface" / "images"
    img.mkdir(parents=True)
    arr = np.full((32, 32, 3), 120, np.uint8)
    names = [
        "25_0_1_20170101000000001.jpg.chip.jpg",
        "39_1_20170116174525125.jpg.chip.jpg",
        "abc_0_1_2017.jpg.chip.jpg",
        "30_2_1_2017.jpg.chip.jpg",
        "61_1_4_2017.jpg.chip.jpg",
    ]
    for n in names:
        Image.fromarray(arr).save(img / n, "JPEG")
    d = ds.open_dataset("utkface", tmp_path)
    out = {i.id: i for i in d.iter()}
    assert isinstance(out[names[0]], ds.Sample)
    assert out[names[0]].meta == {
        "age": 25,
        "age_band": "20-39",
        "gender": "male",
        "gender_code": 0,
        "race": "Black",
        "race_code": 1,
        "timestamp": "20170101000000001",
    }
    assert out[names[4]].meta["age_band"] == "60+" and out[names[4]].meta["race"] == "Others"
    for n in names[1:4]:
        assert isinstance(out[n], ds.Failure) and "malformed UTKFace" in out[n].reason


def test_a_file_that_cannot_be_read_keeps_its_labels(tmp_path):
    """A corrupt UTKFace file: its labels (in the file name) ride on the load error and reach the failure
    record, so the failure counts in its demographic group (found by a review: the failure had no labels)."""
    from g2face_eval.harness.prepare import DatasetSource, load_prepare

    img = tmp_path / "utkface" / "images"
    img.mkdir(parents=True)
    name = "35_1_2_20170101000000001.jpg.chip.jpg"
    (img / name).write_bytes(b"\xff\xd8\xff\xe0 truncated")
    d = ds.open_dataset("utkface", tmp_path)
    with pytest.raises(ImageLoadError) as e:
        d.load(name)
    assert e.value.meta["gender"] == "female" and e.value.meta["race"] == "Asian"
    src = DatasetSource("utkface", {"datasets_root": str(tmp_path), "dataset_options": {}})
    items, fails = load_prepare(src, None, [name])
    assert not items and fails[0][0] == name and fails[0][1].startswith("load failed: ")
    assert fails[0][2]["gender"] == "female" and fails[0][2]["age_band"] == "20-39"


def test_celeba_id_lists_image_files_only(tmp_path):
    """Hidden files (macOS ``._*``), hidden folders and folders named like images are not photos: they take no
    gallery or probe slot (found by a review: ``._a.jpg`` took a gallery slot and ``sub.jpg/`` a probe's)."""
    arr = np.full((32, 32, 3), 120, np.uint8)
    person = tmp_path / "celeba_id" / "images" / "p1"
    person.mkdir(parents=True)
    for n in ("a.jpg", "b.jpg", "c.jpg", "._a.jpg"):
        Image.fromarray(arr).save(person / n, "JPEG")
    (person / "sub.jpg").mkdir()
    hidden = tmp_path / "celeba_id" / "images" / ".trash"
    hidden.mkdir()
    Image.fromarray(arr).save(hidden / "x.jpg", "JPEG")
    d = ds.open_dataset("celeba_id", tmp_path)
    assert d.ids() == ["p1/a.jpg", "p1/b.jpg", "p1/c.jpg"]
    assert [d.load(i).meta["role"] for i in d.ids()] == ["gallery", "gallery", "probe"]


def test_age_bands():
    assert [ds.age_band(a) for a in (0, 19, 20, 39, 40, 59, 60, 116)] == [
        "0-19",
        "0-19",
        "20-39",
        "20-39",
        "40-59",
        "40-59",
        "60+",
        "60+",
    ]


def test_face_region_mask_classes():
    parsing = np.arange(19, dtype=np.uint8).reshape(1, 19)
    m = ds.face_region_mask(parsing)
    assert m.dtype == np.uint8 and set(np.flatnonzero(m[0])) == {1, 2, 3, 4, 5, 6, 7, 10, 11, 12}
    assert set(np.flatnonzero(ds.face_region_mask(parsing, include_ears=True)[0])) == {
        1,
        2,
        3,
        4,
        5,
        6,
        7,
        8,
        9,
        10,
        11,
        12,
    }


# ---------------------------------------------------------------------------------------------- embedded


def _yunet():
    import cv2

    from g2face_eval.data.embedded_build import yunet_model_path

    return cv2.FaceDetectorYN.create(str(yunet_model_path()), "", (256, 256), 0.5, 0.3, 5000)


def test_embedded_dataset():
    d = ds.open_dataset("embedded")
    assert d.aligned and len(d) >= 32
    det = _yunet()
    identities = set()
    for item in d.iter():
        assert isinstance(item, ds.Sample), item
        im = item.image
        assert im.dtype == np.uint8 and im.shape == (256, 256, 3) and min(im.shape[:2]) >= 128
        assert 0 < im.std()  # not blank
        _, faces = det.detect(np.ascontiguousarray(im[:, :, ::-1]))
        assert faces is not None and len(faces) >= 1, f"YuNet finds no face in {item.id}"
        # aligned: the best face is central and large
        x, y, w, h = faces[np.argmax(faces[:, 14]), :4]
        assert 64 < x + w / 2 < 192 and 64 < y + h / 2 < 192 and w > 70, item.id
        identities.add(item.meta["identity"])
    assert len(identities) >= 15
    assert len(ds.open_dataset("embedded", variants=False)) * 2 == len(d)
    assert ds.open_dataset("embedded", root="/nonexistent").ids() == d.ids()  # root is ignored


def test_embedded_manifest_matches_files_and_size_budget():
    folder = ds.EMBEDDED_DIR
    man = json.loads((folder / "manifest.json").read_text())
    files = sorted((folder / "faces").glob("*.jpg"))
    assert [f.name for f in files] == sorted(e["id"] for e in man["faces"])
    for e in man["faces"]:
        assert hashlib.sha256((folder / "faces" / e["id"]).read_bytes()).hexdigest() == e["sha256"], e["id"]
    assert sum(f.stat().st_size for f in files) < 3_000_000
    assert (folder / "PROVENANCE.md").is_file()


def test_embedded_build_regenerates_installed_sources_byte_identical(tmp_path):
    """Offline part of the reproducibility check: the faces from installed dependencies (scikit-image,
    matplotlib) rebuild to the committed bytes. (`embedded_build --check` does all sources, via pip.)"""
    from g2face_eval.data import embedded_build as eb

    installed = tuple(s for s in eb.SOURCES if s.kind == "installed")
    assert installed
    new = eb.build(tmp_path, tmp_path / "cache", sources=installed)
    ref = {e["id"]: e["sha256"] for e in json.loads((ds.EMBEDDED_DIR / "manifest.json").read_text())["faces"]}
    assert new["faces"]
    for e in new["faces"]:
        assert ref.get(e["id"]) == e["sha256"], e["id"]


# ---------------------------------------------------------------------------------------------- real datasets


def _sample_ok(s):
    assert isinstance(s, ds.Sample), s
    assert s.image.dtype == np.uint8 and s.image.ndim == 3 and s.image.shape[2] == 3
    assert 0 <= s.image.min() and s.image.max() <= 255 and s.image.std() > 5


def test_lfw(datasets_root):
    d = ds.open_dataset("lfw", datasets_root)
    assert len(d) == 7701 and not d.aligned
    ids = d.ids()
    assert ids == sorted(ids) and ids == ds.open_dataset("lfw", datasets_root).ids()
    assert all(i.count("/") == 1 and i.split("/")[1].startswith(i.split("/")[0]) for i in ids)
    pairs = d.pairs
    assert len(pairs) == 6000
    assert sorted({p.fold for p in pairs}) == list(range(10))
    for f in range(10):
        fp = [p for p in pairs if p.fold == f]
        assert sum(p.same for p in fp) == 300 and sum(not p.same for p in fp) == 300
    idset = set(ids)
    for p in pairs:
        assert d.id_of(p.path1) in idset and d.id_of(p.path2) in idset
        a, b = d.id_of(p.path1).split("/")[0], d.id_of(p.path2).split("/")[0]
        assert (a == b) == p.same
    p0 = pairs[0]
    path1, path2, same, fold = p0  # plain 4-tuple
    assert isinstance(same, bool) and fold == 0
    for s in ds.open_dataset("lfw", datasets_root, limit=4).iter():
        _sample_ok(s)
        assert s.image.shape == (250, 250, 3) and s.meta["identity"] == s.id.split("/")[0]


def test_celebahq256_splits_and_masks(datasets_root):
    all_ = ds.open_dataset("celebahq256", datasets_root, split="all")
    test = ds.open_dataset("celebahq256", datasets_root, split="test")
    train = ds.open_dataset("celebahq256", datasets_root, split="train")
    assert all_.aligned and len(all_) == 4000 and len(test) == 500 and len(train) == 3500
    assert set(test.ids()).isdisjoint(train.ids()) and sorted(test.ids() + train.ids()) == all_.ids()
    assert test.ids() == all_.ids()[-500:]
    assert test.ids() == ds.open_dataset("celebahq256", datasets_root, split="test").ids()
    with pytest.raises(ValueError):
        ds.open_dataset("celebahq256", datasets_root, split="val")
    d = ds.open_dataset("celebahq256", datasets_root, split="test", masks=True, limit=3)
    for s in d.iter():
        _sample_ok(s)
        assert s.image.shape == (256, 256, 3) and s.meta["split"] == "test"
        assert s.mask.shape == (256, 256) and set(np.unique(s.mask)) <= {0, 1}
        assert 0.05 < s.mask.mean() < 0.8
        assert s.meta["parsing"].max() <= 18
        assert np.array_equal(s.mask, ds.face_region_mask(s.meta["parsing"]))
    s = next(ds.open_dataset("celebahq256", datasets_root, split="train", limit=1).iter())
    assert s.mask is None and s.meta["split"] == "train"


def test_celeba_id_gallery_probe(datasets_root):
    gal = ds.open_dataset("celeba_id", datasets_root, split="gallery")
    pro = ds.open_dataset("celeba_id", datasets_root, split="probe")
    all_ = ds.open_dataset("celeba_id", datasets_root)
    assert len(all_) == 3000 and len(gal) == 2000 and len(pro) == 1000 and not all_.aligned
    assert set(gal.ids()).isdisjoint(pro.ids()) and sorted(gal.ids() + pro.ids()) == all_.ids()
    gid = {i.split("/")[0] for i in gal.ids()}
    pid = {i.split("/")[0] for i in pro.ids()}
    assert gid == pid and len(gid) == 100
    # probes are the last 10 sorted files of each identity
    by_id: dict[str, list[str]] = {}
    for i in all_.ids():
        by_id.setdefault(i.split("/")[0], []).append(i)
    assert all(set(v[-10:]) <= set(pro.ids()) for v in by_id.values())
    assert pro.ids() == ds.open_dataset("celeba_id", datasets_root, split="probe").ids()
    for s in ds.open_dataset("celeba_id", datasets_root, split="probe", limit=3).iter():
        _sample_ok(s)
        assert s.image.shape == (218, 178, 3) and s.meta["role"] == "probe"
        assert s.meta["identity"] == s.id.split("/")[0]


def test_utkface_labels(datasets_root):
    d = ds.open_dataset("utkface", datasets_root)
    assert len(d) == 2000 and not d.aligned
    labels = [ds.parse_utkface_name(i) for i in d.ids()]  # every shared file name parses
    assert {lab["gender"] for lab in labels} == {"male", "female"}
    assert {lab["race"] for lab in labels} == set(ds.UTK_RACES)
    assert {lab["age_band"] for lab in labels} == {"0-19", "20-39", "40-59", "60+"}
    assert all(0 <= lab["age"] <= 120 for lab in labels)
    sub = ds.open_dataset("utkface", datasets_root, limit=5)
    assert sub.ids() == ds.open_dataset("utkface", datasets_root, limit=5).ids()
    ages = [ds.parse_utkface_name(i)["age"] for i in sub.ids()]
    for s in sub.iter():
        _sample_ok(s)
        assert s.image.shape == (200, 200, 3) and s.meta["age"] == int(s.id.split("_")[0])
    assert len(set(ages)) > 1  # "spread" subset is not the name-sorted (age-sorted) head
