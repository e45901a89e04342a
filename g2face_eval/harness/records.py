"""On-disk state of an evaluation: atomic writes, the image/embedding cache, and per-batch records.

Layout of ``<results_dir>/<run>/``::

    config.json                      the resolved configuration
    batches/<method>/<dataset>/<batch key>.parquet   per-image records of one completed batch
    batches/<method>/<dataset>/<batch key>.npz       per-image feature vectors of that batch (realism)
    prepared/<dataset>/<chunk key>.{parquet,npz}     a chunk's prepared faces and reference data (prepare.py)
    records.parquet, records.csv     all per-image records (written at the end)
    .lock                            held (``flock``) by the evaluation working on the run (``RunLock``)
    aggregate.parquet, aggregate.csv aggregate table with 95% CIs (Wilson for rates, bootstrap otherwise)
    set_metrics.json, latency.json, environment.json, samples/<method>__<dataset>.png

The cache (``settings.cache_dir()``, shared between runs) keys anonymized images by (method hash: its configuration
and the fingerprint of the methods' code, ``config.code_fingerprint``; dataset, image id, key digest, input pixels
and mask) and embeddings by (recognizer, dataset, image id, content digest). Only methods with
``Anonymizer.cache_outputs`` (the learned ones) keep their outputs there; the closed-form baselines recompute.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd

from g2face_eval import atomic


def atomic_write_json(path: Path, obj) -> None:
    atomic.write_json(path, obj)


def write_table(df: pd.DataFrame, path: Path, *, durable: bool = False) -> None:
    """parquet (or csv by suffix), atomically (``durable``: fsync'd, see ``atomic.write_via``)."""
    if Path(path).suffix == ".csv":
        atomic.write_via(path, lambda t: df.to_csv(t, index=False), durable=durable)
    else:
        atomic.write_via(path, lambda t: df.to_parquet(t, index=False), durable=durable)


def write_npz(path: Path, arrays: dict[str, np.ndarray], *, durable: bool = False) -> None:
    def w(t):
        with open(t, "wb") as f:
            np.savez(f, **arrays)

    atomic.write_via(path, w, durable=durable)


def safe_name(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


def digest(*parts: bytes | str) -> str:
    """sha256 hex of the parts, each followed by a NUL. A str is hashed as UTF-8; ``surrogateescape`` keeps a
    str that is not valid Unicode (a POSIX file name with surrogate escapes) from crashing a run and leaves the
    digest of every valid str unchanged."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode("utf-8", "surrogateescape"))
        h.update(b"\x00")
    return h.hexdigest()


class ImageCache:
    """uint8 RGB images as lossless PNG files keyed by a digest (atomic writes)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, namespace: str, key: str) -> Path:
        return self.root / safe_name(namespace) / key[:2] / f"{key}.png"

    def get(self, namespace: str, key: str) -> np.ndarray | None:
        p = self._path(namespace, key)
        if not p.exists():
            return None
        import cv2

        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:  # unreadable (should not happen with atomic writes): recompute
            return None
        return np.ascontiguousarray(img[:, :, ::-1])

    def put(self, namespace: str, key: str, image: np.ndarray) -> None:
        import cv2

        ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))
        if not ok:
            raise RuntimeError("PNG encoding failed")
        atomic.write_bytes(self._path(namespace, key), buf.tobytes())


