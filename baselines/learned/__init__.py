"""Learned baselines trained by this project with G2Face's machinery (issue #6): ``fit`` (FIT-style
password-conditioned reversible encoder-decoder), ``inpaint`` (DeepPrivacy/CIAGAN-style irreversible face
inpainting), ``riddle`` (RiDDLE-style latent encryptor). The shared contract, trainer and export are in
``baselines/learned/base.py``; each module ``baselines/learned/<name>.py`` exposes ``register_methods``.
"""

from __future__ import annotations

import importlib
import logging

MODULES: tuple[str, ...] = ("fit", "inpaint", "riddle")
log = logging.getLogger(__name__)


def _module(name: str):
    """The baseline's module, or None when it does not exist (only a missing module itself is skipped)."""
    full = f"{__name__}.{name}"
    try:
        return importlib.import_module(full)
    except ModuleNotFoundError as e:
        if e.name == full:
            return None
        raise


def register_methods(methods) -> None:
    """Add every existing learned baseline to ``methods`` (the harness's METHODS registry)."""
    for name in MODULES:
        mod = _module(name)
        if mod is not None:
            mod.register_methods(methods)


def available_methods() -> list[str]:
    """The learned baselines whose checkpoint is present (and sha256-verified) in the zoo.

    A missing checkpoint leaves its method out of the default run (the reason is logged as a warning); a
    corrupt one (present, but its sha256 does not match the record) raises the zoo's ``WeightIntegrityError``
    naming the file and the fix instead of silently shrinking the run."""
    from g2face_eval import zoo

    from .base import zoo_entry

    out = []
    for name in MODULES:
        if _module(name) is None:
            continue
        wn = zoo_entry(name)
        try:
            zoo.path(wn)
        except zoo.WeightMissingError as e:
            log.warning("learned baseline %r left out of the default methods: %s", name, e)
            continue
        except zoo.WeightIntegrityError as e:
            e.args = (f"{e.args[0]}. Learned baseline {name!r}: restore g2face_eval/checkpoints/{name}.safetensors "
                      f"from the repository, or re-train and export it (`g2face-eval train-baseline {name} --out "
                      f"<dir>`, then `python -m baselines.learned.train export <dir>/last --export-to "
                      f"g2face_eval/checkpoints/{name}.safetensors`); to run without it, "
                      f"name the methods explicitly (--methods)",)
            raise
        out.append(name)
    return out
