"""Fills ``anonymizer.METHODS`` with configured entries: the classic baselines at a few strengths each, the
``identity`` sanity method, and learned models (G2Face) when their modules are importable.

``METHODS.get(name)(**overrides) -> Anonymizer``. ``default_methods()`` is what ``g2face-eval evaluate`` runs
when no ``--methods`` are given: every classic baseline, ``identity``, and ``g2face`` once its shipped
checkpoint is available in the zoo.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Sequence

import torch

from baselines.blur import GaussianBlur
from baselines.mask import SolidMask
from baselines.noise import AdditiveNoise
from baselines.pixelate import Pixelate
from g2face_eval.anonymizer import METHODS, Anonymizer, Key, Output, check_options

log = logging.getLogger(__name__)


class IdentityMethod(Anonymizer):
    """Returns its input unchanged; reversible (recovery is exact). A sanity check for the harness:
    de-identification 0%, recovery 100%."""

    name = "identity"
    reversible = True
    cache_outputs = False

    def config(self) -> dict:
        return {"name": self.name, "family": "identity"}

    def _anonymize(
        self, images: torch.Tensor, keys: Sequence[Key], face_masks: torch.Tensor | None
    ) -> Output:
        return Output(images.clone(), ok=torch.ones(len(keys), dtype=torch.bool))

    def _recover(self, images: torch.Tensor, keys: Sequence[Key]) -> Output:
        return Output(images.clone(), ok=torch.ones(len(keys), dtype=torch.bool))


def _identity(**overrides) -> IdentityMethod:
    check_options("identity", overrides, ())
    return IdentityMethod()


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


def _options(cls: type[Anonymizer]) -> list[str]:
    """The keyword options of a classic baseline's constructor (``name`` is the registry's, never an option)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.name not in ("self", "name") and p.kind not in (p.VAR_POSITIONAL,
                                                                                          p.VAR_KEYWORD)]


def _factory(cls: type[Anonymizer], name: str, defaults: dict):
    """``make(**overrides)``: options the name does not encode (e.g. ``box_margin``) may be overridden; the
    parameter the name encodes (``blur_s4`` -> sigma 4) may not, since the record would keep the old name."""

    def make(**overrides) -> Anonymizer:
        for k in sorted(defaults.keys() & overrides.keys()):  # the same value (e.g. sigma 4 for blur_s4) is fine
            want = cls(**{k: overrides[k]})  # unnamed: the name the class gives that value

            def value(kw: dict, k=k):
                return cls(**{k: kw[k]}).config()[k] if k in kw else None

            if value(overrides) != value(defaults):
                family = [n for n, (c, _) in CLASSIC.items() if c is cls]
                same = [n for n in family if value(CLASSIC[n][1]) == value(overrides)]
                use = (f"use the method {same[0]!r}" if same
                       else f"register {want.name!r} (CLASSIC in g2face_eval/methods.py) and use it")
                raise ValueError(
                    f"method {name!r}: option {k} = {overrides[k]!r} would change the {k} its name encodes "
                    f"({defaults[k]!r}) while every record keeps the name {name!r}; {use} instead "
                    f"(registered: {', '.join(family)})")
        extra = {k: v for k, v in overrides.items() if k not in defaults}
        check_options(name, extra, [o for o in _options(cls) if o not in defaults])
        return cls(**defaults, **extra, name=name)

    make.__name__ = f"make_{name}"
    return make


def _register_all() -> None:
    for name, (cls, kw) in CLASSIC.items():
        if name not in METHODS:
            METHODS.add(name, _factory(cls, name, kw))
    if "identity" not in METHODS:
        METHODS.add("identity", _identity)
    # Learned models register themselves from their own modules (they own their factories and checkpoints).
    from g2face_eval.models import shipped

    shipped.register_methods(METHODS)
    from baselines import learned

    learned.register_methods(METHODS)


_register_all()

CLASSIC_METHODS: tuple[str, ...] = tuple(CLASSIC)


@functools.lru_cache(maxsize=1)
def g2face_available() -> bool:
    """True when the shipped G2Face checkpoint is present and verified; False (logged) when it is missing. A
    corrupt file (sha256 mismatch) raises the zoo's ``WeightIntegrityError`` rather than quietly dropping
    ``g2face`` from the default run."""
    from g2face_eval import zoo

    try:
        zoo.path("g2face_shipped")
    except zoo.WeightMissingError as e:
        log.warning("g2face left out of the default methods: %s", e)
        return False
    except zoo.WeightIntegrityError as e:
        e.args = (f"{e.args[0]}. Restore g2face_eval/checkpoints/g2face_shipped.safetensors from the repository, "
                  "or re-export it (`python -m g2face_eval.models.shipped export <dir>/last`); to run without it, "
                  "name the methods explicitly (--methods)",)
        raise
    return True


def default_methods() -> list[str]:
    """Every classic baseline, ``identity``, and each learned model whose shipped checkpoint is present; a missing
    checkpoint leaves its method out (logged warning), a corrupt one raises ``zoo.WeightIntegrityError``."""
    names = [*CLASSIC_METHODS, "identity"]
    if g2face_available():
        names.append("g2face")
    from baselines import learned

    names += learned.available_methods()
    return names


def build(name: str, **overrides) -> Anonymizer:
    return METHODS.get(name)(**overrides)
