"""Evaluation configuration: one dict built from ``settings.DEFAULTS`` (+ the evaluation keys below), then a
config file (TOML via tomllib; JSON; YAML when PyYAML is installed), then command-line flags.

Config file layout (TOML)::

    methods = ["blur_s4", "pixelate_16"]         # omitted: methods.default_methods()
    datasets = ["celebahq256", "celeba_id"]      # names in data.datasets.DATASETS
    limit = 100                                  # images per dataset (probes for celeba_id); 0/absent: all
    batch_size = 16
    [dataset_options.celebahq256]                # keyword arguments of datasets.open_dataset
    split = "test"
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from g2face_eval import settings

# Evaluation keys that are not (yet) in settings.DEFAULTS. Shared keys (batch_size, seed, key, device,
# bootstrap_samples, image_size, results_dir, datasets_root) always come from settings.DEFAULTS.
EVAL_DEFAULTS: dict[str, Any] = {
    "methods": None,  # None: methods.default_methods()
    "method_options": {},  # name -> factory keyword overrides
    "datasets": ["embedded"],
    "dataset_options": {},  # name -> open_dataset keyword arguments
    "limit": None,  # per dataset; None: all images
    "recognizers": None,  # None: recognizers.DEFAULT_RECOGNIZERS that are available
    # detection-rate metric (unavailable ones are skipped).
    # MTCNN is opt-in: on CPU it costs seconds per image.
    "detectors": ["yunet", "dlib_hog"],
    "face_mesh": True,  # attribute metrics (pose, expression, landmarks) from the face mesh; false: skipped
    "feature_extractors": None,  # realism feature extractors; None: every available one; []: none
    "gallery_per_identity": 5,  # celeba_id: gallery photos per identity (other photos than the probe)
    "run_name": None,  # None: derived from the config hash (a rerun resumes)
    "samples_per_grid": 6,  # qualitative grid rows
    "latency_repeats": 3,
    "fd_min_images": 2,
}

SHARED_KEYS = (
    "image_size",
    "batch_size",
    "seed",
    "key",
    "bootstrap_samples",
    "device",
    "results_dir",
    "datasets_root",
    "cache_dir",
    "reports_dir",
)

# Keys that do not change any result: excluded from the config hash (so a rerun with another batch size,
# device or output folder resumes the same run).
NON_RESULT_KEYS = (
    "batch_size",
    "device",
    "results_dir",
    "datasets_root",
    "cache_dir",
    "reports_dir",
    "run_name",
    "samples_per_grid",
    "latency_repeats",
)


def defaults() -> dict[str, Any]:
    d = {k: copy.deepcopy(settings.DEFAULTS.get(k)) for k in SHARED_KEYS}
    for k, v in EVAL_DEFAULTS.items():
        d[k] = copy.deepcopy(settings.DEFAULTS.get(k, v))
    # environment overrides of folders
    d["results_dir"] = str(settings.results_dir())
    d["cache_dir"] = str(settings.cache_dir())
    rep = Path(str(d.get("reports_dir") or "reports/out")).expanduser()
    d["reports_dir"] = str(rep if rep.is_absolute() else settings.REPO_ROOT / rep)
    root = settings.datasets_root()
    if root is not None and d.get("datasets_root") is None:
        d["datasets_root"] = str(root)
    return d


def load_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    text = p.read_text()
    if p.suffix == ".toml":
        import tomllib

        data = tomllib.loads(text)
    elif p.suffix == ".json":
        data = json.loads(text)
    elif p.suffix in (".yaml", ".yml"):
        import yaml  # optional

        data = yaml.safe_load(text) or {}
    else:
        raise ValueError(f"config {p}: unknown format {p.suffix!r} (use .toml, .json or .yaml)")
    if "evaluate" in data and isinstance(data["evaluate"], dict):  # allow an [evaluate] table
        data = {**{k: v for k, v in data.items() if k != "evaluate"}, **data["evaluate"]}
    unknown = set(data) - set(defaults())
    if unknown:
        raise ValueError(f"config {p}: unknown keys {sorted(unknown)}; known: {sorted(defaults())}")
    return data


def make_config(overrides: dict[str, Any] | None = None, file: str | Path | None = None) -> dict[str, Any]:
    """defaults <- file <- overrides (None values in overrides are ignored)."""
    cfg = defaults()
    if file is not None:
        cfg.update(load_file(file))
    for k, v in (overrides or {}).items():
        if k not in cfg:
            raise ValueError(f"unknown config key {k!r}; known: {sorted(cfg)}")
        if v is not None:
            cfg[k] = v
    if isinstance(cfg["datasets"], str):
        cfg["datasets"] = [s for s in cfg["datasets"].split(",") if s]
    if isinstance(cfg["methods"], str):
        cfg["methods"] = [s for s in cfg["methods"].split(",") if s]
    if cfg["limit"] in (0, "0"):
        cfg["limit"] = None
    return cfg


def resolve_methods(cfg: dict[str, Any]) -> list[str]:
    from g2face_eval import methods

    return list(cfg["methods"]) if cfg["methods"] else methods.default_methods()


def config_hash(cfg: dict[str, Any]) -> str:
    core = {k: v for k, v in cfg.items() if k not in NON_RESULT_KEYS}
    return hashlib.sha256(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_name(cfg: dict[str, Any]) -> str:
    if cfg.get("run_name"):
        return str(cfg["run_name"])
    ds = "+".join(cfg["datasets"])
    return f"{ds}-{config_hash(cfg)}"


def method_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """Flat ``a.b.c -> str`` view (MLflow params)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def add_arguments(ap: argparse.ArgumentParser) -> None:
    d = defaults()
    ap.add_argument("--config", help="TOML/JSON/YAML config file (see configs/)")
    ap.add_argument("--methods", help="comma-separated method names (default: all default methods)")
    ap.add_argument("--datasets", help=f"comma-separated dataset names (default: {','.join(d['datasets'])})")
    ap.add_argument("--limit", type=int, help="images per dataset (default: all)")
    ap.add_argument("--batch-size", type=int, help=f"default {d['batch_size']}")
    ap.add_argument("--results-dir", help=f"default {d['results_dir']}")
    ap.add_argument("--datasets-root", help="root of the real datasets (default $G2FACE_DATASETS)")
    ap.add_argument("--seed", type=int, help=f"default {d['seed']}")
    ap.add_argument("--device", help=f"default {d['device']}")
    ap.add_argument("--run-name", help="results sub-folder (default derived from the config hash)")


def from_args(ns: argparse.Namespace) -> dict[str, Any]:
    return make_config(
        {
            "methods": ns.methods,
            "datasets": ns.datasets,
            "limit": ns.limit,
            "batch_size": ns.batch_size,
            "results_dir": ns.results_dir,
            "datasets_root": ns.datasets_root,
            "seed": ns.seed,
            "device": ns.device,
            "run_name": ns.run_name,
        },
        file=ns.config,
    )
