"""glibc malloc settings for the CLI's long CPU jobs (applied once by ``g2face_eval.cli.main``).

Torch on CPU allocates and frees large short-lived tensors (activation maps of tens of MB) on every call. With
glibc's defaults each block above the (dynamic, at most 32 MB) mmap threshold is a fresh ``mmap``: its pages
fault in and are zeroed by the kernel again on every call. Measured on this project's 2-core machine (BENCH.md):
the 200-face CPU-target evaluation at one commit took 7 min 32 s with 99 of 765 CPU-seconds in the kernel
(27.9 M minor page faults), and 6 min 24 s with 22 of 692 (0.87 M faults) with these settings: blocks up to
1 GiB come from the heap and up to 1 GiB of its free top is kept. Peak memory: 2.28 vs 2.08 GB.

Opt out with ``G2FACE_MALLOC_TUNING=0``. Elsewhere than glibc (macOS, musl) nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>
MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap
TRIM_THRESHOLD = 1 << 30  # up to 1 GiB of free heap top is kept for reuse

_applied: dict | None = None


def tune_malloc() -> dict:
    """Apply the settings once per process; returns what was applied (recorded with an evaluation's
    environment)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = {"malloc_tuning": False}
    if os.environ.get("G2FACE_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return _applied
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return _applied
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _applied = {"malloc_tuning": bool(ok), "mmap_threshold": MMAP_THRESHOLD, "trim_threshold": TRIM_THRESHOLD}
    return _applied


def applied() -> dict:
    """What ``tune_malloc`` applied in this process ({"malloc_tuning": False} when it never ran)."""
    return dict(_applied or {"malloc_tuning": False})
