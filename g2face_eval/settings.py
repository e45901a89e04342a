"""The one defaults table, shared by the Python API and the CLI (every CLI flag's default comes from here).

An evaluation's relative folders (``results``, ``reports/out``) are relative to the working directory, not to
the package (an installed package has no repository to write into). Environment variables override the defaults:
  G2FACE_WEIGHTS_DIR   folder with user-supplied weight files (ArcFace, FID Inception, LPIPS backbones, ...)
  G2FACE_DATASETS      root holding lfw/, celebahq256/, celeba_id/, utkface/ (CI: ../shared/datasets)
  G2FACE_RESULTS_DIR   where evaluations write results and the MLflow sqlite store
  G2FACE_REPORTS_DIR   where evaluations write their reports (figures, tables, report.html)
  G2FACE_CACHE_DIR     caches (reference statistics, embeddings, anonymized outputs)
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

DEFAULTS: dict[str, object] = {
    "weights_dir": "~/.cache/g2face_eval/weights",
    "cache_dir": "~/.cache/g2face_eval/cache",
    "results_dir": "results",
    "reports_dir": "reports/out",
    "datasets_root": None,  # no default: real datasets are opt-in; the embedded default needs none
    "image_size": 256,  # every method sees faces at this size, RGB float in [0, 1]
    "batch_size": 16,
    "seed": 2024,
    "key": "g2face-eval-default-key",
    "bootstrap_samples": 1000,
    "device": "cpu",
}


def _path(env: str, default: object) -> Path:
    return Path(os.environ.get(env) or str(default)).expanduser()


def weights_dir() -> Path:
    return _path("G2FACE_WEIGHTS_DIR", DEFAULTS["weights_dir"])


def cache_dir() -> Path:
    return _path("G2FACE_CACHE_DIR", DEFAULTS["cache_dir"])


def results_dir() -> Path:
    return _path("G2FACE_RESULTS_DIR", DEFAULTS["results_dir"])


def reports_dir() -> Path:
    return _path("G2FACE_REPORTS_DIR", DEFAULTS["reports_dir"])


def datasets_root() -> Path | None:
    """The real-datasets root, or None when not configured (the embedded default needs none)."""
    env = os.environ.get("G2FACE_DATASETS")
    return Path(env).expanduser() if env else None
