"""``g2face-eval cache``: the size of the shared cache, and pruning it.

The cache (``$G2FACE_CACHE_DIR``, ``settings.cache_dir()``; an evaluation's ``cache_dir`` config key) holds, in
``outputs/`` and ``arrays/``, one folder per method namespace (``<method>-<method hash>_<op>``; the hash follows
the method's configuration and code, so every code change starts new namespaces) and per recognizer
(``emb_<recognizer>``), and in ``realism/`` the originals' realism features. Nothing in it is ever needed:
deleting any entry only makes a later run recompute it. Nothing prunes it automatically.

    g2face-eval cache [--cache-dir DIR]                       size per folder and per namespace
    g2face-eval cache --prune-older-than DAYS [--dry-run]     delete entries written more than DAYS ago

Pruning deletes cache files whose modification time (when they were written: entries are written once and
never modified) is older than the cutoff, and the temporary files of writes cut short by a kill (``.*.tmp``)
once they are an hour old (a write in flight takes milliseconds), in those three folders only (the zoo's
digest records, ``sha256_cache.json`` beside them, stay); then it removes the folders that it left empty. An
evaluation running at the same time is not harmed: a cache entry deleted under it reads as a miss and is
recomputed, and the atomic writer recreates a folder removed between its ``mkdir`` and its temporary file
(``atomic.write_via``).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from g2face_eval import settings

FOLDERS = ("outputs", "arrays", "realism")  # what usage() counts and prune() may delete from
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

    def add(self, size: int, mtime: float) -> None:
        self.files += 1
        self.bytes += size
        self.newest = max(self.newest, mtime)


@dataclass
class Report:
    root: Path
    folders: dict[str, Usage] = field(default_factory=dict)
    namespaces: dict[str, Usage] = field(default_factory=dict)  # "<folder>/<namespace>"
    temp_files: int = 0


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _walk(root: Path):
    """(folder, namespace, path, stat) of every file under the cache's folders (namespace "" in realism/)."""
    for folder in FOLDERS:
        top = root / folder
        if not top.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(top):
            rel = Path(dirpath).relative_to(top).parts
            ns = rel[0] if rel and folder != "realism" else ""
            for name in files:
                p = Path(dirpath) / name
                try:
                    st = p.stat()
                except FileNotFoundError:  # deleted meanwhile (another prune, or a write's temporary file)
                    continue
                yield folder, ns, p, st


def usage(root: str | Path | None = None) -> Report:
    """Files and bytes on disk per folder (``outputs``, ``arrays``, ``realism``) and per namespace."""
    rep = Report(Path(root).expanduser() if root is not None else settings.cache_dir())
    for folder, ns, p, st in _walk(rep.root):
        if _is_temp(p.name):
            rep.temp_files += 1
            continue
        rep.folders.setdefault(folder, Usage()).add(_disk_bytes(st), st.st_mtime)
        if ns:
            rep.namespaces.setdefault(f"{folder}/{ns}", Usage()).add(_disk_bytes(st), st.st_mtime)
    return rep


def prune(root: str | Path | None, older_than_days: float, *, dry_run: bool = False,
          now: float | None = None) -> dict:
    """Delete cache entries written more than ``older_than_days`` ago and temporary files older than an hour;
    then the folders left empty. Returns counts (``files``, ``bytes``, ``temp_files``, ``folders``); with
    ``dry_run`` nothing is deleted and the counts say what would be."""
    if not older_than_days >= 0:  # also refuses NaN
        raise ValueError(f"older_than_days must be >= 0, got {older_than_days}")
    root = Path(root).expanduser() if root is not None else settings.cache_dir()
    now = time.time() if now is None else now
    cutoff, temp_cutoff = now - older_than_days * 86400.0, now - TEMP_GRACE_S
    out = {"files": 0, "bytes": 0, "temp_files": 0, "folders": 0}
    for _folder, _ns, p, st in _walk(root):
        temp = _is_temp(p.name)
        if st.st_mtime >= (temp_cutoff if temp else cutoff):
            continue
        if not dry_run:
            try:
                p.unlink()
            except FileNotFoundError:
                continue
        out["temp_files" if temp else "files"] += 1
        out["bytes"] += _disk_bytes(st)
    if not dry_run:
        for folder in FOLDERS:
            top = root / folder
            if not top.is_dir():
                continue
            for dirpath, _dirs, _files in os.walk(top, topdown=False):
                if Path(dirpath) == top:
                    continue
                try:
                    os.rmdir(dirpath)  # only succeeds when empty
                    out["folders"] += 1
                except OSError:
                    pass
    return out


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


def cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="g2face-eval cache", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache-dir", help="the cache folder (default: $G2FACE_CACHE_DIR or "
                                        f"{settings.DEFAULTS['cache_dir']})")
    ap.add_argument("--prune-older-than", type=float, metavar="DAYS",
                    help="delete entries written more than DAYS days ago (0: all) and stale temporary files")
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
        print(f"{root}: {verb} {res['files']} entries and {res['temp_files']} temporary files "
              f"({_size(res['bytes'])}) written more than {ns.prune_older_than:g} days ago"
              + ("" if ns.dry_run else f"; {res['folders']} empty folders removed"))
        return 0
    rep = usage(root)
    if not rep.folders and not rep.temp_files:
        print(f"{root}: empty")
        return 0
    total = sum(u.bytes for u in rep.folders.values())
    print(f"{root}: {_size(total)} in {sum(u.files for u in rep.folders.values())} files"
          + (f", {rep.temp_files} temporary files" if rep.temp_files else ""))
    for name, u in sorted(rep.folders.items()):
        n_ns = sum(1 for k in rep.namespaces if k.startswith(name + "/"))
        print(f"  {name:<8} {_size(u.bytes):>10}  {u.files:>8} files" + (f"  {n_ns} namespaces" if n_ns else "")
              + f"  newest {_when(u.newest)}")
    if ns.namespaces:
        for name, u in sorted(rep.namespaces.items()):
            print(f"    {name:<60} {_size(u.bytes):>10}  {u.files:>7} files  newest {_when(u.newest)}")
    return 0
