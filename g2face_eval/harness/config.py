"""Evaluation configuration: one dict built from ``settings.DEFAULTS`` (+ the evaluation keys below), then a
config file (TOML via tomllib; JSON; YAML when PyYAML is installed), then command-line flags.

Config file layout (TOML)::

    methods = ["blur_s4", "pixelate_16"]         # omitted: methods.default_methods()
    datasets = ["celebahq256", "celeba_id"]      # names in data.datasets.DATASETS
    limit = 100                                  # images per dataset (probes for celeba_id); 0/absent: all
    batch_size = 16
    [dataset_options.celebahq256]                # keyword arguments of datasets.open_dataset
    split = "test"

``make_config`` refuses what would otherwise be silently ignored or fail later: unknown keys, dataset/method
names that are not registered, option tables (``dataset_options.X``, ``method_options.X``) for a dataset or
method the run does not include, unknown recognizer/detector names (a known one whose weights are missing is
reported as unavailable by the run), a batch size < 1, a negative limit and a device this machine does not
have (ValueError; the CLI exits with code 2). Method names are checked by ``resolve_methods`` (they need the
method registry, which imports every model).

What identifies a run's results is its config hash (``config_hash``): every key but ``NON_RESULT_KEYS``, plus
the resolved folder each dataset reads (``data_locations``), so the same file names under another dataset root
are another run while the same datasets reached through another path to them (a symlink) are the same run.
"""

from __future__ import annotations

import argparse
import copy
import functools
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

# realism feature extractors the harness knows (``evaluate._feature_extractors``)
FEATURE_EXTRACTORS = ("effnet_lite0", "inception_fid")

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

# Keys that do not identify a run's results: excluded from the config hash (so a rerun with another batch size,
# device or output folder continues the same run; another batch size recomputes its prepared chunks and batches,
# whose keys are built from each chunk's ids, from the cache). Batch size and device change values only at
# float-rounding level
# (batched inference is not bit-identical across batch sizes: similarities by up to 1e-4; README), and each
# invocation records its own (invocations.json). ``datasets_root`` is listed because its spelling does not
# matter: the folders it resolves to enter the hash through ``data_locations``.
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
    d["reports_dir"] = str(settings.reports_dir())  # relative: against the working directory, as results_dir
    root = settings.datasets_root()
    if root is not None and d.get("datasets_root") is None:
        d["datasets_root"] = str(root)
    return d


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object that names a key twice is refused (JSON parsers keep the last silently; TOML refuses)."""
    seen: dict[str, Any] = {}
    for k, v in pairs:
        if k in seen:
            raise ValueError(f"key {k!r} given twice")
        seen[k] = v
    return seen


def _yaml_load(text: str) -> Any:
    """PyYAML's safe loader, refusing a mapping that names a key twice (PyYAML keeps the last silently)."""
    import yaml  # optional

    class _Loader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        own = [k for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"]  # a `<<` merge may be overridden
        _no_duplicate_keys([(loader.construct_object(k, deep=deep), None) for k in own])
        return loader.construct_mapping(node, deep=deep)

    _Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def load_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    text = p.read_text()
    if p.suffix not in (".toml", ".json", ".yaml", ".yml"):
        raise ValueError(f"config {p}: unknown format {p.suffix!r} (use .toml, .json or .yaml)")
    try:  # a syntax error names the file (the parsers' messages give only the position)
        if p.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif p.suffix == ".json":
            data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
        else:
            data = _yaml_load(text) or {}
    except ImportError:
        raise
    except Exception as e:  # noqa: BLE001 - TOMLDecodeError, JSONDecodeError, YAMLError
        raise ValueError(f"config {p}: not valid {p.suffix[1:].upper()}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config {p}: expected a table of settings at the top level, got {type(data).__name__}")
    if "evaluate" in data and isinstance(data["evaluate"], dict):  # allow an [evaluate] table
        twice = sorted(set(data) & set(data["evaluate"]))
        if twice:
            raise ValueError(f"config {p}: {', '.join(twice)} given both at the top level and in [evaluate]")
        data = {**{k: v for k, v in data.items() if k != "evaluate"}, **data["evaluate"]}
    unknown = set(data) - set(defaults())
    if unknown:
        raise ValueError(f"config {p}: unknown keys {sorted(unknown)}; known: {sorted(defaults())}")
    return data


def make_config(overrides: dict[str, Any] | None = None, file: str | Path | None = None) -> dict[str, Any]:
    """defaults <- file <- overrides (None values in overrides are ignored), then validated (``validate``)."""
    cfg = defaults()
    if file is not None:
        cfg.update(load_file(file))
    for k, v in (overrides or {}).items():
        if k not in cfg:
            raise ValueError(f"unknown config key {k!r}; known: {sorted(cfg)}")
        if v is not None:
            cfg[k] = v
    for k in ("datasets", "methods", "recognizers", "detectors", "feature_extractors"):
        cfg[k] = _name_list(cfg[k])
    if cfg["limit"] in (0, "0"):
        cfg["limit"] = None
    validate(cfg)
    return cfg


def _name_list(v: Any) -> Any:
    """A comma-separated string -> a list of names (``detectors = "yunet"`` is one detector, not five letters)."""
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    if isinstance(v, tuple):
        return list(v)
    return v


def _check_int(cfg: dict[str, Any], key: str, minimum: int, optional: bool = False) -> None:
    v = cfg[key]
    if optional and v is None:
        return
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        v = cfg[key] = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}{' (or absent)' if optional else ''}, got {v!r}")


