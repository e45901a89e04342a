"""Atomic file writes, the one implementation: write a temporary file in the target's folder, then
``os.replace`` it onto the target, so readers (and a rerun after ``kill -9``) see either the old file or the
complete new one, never a partial write. Files get ordinary 0644 permissions."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_via(path: str | Path, writer: Callable[[str], None], *, durable: bool = False) -> Path:
    """Call ``writer(tmp_path)`` to produce the file, then move it onto ``path``. ``durable``: also flush the
    file and the rename to the disk (``fsync``), so that a power loss cannot leave an empty or partial file
    under ``path`` either; for files that mark work as done (the run stores), not for caches."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except FileNotFoundError:  # the (empty) folder was removed meanwhile, e.g. by `g2face-eval cache` pruning
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, 0o644)
        if durable:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def fsync_file(path: str | Path) -> None:
    """A file's content to the disk."""
    _fsync(path, os.O_RDONLY)


def fsync_dir(path: str | Path) -> None:
    """A directory's entries (a rename into it) to the disk, where the platform lets a directory be opened."""
    with contextlib.suppress(OSError):
        _fsync(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync(path: str | Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str | Path, data: bytes) -> Path:
    return write_via(path, lambda t: Path(t).write_bytes(data))


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: str | Path, obj, **dump_kw) -> Path:
    kw = {"indent": 2, "sort_keys": True, "default": str, **dump_kw}
    return write_text(path, json.dumps(obj, **kw))
