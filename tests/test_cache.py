"""``g2face-eval cache``: usage and pruning of the shared cache, on entries written by the harness's own cache
classes; and the atomic writer surviving a folder pruned under it."""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import pytest

from g2face_eval import atomic
from g2face_eval.cli import main
from g2face_eval.harness import cache as K
from g2face_eval.harness.records import ArrayCache, ImageCache, digest

DAY = 86400.0


def _age(path, days: float, now: float) -> None:
    t = now - days * DAY
    os.utime(path, (t, t))


@pytest.fixture
def filled(tmp_path):
    """A cache with old (40 days) and new entries in outputs/, arrays/ and realism/, temporary files of an
    interrupted write (2 hours old) and of a write in flight (fresh), and the zoo's digest records (old)."""
    now = time.time()
    root = tmp_path / "cache"
    img = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    images, arrays = ImageCache(root / "outputs"), ArrayCache(root / "arrays")
    old_key, new_key = digest("old"), digest("new")
    for key in (old_key, new_key):
        images.put("blur-abc_anonymize", key, img)
        arrays.put("emb_sface", key, np.ones(4, np.float32))
    (root / "realism").mkdir()
    for key in (old_key, new_key):  # named as metrics.realism.cache_path names them: <extractor tag>-<40 hex>.npz
        atomic.write_bytes(root / "realism" / f"effnet_lite0-c15b7e5f-{key[:40]}.npz", b"x" * 100)
    for p in root.rglob("*"):
        if p.is_file() and old_key[:40] in p.name:
            _age(p, 40, now)
    # not evaluation entries, all old: a user's file inside outputs/, a symlink there to a file outside the cache,
    # and another cache beside the three folders (the training split's preload)
    (root / "outputs" / "notes.txt").write_text("mine")
    outside = tmp_path / "precious.png"
    outside.write_bytes(b"keep")
    (root / "outputs" / "blur-abc_anonymize" / old_key[:2] / ("0" * 64 + ".png")).symlink_to(outside)
    (root / "training").mkdir()
    (root / "training" / "celebahq256_train.npy").write_bytes(b"y" * 5000)
    for p in (root / "outputs" / "notes.txt", outside, root / "training" / "celebahq256_train.npy"):
        _age(p, 400, now)
    stale_tmp = root / "outputs" / "blur-abc_anonymize" / new_key[:2] / f".{new_key}.png.abc.tmp"
    fresh_tmp = root / "arrays" / "emb_sface" / new_key[:2] / f".{new_key}.npy.def.tmp"
    stale_tmp.write_bytes(b"partial")
    fresh_tmp.write_bytes(b"partial")
    _age(stale_tmp, 2 / 24, now)
    atomic.write_text(root / "sha256_cache.json", "{}")
    _age(root / "sha256_cache.json", 400, now)
    return dict(root=root, now=now, old=old_key, new=new_key, img=img, stale_tmp=stale_tmp, fresh_tmp=fresh_tmp,
                outside=outside)


def test_usage_counts_every_folder_and_namespace(filled):
    rep = K.usage(filled["root"])
    assert {k: u.files for k, u in rep.folders.items()} == {"outputs": 2, "arrays": 2, "realism": 2}
    assert set(rep.namespaces) == {"outputs/blur-abc_anonymize", "arrays/emb_sface"}
    assert rep.namespaces["arrays/emb_sface"].files == 2 and rep.temp.files == 2
    assert rep.folders["realism"].bytes >= 200  # on disk: whole blocks
    assert rep.folders["outputs"].newest > filled["now"] - DAY
    assert rep.other.files == 2  # the user's file and the symlink
    assert set(rep.elsewhere) == {"training/", "sha256_cache.json"} and rep.elsewhere["training/"].bytes >= 5000


