"""Helpers shared by the evaluation tests (``tests/`` is on sys.path): a seconds-long evaluation config and a
second process holding a run folder's lock."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cheap_config(tmp: Path, cache: Path, **kw) -> dict:
    """A seconds-long evaluation: one cheap method on 2 embedded faces, SFace only, no detectors, mesh or Fréchet
    features; results, reports and cache under ``tmp`` / ``cache``; ``kw`` overrides."""
    cfg = {
        "methods": ["blur_s1"],
        "datasets": ["embedded"],
        "limit": 2,
        "batch_size": 2,
        "recognizers": ["sface"],
        "detectors": [],
        "face_mesh": False,
        "feature_extractors": [],
        "bootstrap_samples": 50,
        "latency_repeats": 1,
        "samples_per_grid": 1,
        "results_dir": str(tmp / "results"),
        "reports_dir": str(tmp / "reports"),
        "cache_dir": str(cache),
    }
    cfg.update(kw)
    return cfg


@contextmanager
def run_lock_held(run_dir: Path) -> Iterator[int]:
    """Another process holding ``run_dir``'s lock (``records.acquire_run_lock``) while the block runs; yields its
    pid. The lock is free again after the block (the holder exits)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from g2face_eval.harness.records import acquire_run_lock as a; "
         "a(sys.argv[1]); print('ready', flush=True); sys.stdin.read()", str(run_dir)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        yield holder.pid
    finally:
        holder.stdin.close()
        holder.wait(30)
