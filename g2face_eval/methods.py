"""Fills ``anonymizer.METHODS`` with configured entries: the classic baselines at a few strengths each, the
``identity`` sanity method, and learned models (G2Face) when their modules are importable.

``METHODS.get(name)(**overrides) -> Anonymizer``. ``default_methods()`` is what ``g2face-eval evaluate`` runs
when no ``--methods`` are given: every classic baseline, ``identity``, and ``g2face`` once its shipped
checkpoint is available in the zoo.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from baselines.blur import GaussianBlur
from baselines.mask import SolidMask
from baselines.noise import AdditiveNoise
from baselines.pixelate import Pixelate
from g2face_eval.anonymizer import METHODS, Anonymizer, Key, Output


class IdentityMethod(Anonymizer):
    """Returns its input unchanged; reversible (recovery is exact). A sanity check for the harness:
    de-identification 0%, recovery 100%."""

    name = "identity"
    reversible = True

    def config(self) -> dict:
        return {"name": self.name, "family": "identity"}

    def _anonymize(
        self, images: torch.Tensor, keys: Sequence[Key], face_masks: torch.Tensor | None
    ) -> Output:
        return Output(images.clone(), ok=torch.ones(len(keys), dtype=torch.bool))

    def _recover(self, images: torch.Tensor, keys: Sequence[Key]) -> Output:
        return Output(images.clone(), ok=torch.ones(len(keys), dtype=torch.bool))


# name -> (class, kwargs). Strengths: weak, medium, strong (and an almost-no-op blur for sanity checks).
CLASSIC: dict[str, tuple[type[Anonymizer], dict]] = {
    "blur_s1": (GaussianBlur, {"sigma": 1.0}),
    "blur_s4": (GaussianBlur, {"sigma": 4.0}),
    "blur_s16": (GaussianBlur, {"sigma": 16.0}),
    "blur_s64": (GaussianBlur, {"sigma": 64.0}),
    "pixelate_32": (Pixelate, {"blocks": 32}),
    "pixelate_16": (Pixelate, {"blocks": 16}),
    "pixelate_8": (Pixelate, {"blocks": 8}),
    "mask_black": (SolidMask, {"color": 0.0}),
    "mask_gray": (SolidMask, {"color": 0.5}),
    "noise_s0.05": (AdditiveNoise, {"sigma": 0.05}),
    "noise_s0.2": (AdditiveNoise, {"sigma": 0.2}),
    "noise_s0.5": (AdditiveNoise, {"sigma": 0.5}),
}


def _factory(cls: type[Anonymizer], name: str, defaults: dict):
    def make(**overrides) -> Anonymizer:
        return cls(**{**defaults, **overrides}, name=name)

    make.__name__ = f"make_{name}"
    return make


def _register_all() -> None:
    for name, (cls, kw) in CLASSIC.items():
        if name not in METHODS:
            METHODS.add(name, _factory(cls, name, kw))
    if "identity" not in METHODS:
        METHODS.add("identity", lambda **kw: IdentityMethod())
    # Learned models register themselves from their own modules (they own their factories and checkpoints).
    from g2face_eval.models import shipped

    shipped.register_methods(METHODS)
    from baselines import learned

    learned.register_methods(METHODS)


_register_all()

CLASSIC_METHODS: tuple[str, ...] = tuple(CLASSIC)


@functools.lru_cache(maxsize=1)
def g2face_available() -> bool:
    """True when the shipped G2Face checkpoint is present (and its sha256 on record)."""
    from g2face_eval import zoo

    return zoo.available("g2face_shipped")


def default_methods() -> list[str]:
    names = [*CLASSIC_METHODS, "identity"]
    if g2face_available():
        names.append("g2face")
    from baselines import learned

    names += learned.available_methods()
    return names


def build(name: str, **overrides) -> Anonymizer:
    return METHODS.get(name)(**overrides)