def test_prune_deletes_what_is_older_than_the_cutoff_and_stale_temporary_files(filled):
    root, now = filled["root"], filled["now"]
    before = sorted(p for p in root.rglob("*") if p.is_file())
    dry = K.prune(root, 30, dry_run=True, now=now)
    assert dry == {"files": 3, "bytes": dry["bytes"], "temp_files": 1, "folders": 0} and dry["bytes"] > 100
    assert sorted(p for p in root.rglob("*") if p.is_file()) == before

    res = K.prune(root, 30, now=now)
    assert {k: res[k] for k in ("files", "temp_files", "bytes")} == {k: dry[k] for k in ("files", "temp_files",
                                                                                         "bytes")}
    images, arrays = ImageCache(root / "outputs"), ArrayCache(root / "arrays")
    assert images.get("blur-abc_anonymize", filled["old"]) is None  # a pruned entry reads as a miss
    assert arrays.get("emb_sface", filled["old"]) is None
    assert np.array_equal(images.get("blur-abc_anonymize", filled["new"]), filled["img"])
    assert np.array_equal(arrays.get("emb_sface", filled["new"]), np.ones(4, np.float32))
    assert [p.name for p in (root / "realism").iterdir()] == [f"effnet_lite0-c15b7e5f-{filled['new'][:40]}.npz"]
    assert not filled["stale_tmp"].exists() and filled["fresh_tmp"].exists()  # a write in flight is left alone
    assert (root / "sha256_cache.json").exists()
    # what is not an evaluation entry stays, however old: a user's file, a symlink (and its target), other caches
    assert (root / "outputs" / "notes.txt").exists() and (root / "training" / "celebahq256_train.npy").exists()
    assert filled["outside"].read_bytes() == b"keep"
    # the old entries' two-character folder in arrays/ (not the new entries') is gone; the one in outputs/ keeps
    # the symlink; no folder is left empty
    assert filled["old"][:2] != filled["new"][:2] and res["folders"] == 1
    assert not (root / "arrays" / "emb_sface" / filled["old"][:2]).exists()
    assert (root / "outputs" / "blur-abc_anonymize" / filled["old"][:2]).is_dir()
    assert all(any(d.iterdir()) for d in root.rglob("*") if d.is_dir())

    assert K.prune(root, 0, now=now + 1)["files"] == 3  # 0 days: every entry
    left = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}
    assert left == {"sha256_cache.json", "outputs/notes.txt", "training/celebahq256_train.npy",
                    filled["fresh_tmp"].relative_to(root).as_posix(),
                    f"outputs/blur-abc_anonymize/{filled['old'][:2]}/{'0' * 64}.png"}
    with pytest.raises(ValueError):
        K.prune(root, -1)
    with pytest.raises(ValueError):
        K.prune(root, float("nan"))


def test_cache_command(filled, capsys):
    root = str(filled["root"])
    assert main(["cache", "--cache-dir", root, "--namespaces"]) == 0
    out = capsys.readouterr().out
    assert "in 6 files, 2 temporary files" in out and "outputs/blur-abc_anonymize" in out and "1 namespaces" in out
    assert "other files in those folders (not pruned): 2" in out and "never pruned): sha256_cache.json" in out
    assert main(["cache", "--cache-dir", root, "--prune-older-than", "30", "--dry-run"]) == 0
    assert "would delete 3 evaluation entries written more than 30 days ago and 1 temporary" in capsys.readouterr().out
    assert len(list(filled["root"].rglob("*.png"))) == 3
    assert main(["cache", "--cache-dir", root, "--prune-older-than", "30"]) == 0
    assert "deleted 3 evaluation entries" in capsys.readouterr().out
    assert len(list(filled["root"].rglob("*.png"))) == 2  # the new entry and the symlink
    with pytest.raises(SystemExit) as e:
        main(["cache", "--cache-dir", root, "--prune-older-than", "-2"])
    assert e.value.code == 2
    assert main(["cache", "--cache-dir", str(filled["root"] / "none")]) == 0
    assert "evaluation entries 0 B in 0 files" in capsys.readouterr().out


def test_atomic_write_recreates_a_folder_removed_under_it(tmp_path, monkeypatch):
    """Pruning removes a folder it emptied just after a writer's ``mkdir``: the write still lands."""
    target = tmp_path / "ns" / "ab" / "key.npy"
    real = tempfile.mkstemp
    calls = []

    def racing_mkstemp(*a, **kw):
        calls.append(1)
        if len(calls) == 1:
            os.rmdir(target.parent)  # what a concurrent prune does to an emptied folder
        return real(*a, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", racing_mkstemp)
    atomic.write_bytes(target, b"data")
    assert target.read_bytes() == b"data" and len(calls) == 2
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("damage", [b"", b"\x93NUMPY junk", b"not an array at all"])
def test_a_damaged_array_entry_is_a_miss_and_is_removed(tmp_path, damage):
    """Cache writes are not fsynced: a power loss can leave an empty entry. np.load raises EOFError on it, which
    the cache did not catch, so every image of the batch became a permanent 'method error' (found by a review).
    Any unreadable entry is a miss, removed, and the next put writes it again."""
    c = ArrayCache(tmp_path)
    key = digest("k")
    c.put("emb_sface", key, np.arange(4, dtype=np.float32))
    p = c._path("emb_sface", key)
    p.write_bytes(damage)
    assert c.get("emb_sface", key) is None and not p.exists()
    c.put("emb_sface", key, np.arange(4, dtype=np.float32))
    assert np.array_equal(c.get("emb_sface", key), np.arange(4, dtype=np.float32))
