"""``g2face-eval cache``: the size of the shared cache, and pruning the evaluations' part of it.

The cache folder (``$G2FACE_CACHE_DIR``, ``settings.cache_dir()``; an evaluation's ``cache_dir`` config key) holds
the evaluations' entries, which this command may prune:

* ``outputs/<namespace>/<2 hex>/<sha256>.png``: method outputs (``records.ImageCache``; namespace
  ``<method>-<method hash>_<op>``, the hash following the method's configuration and the code fingerprint, so a
  change of a method's code starts new namespaces);
* ``arrays/<namespace>/<2 hex>/<sha256>.npy``: the outputs' side arrays and the embeddings (``emb_<recognizer>``)
  (``records.ArrayCache``);
* ``realism/<extractor tag>-<40 hex>.npz``: the originals' realism features (``metrics.realism``);

and beside them other caches, which it reports but never deletes: ``training/`` (the preloaded training split),
``lfw/`` (``g2face-eval validate``), ``geometry/`` (geometry fits), ``embedded_sources/`` (the archives the
embedded faces are rebuilt from, fetched with pip), ``sha256_cache.json`` (the zoo's digest records).

    g2face-eval cache [--cache-dir DIR] [--namespaces]       sizes on disk, per folder (and namespace)
    g2face-eval cache --prune-older-than DAYS [--dry-run]    delete evaluation entries written more than DAYS ago

Only files named as the evaluations write them are counted as entries and pruned (anything else in those three
folders is left alone and reported as other files): an entry whose modification time (when it was written:
entries are written once and never modified) is older than the cutoff, and the temporary file of an entry's
write cut short by a kill (``.<entry>.<random>.tmp``) once it is an hour old (a write in flight takes
milliseconds). Then the folders the pruning emptied are removed. Deleting an entry only makes a later run
recompute it, and an evaluation running meanwhile is not harmed: an entry deleted under it reads as a miss, and
the atomic writer recreates a folder removed between its ``mkdir`` and its temporary file
(``atomic.write_via``).
"""

from __future__ import annotations

import argparse
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from g2face_eval import settings

_KEY = r"[0-9a-f]{64}"
ENTRY_NAMES = {  # folder -> (depth below it: namespace/2-hex/file or file, file name)
    "outputs": (2, re.compile(_KEY + r"\.png")),
    "arrays": (2, re.compile(_KEY + r"\.npy")),
    "realism": (0, re.compile(r"[^.][^/]*-[0-9a-f]{40}\.npz")),  # metrics.realism.cache_path
}
FOLDERS = tuple(ENTRY_NAMES)
_TEMP = re.compile(r"\.(?P<entry>.+)\.[A-Za-z0-9_]+\.tmp")  # tempfile.mkstemp(prefix=".<name>.", suffix=".tmp")
TEMP_GRACE_S = 3600.0  # a temporary file this old is debris of an interrupted write, not a write in flight


def _disk_bytes(st: os.stat_result) -> int:
    """Space the file takes on disk (allocated blocks; small files take a whole block), else its size."""
    blocks = getattr(st, "st_blocks", None)
    return blocks * 512 if blocks is not None else st.st_size


@dataclass
class Usage:
    files: int = 0
    bytes: int = 0  # on disk (``_disk_bytes``)
    newest: float = 0.0  # mtime of the newest file (0: none)

    def add(self, st: os.stat_result) -> None:
        self.files += 1
        self.bytes += _disk_bytes(st)
        self.newest = max(self.newest, st.st_mtime)


@dataclass
class Report:
    root: Path
    folders: dict[str, Usage] = field(default_factory=dict)     # evaluation entries per folder
    namespaces: dict[str, Usage] = field(default_factory=dict)  # "<folder>/<namespace>"
    temp: Usage = field(default_factory=Usage)                  # temporary files of entries' writes
    other: Usage = field(default_factory=Usage)                 # unrecognised files inside the three folders
    elsewhere: dict[str, Usage] = field(default_factory=dict)   # other top-level entries (never pruned)


def _kind(folder: str, rel: tuple[str, ...], name: str) -> str:
    """'entry', 'temp' (of an entry's write) or 'other' for a file at ``<folder>/<rel...>/<name>``."""
    depth, pattern = ENTRY_NAMES[folder]
    if len(rel) != depth or (depth and not re.fullmatch(r"[0-9a-f]{2}", rel[1])):
        return "other"
    m = _TEMP.fullmatch(name)
    entry = m.group("entry") if m else name
    if not pattern.fullmatch(entry) or (depth and entry[:2] != rel[1]):
        return "other"
    return "temp" if m else "entry"


def _walk(root: Path):
    """(folder, namespace, kind, path, stat) of every file under the three folders; symlinks are not followed
    and count as "other" files."""
    for folder in FOLDERS:
        top = root / folder
        if not top.is_dir() or top.is_symlink():
            continue
        for dirpath, _dirs, files in os.walk(top):
            rel = Path(dirpath).relative_to(top).parts
            for name in files:
                p = Path(dirpath) / name
                try:
                    st = p.lstat()
                except FileNotFoundError:  # deleted meanwhile (another prune, or a write's temporary file)
                    continue
                kind = "other" if p.is_symlink() else _kind(folder, rel, name)
                yield folder, rel[0] if rel and folder != "realism" else "", kind, p, st


