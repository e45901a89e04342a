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
            _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        with contextlib.suppress(OSError):  # directories cannot be opened for fsync on every platform
            _fsync(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    return path


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