def _check_names(key: str, names: Any, known: list[str], what: str) -> None:
    if names is None:
        return
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{key} must be a list of {what} names, got {names!r}")
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"{key}: unknown {what} name(s) {', '.join(map(repr, bad))}; known: {', '.join(known)}")


def check_device(device: Any) -> str:
    """``device`` as torch understands it and as this machine has it: ``cuda`` needs CUDA, ``cuda:N`` needs
    N < the number of GPUs (a run on a missing device would otherwise record every image as failed)."""
    import torch

    try:
        d = torch.device(str(device))
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine; use --device cpu")
        n = torch.cuda.device_count()
        if d.index is not None and d.index >= n:
            raise ValueError(f"device {device!r}: this machine has {n} CUDA device(s) (cuda:0 .. cuda:{n - 1})")
    elif d.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"device {device!r}: MPS is not available on this machine; use --device cpu")
    elif d.type != "cpu":
        raise ValueError(f"device {device!r}: unsupported device type {d.type!r} (cpu, cuda, cuda:N, mps)")
    return str(device)


def validate(cfg: dict[str, Any]) -> None:
    """Refuse what the run would otherwise ignore or fail on later (see the module docstring); ValueError."""
    from g2face_eval.data import datasets as D
    from g2face_eval.oracles import detectors as Dt
    from g2face_eval.oracles import recognizers as R

    _check_int(cfg, "batch_size", 1)
    _check_int(cfg, "limit", 0, optional=True)
    if cfg["limit"] == 0:
        cfg["limit"] = None
    _check_int(cfg, "gallery_per_identity", 1)
    # checked here, not where they are used: most are read only after every image is computed
    _check_int(cfg, "image_size", 16)  # the loaders' smallest image side (data.io.MIN_SIDE)
    _check_int(cfg, "bootstrap_samples", 1)
    _check_int(cfg, "seed", 0)
    _check_int(cfg, "latency_repeats", 0)  # 0 and 1 both time one run
    _check_int(cfg, "fd_min_images", 0)  # below 2: 2 (a covariance needs two)
    _check_int(cfg, "samples_per_grid", 0)
    for key in ("results_dir", "cache_dir", "reports_dir", "datasets_root"):
        if cfg.get(key) is not None and not isinstance(cfg[key], (str, Path)):
            raise ValueError(f"{key} must be a folder path, got {cfg[key]!r}")
    for key in ("results_dir", "cache_dir", "reports_dir"):
        if cfg.get(key) and Path(cfg[key]).expanduser().exists() and not Path(cfg[key]).expanduser().is_dir():
            raise ValueError(f"{key} {str(cfg[key])!r} is a file, not a folder")
    if not cfg["datasets"]:
        raise ValueError("datasets: no dataset named")
    _check_names("datasets", cfg["datasets"], D.DATASETS.names(), "dataset")
    if cfg["methods"] is not None and (
        not isinstance(cfg["methods"], list) or not all(isinstance(m, str) for m in cfg["methods"])
    ):
        raise ValueError(f"methods must be a list of method names, got {cfg['methods']!r}")
    if cfg["methods"] is not None and not cfg["methods"]:  # "" or []: a mistake, not "every default method"
        raise ValueError("methods: no method named (leave the setting out for every default method)")
    _check_names("recognizers", cfg["recognizers"], R.RECOGNIZERS.names(), "recognizer")
    _check_names("detectors", cfg["detectors"], Dt.DETECTORS.names(), "detector")
    _check_names("feature_extractors", cfg["feature_extractors"], list(FEATURE_EXTRACTORS), "feature extractor")
    if not isinstance(cfg["face_mesh"], bool):
        raise ValueError(f"face_mesh must be true or false, got {cfg['face_mesh']!r}")
    run_names = {"dataset_options": lambda: cfg["datasets"], "method_options": lambda: resolve_methods(cfg, False)}
    for key, names_of in run_names.items():
        opts = cfg[key]
        if not isinstance(opts, dict) or not all(isinstance(v, dict) for v in opts.values()):
            raise ValueError(f"{key} must be a table of tables ([{key}.<name>]), got {opts!r}")
        if opts:
            names = names_of()
            stray = sorted(set(opts) - set(names))
            if stray:
                raise ValueError(f"{key}: {', '.join(map(repr, stray))} not in this run (its {key.split('_')[0]}s: "
                                 f"{', '.join(names)}); an option table for a name the run does not include would "
                                 "be ignored")
    cfg["device"] = check_device(cfg["device"])