def _tree_usage(path: Path) -> Usage:
    u = Usage()
    paths = [path] if not path.is_dir() or path.is_symlink() else (
        Path(d) / f for d, _dirs, files in os.walk(path) for f in files)
    for p in paths:
        try:
            u.add(p.lstat())
        except FileNotFoundError:
            pass
    return u


def usage(root: str | Path | None = None) -> Report:
    """Evaluation entries on disk per folder and per namespace, their temporary files, unrecognised files, and
    the other top-level contents of the cache folder."""
    rep = Report(Path(root).expanduser() if root is not None else settings.cache_dir())
    for folder, ns, kind, _p, st in _walk(rep.root):
        if kind == "entry":
            rep.folders.setdefault(folder, Usage()).add(st)
            if ns:
                rep.namespaces.setdefault(f"{folder}/{ns}", Usage()).add(st)
        else:
            (rep.temp if kind == "temp" else rep.other).add(st)
    if rep.root.is_dir():
        for p in sorted(rep.root.iterdir()):
            if p.name not in FOLDERS:
                rep.elsewhere[p.name + ("/" if p.is_dir() and not p.is_symlink() else "")] = _tree_usage(p)
    return rep


def prune(root: str | Path | None, older_than_days: float, *, dry_run: bool = False,
          now: float | None = None) -> dict:
    """Delete the evaluation entries written more than ``older_than_days`` ago and their writes' temporary files
    older than an hour, then the folders that left empty. Returns counts (``files``, ``bytes``, ``temp_files``,
    ``folders``); with ``dry_run`` nothing is deleted and the counts say what would be (folders: 0)."""
    if not older_than_days >= 0:  # also refuses NaN
        raise ValueError(f"older_than_days must be >= 0, got {older_than_days}")
    root = Path(root).expanduser() if root is not None else settings.cache_dir()
    now = time.time() if now is None else now
    cutoff = {"entry": now - older_than_days * 86400.0, "temp": now - TEMP_GRACE_S}
    out = {"files": 0, "bytes": 0, "temp_files": 0, "folders": 0}
    emptied: set[Path] = set()
    for _folder, _ns, kind, p, st in _walk(root):
        if kind == "other" or st.st_mtime >= cutoff[kind]:
            continue
        if not dry_run:
            try:
                p.unlink()
            except FileNotFoundError:
                continue
            emptied.update(p.parents)
        out["temp_files" if kind == "temp" else "files"] += 1
        out["bytes"] += _disk_bytes(st)
    tops = {root / f for f in FOLDERS}
    for d in sorted((d for d in emptied if any(t in d.parents for t in tops)), key=lambda d: -len(d.parts)):
        try:
            d.rmdir()  # only succeeds when empty; only folders this pruning deleted from (and their parents)
            out["folders"] += 1
        except OSError:
            pass
    return out


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KB", "MB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GB"


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


def cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="g2face-eval cache", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache-dir", help="the cache folder (default: $G2FACE_CACHE_DIR or "
                                        f"{settings.DEFAULTS['cache_dir']})")
    ap.add_argument("--prune-older-than", type=float, metavar="DAYS",
                    help="delete evaluation entries written more than DAYS days ago (0: all) and temporary "
                         "files of interrupted writes older than an hour")
    ap.add_argument("--dry-run", action="store_true", help="with --prune-older-than: only count what would go")
    ap.add_argument("--namespaces", action="store_true", help="also list every namespace")
    ns = ap.parse_args(argv)
    root = Path(ns.cache_dir).expanduser() if ns.cache_dir else settings.cache_dir()
    if ns.prune_older_than is not None:
        try:
            res = prune(root, ns.prune_older_than, dry_run=ns.dry_run)
        except ValueError as e:
            ap.error(str(e))
        verb = "would delete" if ns.dry_run else "deleted"
        print(f"{root}: {verb} {res['files']} evaluation entries written more than {ns.prune_older_than:g} days "
              f"ago and {res['temp_files']} temporary files of interrupted writes ({_size(res['bytes'])})"
              + ("" if ns.dry_run else f"; {res['folders']} emptied folders removed"))
        return 0
    rep = usage(root)
    total = sum(u.bytes for u in rep.folders.values())
    print(f"{root}: evaluation entries {_size(total)} in {sum(u.files for u in rep.folders.values())} files"
          + (f", {rep.temp.files} temporary files ({_size(rep.temp.bytes)})" if rep.temp.files else ""))
    for name, u in sorted(rep.folders.items()):
        n_ns = sum(1 for k in rep.namespaces if k.startswith(name + "/"))
        print(f"  {name + '/':<9} {_size(u.bytes):>10}  {u.files:>8} files" + (f"  {n_ns} namespaces" if n_ns else "")
              + f"  newest {_when(u.newest)}")
    if ns.namespaces:
        for name, u in sorted(rep.namespaces.items()):
            print(f"    {name:<60} {_size(u.bytes):>10}  {u.files:>7} files  newest {_when(u.newest)}")
    if rep.other.files:
        print(f"  other files in those folders (not pruned): {rep.other.files} ({_size(rep.other.bytes)})")
    if rep.elsewhere:
        print("  other contents (never pruned): "
              + ", ".join(f"{k} {_size(u.bytes)}" for k, u in rep.elsewhere.items()))
    return 0