class ArrayCache:
    """Small float arrays (embeddings) as .npy keyed by a digest (atomic writes)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, namespace: str, key: str) -> Path:
        return self.root / safe_name(namespace) / key[:2] / f"{key}.npy"

    def get(self, namespace: str, key: str) -> np.ndarray | None:
        p = self._path(namespace, key)
        if not p.exists():
            return None
        try:
            return np.load(p, allow_pickle=False)
        except OSError:  # unreadable now (a vanished file, an I/O error): a miss, the entry left alone
            return None
        except (EOFError, ValueError, pickle.UnpicklingError):  # damaged content (an empty file after a power
            with contextlib.suppress(OSError):                 # loss: EOFError) is a miss, removed, and written
                p.unlink()                                     # again by the caller
            return None

    def put(self, namespace: str, key: str, arr: np.ndarray) -> None:
        def w(t):
            with open(t, "wb") as f:
                np.save(f, np.asarray(arr), allow_pickle=False)

        atomic.write_via(self._path(namespace, key), w)


class RecordStore:
    """Completed units of work of one run, each a records table (``.parquet``) plus named arrays (``.npz``)
    under ``<run>/<folder>/<part>/.../<key>``; a unit present here is skipped on rerun. Subclasses name the
    folder and the parts: ``BatchStore`` (method, dataset, batch key), ``prepare.PrepStore`` (dataset, chunk
    key)."""

    folder = "records"
    crash_prefix = "records"  # crashpoints hit: <prefix>_npz, <prefix>_saved

    def __init__(self, run_dir: Path, sweep: bool | None = None) -> None:
        self.root = Path(run_dir) / self.folder
        # temporary files of writes cut short by a kill (atomic writes never expose them): swept on resume, and
        # only by the process holding the run's lock (``sweep=None``: whether it does) -- another process's
        # in-flight temporary files are not debris
        if sweep is None:
            sweep = holds_run_lock(run_dir)
        if sweep and self.root.is_dir():
            for t in self.root.rglob(".*.tmp"):
                try:
                    t.unlink()
                except OSError:
                    pass

    def _base(self, parts: tuple[str, ...]) -> Path:
        *folders, key = parts
        return self.root.joinpath(*(safe_name(f) for f in folders), key)

    def done(self, *parts: str) -> bool:
        b = self._base(parts)
        return b.with_suffix(".parquet").exists() and b.with_suffix(".npz").exists()

    def save(self, *parts: str, records: pd.DataFrame, arrays: dict[str, np.ndarray]) -> None:
        from g2face_eval import crashpoints

        b = self._base(parts)
        # arrays first: .parquet marks completion; both fsync'd, so a power loss cannot leave an empty
        # .parquet that marks a unit done
        write_npz(b.with_suffix(".npz"), arrays, durable=True)
        crashpoints.hit(f"{self.crash_prefix}_npz")
        write_table(records, b.with_suffix(".parquet"), durable=True)
        crashpoints.hit(f"{self.crash_prefix}_saved")

    def load(self, *parts: str) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
        """The records and arrays of a unit ``done`` reports. A unit that cannot be read (damaged on disk, or
        edited) is moved aside (``*.corrupt``) and ``CorruptRecordError`` raised: the unit is no longer done, so
        rerunning the command computes it again."""
        b = self._base(parts)
        try:
            df = pd.read_parquet(b.with_suffix(".parquet"))
            with np.load(b.with_suffix(".npz"), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (MemoryError, ImportError):  # the machine's or the environment's problem, not the unit's
            raise
        except Exception as e:  # noqa: BLE001 - what the decoders raise on bad content (ArrowInvalid, BadZipFile...)
            if isinstance(e, OSError) and e.errno is not None:  # the file system's error (EACCES, EIO, ENOENT...):
                raise  # an environment error for the caller, the unit is left in place
            moved = [p.name for p in (b.with_suffix(".parquet"), b.with_suffix(".npz")) if _move_aside(p)]
            raise CorruptRecordError(
                f"the persisted unit {b} ({self.folder}) cannot be read ({type(e).__name__}: {e}); "
                f"moved aside as {', '.join(m + '.corrupt' for m in moved) or 'nothing'} -- rerun the same command "
                "to compute it again") from e
        return df, arrays


class CorruptRecordError(OSError):
    """A persisted unit of a run (``RecordStore.load``) cannot be read; it was moved aside, so a rerun recomputes
    it."""


def _move_aside(p: Path) -> bool:
    try:
        os.replace(p, p.with_name(p.name + ".corrupt"))
        return True
    except OSError:
        return False


class BatchStore(RecordStore):
    """Completed (method, dataset, batch) records of one run and the outputs' feature vectors."""

    folder = "batches"
    crash_prefix = "batch"

    @staticmethod
    def batch_key(ids: list[str]) -> str:
        """Digest of the batch's identity: callers prefix the config and method hashes to the image ids."""
        return digest(*ids)[:16]


# ------------------------------------------------------------------------------------------------------------
# the run's lock
# ------------------------------------------------------------------------------------------------------------
LOCK_NAME = ".lock"
_HELD: dict[Path, int] = {}  # resolved run folder -> the descriptor holding its flock (this process)


class RunLockedError(RuntimeError):
    """Another process holds the run folder's lock (another ``evaluate`` of the same run is in progress)."""


def _lock_key(run_dir: Path) -> Path:
    return Path(run_dir).expanduser().resolve()


def holds_run_lock(run_dir: Path) -> bool:
    """Whether this process holds ``run_dir``'s lock."""
    return _lock_key(run_dir) in _HELD


def acquire_run_lock(run_dir: Path) -> bool:
    """Take the exclusive lock of ``run_dir`` (``flock`` on ``<run_dir>/.lock``, never waiting): two processes
    on one run would compute the same batches twice, race on its files and sweep each other's temporary files.
    Re-entrant within a process: returns True when this call took the lock (the caller releases it), False when
    this process already held it. Raises ``RunLockedError`` naming the holder (pid, host) when another process
    holds it. The kernel releases the lock when the holder exits, also when it is killed (``kill -9``)."""
    key = _lock_key(run_dir)
    if key in _HELD:
        return False
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (documented in docs/RELIABILITY.md)
        return False
    key.mkdir(parents=True, exist_ok=True)
    fd = os.open(key / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 512, 0).decode("utf-8", "replace").split()
        os.close(fd)
        pid = holder[0] if holder else "unknown"
        host = f" on {holder[1]}" if len(holder) > 1 else ""
        since = f" since {holder[2]}" if len(holder) > 2 else ""
        raise RunLockedError(
            f"run folder {key} is in use by another evaluation (pid {pid}{host}{since}): wait for it to finish or "
            "stop it, then rerun (the lock is released when that process exits, also when it is killed)") from None
    except BaseException:
        os.close(fd)
        raise
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()} {stamp}\n".encode(), 0)
    _HELD[key] = fd
    return True


def release_run_lock(run_dir: Path) -> None:
    """Release this process's lock of ``run_dir`` (no-op when it holds none)."""
    fd = _HELD.pop(_lock_key(run_dir), None)
    if fd is not None:
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the descriptor releases the flock