def resolve_methods(cfg: dict[str, Any], check: bool = True) -> list[str]:
    """The run's method names (``methods.default_methods()`` when none are named); ``check``: every name must be
    registered (UnknownNameError listing the known ones)."""
    from g2face_eval import methods

    names = list(cfg["methods"]) if cfg["methods"] else methods.default_methods()
    if check:
        for m in names:
            methods.METHODS.get(m)
    return names


# datasets that ignore ``root``/``datasets_root`` (the embedded faces ship in the package; ``folder=`` moves them)
ROOTLESS_DATASETS = {"embedded": "folder"}


def cache_root(cfg: dict[str, Any]) -> Path:
    """The run's cache folder: the config's ``cache_dir``, else ``settings.cache_dir()``."""
    return Path(cfg.get("cache_dir") or settings.cache_dir()).expanduser()


def data_locations(cfg: dict[str, Any]) -> dict[str, str]:
    """dataset -> the resolved folder it reads (``dataset_options.<name>.root``, else ``datasets_root``; for
    ``embedded`` only its ``folder`` option), for the datasets of the run that read one. Resolved (absolute,
    symlinks followed): the same files reached through another path are the same data."""
    out = {}
    for name in cfg.get("datasets") or ():
        opts = (cfg.get("dataset_options") or {}).get(name) or {}
        if name in ROOTLESS_DATASETS:
            where = opts.get(ROOTLESS_DATASETS[name])
        else:
            where = opts.get("root") or cfg.get("datasets_root")
        if where:
            out[name] = str(Path(str(where)).expanduser().resolve())
    return out


def config_hash(cfg: dict[str, Any]) -> str:
    """What identifies a run's results: the configuration (minus NON_RESULT_KEYS), the folders its datasets read
    and the version of the metric definitions (``metrics.base.DEFINITIONS_VERSION``)."""
    from g2face_eval.metrics.base import DEFINITIONS_VERSION

    core = {k: v for k, v in cfg.items() if k not in NON_RESULT_KEYS}
    core["metric_definitions"] = DEFINITIONS_VERSION
    locations = data_locations(cfg)
    if locations:
        core["data_locations"] = locations
    return hashlib.sha256(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_name(cfg: dict[str, Any]) -> str:
    if cfg.get("run_name"):
        return str(cfg["run_name"])
    ds = "+".join(cfg["datasets"])
    return f"{ds}-{config_hash(cfg)}"


def method_hash(config: dict, code: str | None = None) -> str:
    """A method's identity: its configuration and, with ``code`` (``code_fingerprint()``), the code that produces
    its outputs. It names the method's namespace in the shared output cache and enters its batch keys, so outputs
    and records computed by other code are never reused."""
    obj = config if code is None else {"config": config, "code": code}
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def source_fingerprint(paths: list[Path]) -> str:
    """sha256 (16 hex) over the ``.py`` files of ``paths`` (files, or folders searched recursively): each file's
    name relative to its root's parent and its bytes, in sorted order -- independent of where the code is
    installed, changed by any edit (a comment included) of any of those files, by adding or removing one."""
    h = hashlib.sha256()
    for root in paths:
        root = Path(root)
        files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
        for f in files:
            h.update(f.relative_to(root.parent).as_posix().encode() + b"\0")
            h.update(f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@functools.cache
def code_fingerprint() -> str:
    """Fingerprint (``source_fingerprint``) of the code that produces the methods' outputs: ``anonymizer.py``,
    ``imaging.py``, ``models/`` of the package, ``oracles/detectors.py`` (YuNet's settings decide the classic
    baselines' face box where no face mask is given) and the ``baselines`` package. Computed once per process;
    part of every method hash (``method_hash``)."""
    import baselines
    import g2face_eval

    pkg = Path(g2face_eval.__file__).resolve().parent
    return source_fingerprint([pkg / "anonymizer.py", pkg / "imaging.py", pkg / "models",
                               pkg / "oracles" / "detectors.py", Path(next(iter(baselines.__path__))).resolve()])


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
    ap.add_argument("--limit", type=int, help="images per dataset: a fixed sample spread over the dataset (ids ranked "
                    "by sha256), not the first N; for celeba_id, the first N identities (sorted), and with a "
                    "dataset's repeat option, the first N of the repeated ids (default: all)")
    ap.add_argument("--batch-size", type=int, help=f"default {d['batch_size']}")
    ap.add_argument("--results-dir", help=f"default {d['results_dir']} ($G2FACE_RESULTS_DIR)")
    ap.add_argument("--reports-dir", help=f"default {d['reports_dir']} ($G2FACE_REPORTS_DIR)")
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
            "reports_dir": getattr(ns, "reports_dir", None),
            "datasets_root": ns.datasets_root,
            "seed": ns.seed,
            "device": ns.device,
            "run_name": ns.run_name,
        },
        file=ns.config,
    )
