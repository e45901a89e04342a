"""The shared defaults table, used by the Python API and the CLI: the folders, image size, batch size, seed, key,
bootstrap samples and each command's device (``device`` for evaluate, ``train_device`` for train, ``bench_device``
for bench) come from here (``training.loop.TrainConfig`` takes its ``seed`` and ``device`` defaults from here, and
so do ``train`` and ``train-baseline``). Settings that belong to one command keep their defaults with it: training
hyper-parameters in ``training.loop.TrainConfig``, the evaluation's method/dataset/metric choices in
``harness.config.EVAL_DEFAULTS``, benchmark grids in ``bench.DEFAULTS``, the recognizers ``validate`` checks in
``oracles.recognizers.DEFAULT_RECOGNIZERS``.

Relative folders (``results``, ``reports/out``) are relative to the working directory, not to the package (an
installed package has no repository to write into). Environment variables override the defaults:
  G2FACE_WEIGHTS_DIR   folder with user-supplied weight files (ArcFace, FID Inception, LPIPS backbones, ...)
  G2FACE_DATASETS      root holding lfw/, celebahq256/, celeba_id/, utkface/ (no default for evaluate and
                       validate; training, ``nox -s validate`` and the tests fall back to ../shared/datasets
                       beside the repository, ``shared_datasets_fallback()``)
  G2FACE_RESULTS_DIR   where evaluations write results and the MLflow sqlite store
  G2FACE_REPORTS_DIR   where evaluations write their reports (figures, tables, report.html)
  G2FACE_CACHE_DIR     caches (realism reference features, embeddings, learned methods' outputs; `g2face-eval cache`)
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
    "device": "cpu",  # evaluate
    "train_device": "auto",  # train (cuda when available, else cpu)
    "bench_device": "auto",  # bench (cuda when available, else cpu)
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


def shared_datasets_fallback() -> Path:
    """``<repo>/../shared/datasets``: where training (and ``nox -s validate``, the tests) look for the datasets when
    neither an explicit root nor ``$G2FACE_DATASETS`` is given; evaluate and validate have no such fallback."""
    return REPO_ROOT.parent / "shared" / "datasets"
