"""Learned baselines trained by this project with G2Face's machinery (issue #6): ``fit`` (FIT-style
password-conditioned reversible encoder-decoder), ``inpaint`` (DeepPrivacy/CIAGAN-style irreversible face
inpainting), ``riddle`` (RiDDLE-style latent encryptor). The shared contract, trainer and export are in
``baselines/learned/base.py``; each module ``baselines/learned/<name>.py`` exposes ``register_methods``.
"""

from __future__ import annotations

import importlib

MODULES: tuple[str, ...] = ("fit", "inpaint", "riddle")


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
    """The learned baselines whose checkpoint is present (and sha256-verified) in the zoo."""
    from g2face_eval import zoo

    from .base import zoo_entry

    out = []
    for name in MODULES:
        if _module(name) is not None and zoo.available(zoo_entry(name)):
            out.append(name)
    return out
