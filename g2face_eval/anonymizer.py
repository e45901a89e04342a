"""The one anonymizer interface, shared by classic baselines and learned models (DeepPrivacy2 style).

Every method is a registry entry ``METHODS[name] = factory(**config) -> Anonymizer``. Inputs and outputs are
``(B, 3, H, W)`` float RGB batches in [0, 1] (see ``g2face_eval.imaging``), computed in float32 and returned in the
caller's float dtype. Randomness is per image: the harness derives one key per image from the run's key and the
image id, so the random draws do not depend on batching or on how images are sharded across processes (the
learned methods' batched network arithmetic does, at float-rounding level, ~1e-6: README).
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from g2face_eval.imaging import RANGE, check_batch
from g2face_eval.registry import Registry

Key = bytes


def derive_keys(master: str | bytes, ids: Sequence[str]) -> list[Key]:
    """Per-image keys: SHA-256(master || 0x00 || id). Stable across batching and sharding."""
    m = master.encode() if isinstance(master, str) else master
    return [hashlib.sha256(m + b"\x00" + i.encode()).digest() for i in ids]


def key_seed(key: Key, purpose: str = "") -> int:
    """A 63-bit integer seed from a key, for a counter-based generator that uses all 63 bits (G2Face's
    ``keyed_normal``). ``purpose`` separates the draws of different methods (G2Face: ""). ``torch.Generator``'s
    ``manual_seed`` keeps only the low 32 bits: good enough for draws that are no secret (the noise baseline's
    noise), never for passwords (``key_bits``)."""
    tag = b"seed" if not purpose else b"seed/" + purpose.encode() + b"\x00"
    return int.from_bytes(hashlib.sha256(tag + key).digest()[:8], "big") >> 1


def key_bits(keys: Sequence[Key], n: int, purpose: str) -> torch.Tensor:
    """(B, n) float {0,1}: ``n`` bits per image straight from its key, SHAKE-256("g2face-eval/bits/" || purpose ||
    0x00 || key): a password carries the key's entropy (up to 256 bits), one method's bits say nothing about
    another's, and a row never depends on the rest of the batch."""
    if not purpose:
        raise ValueError("key_bits needs a purpose (the method's name) to separate its bits from other methods'")
    tag = b"g2face-eval/bits/" + purpose.encode() + b"\x00"
    raw = [hashlib.shake_256(tag + k).digest((n + 7) // 8) for k in keys]
    if not raw:
        return torch.zeros(0, n)
    bits = np.unpackbits(np.frombuffer(b"".join(raw), dtype=np.uint8).reshape(len(raw), -1), axis=1)[:, :n]
    return torch.from_numpy(bits.astype(np.float32))


@dataclass
class Output:
    """What ``anonymize`` and ``recover`` return.

    images: (B,3,H,W) float in [0,1].
    ok:     per-image bool; for ``recover``, whether the payload authenticated under the key (None when the
            method has no such notion).
    bits:   (B, n) float {0,1}: the payload bits hidden (anonymize) or read back (recover), where exposed.
    info:   free-form per-batch diagnostics (never metrics).
    """

    images: torch.Tensor
    ok: torch.Tensor | None = None
    bits: torch.Tensor | None = None
    info: dict = field(default_factory=dict)


class Anonymizer(abc.ABC):
    """Base class. Subclasses set the class attributes and implement ``_anonymize`` (and ``_recover``)."""

    name: str = "anonymizer"
    reversible: bool = False
    input_size: int | None = None  # None: any size; else square side the method works at
    value_range: tuple[float, float] = RANGE
    needs_gpu: bool = False  # True only when CPU inference is impractical (it must still work on CPU)
    uses_face_mask: bool = False  # consumes the per-image face-region masks the harness passes
    # the harness keeps the outputs in the shared output cache (lossless PNG, reused by later runs); False for
    # closed-form image operations, which recompute faster than a PNG write (~2 ms per 256 px image on one CPU
    # core) and read (~1 ms) cost, and whose cached outputs only fill the disk (noise: ~190 KB per image)
    cache_outputs: bool = True

    def config(self) -> dict:
        """Flat, JSON-serialisable configuration (logged as MLflow params)."""
        return {"name": self.name}

    def anonymize(self, images: torch.Tensor, keys: Sequence[Key], *, face_masks: torch.Tensor | None = None
                  ) -> Output:
        """``face_masks`` (B,1,H,W) in [0,1] (>= 0.5: face). An image whose mask has no face pixel is treated
        as all face (fail-safe, as for a face the detector misses): its index is in ``info["empty_face_mask"]``."""
        self._check(images, keys, face_masks)
        empty: list[int] = []
        if face_masks is not None:
            none = (face_masks.detach().flatten(1) < 0.5).all(dim=1)
            if bool(none.any()):
                empty = torch.nonzero(none).flatten().tolist()
                face_masks = torch.where(none[:, None, None, None], torch.ones_like(face_masks), face_masks)
        dtype = images.dtype
        out = self._anonymize(images.float(), keys, face_masks)
        self._check_output(out, images)
        if empty:
            out.info["empty_face_mask"] = empty
        return _in_dtype(out, dtype)

    def recover(self, images: torch.Tensor, keys: Sequence[Key]) -> Output:
        if not self.reversible:
            raise NotImplementedError(f"{self.name} is not reversible")
        self._check(images, keys, None)
        dtype = images.dtype
        out = self._recover(images.float(), keys)
        self._check_output(out, images)
        return _in_dtype(out, dtype)

    def _check_output(self, out: Output, images: torch.Tensor) -> None:
        """An output batch must be the input's shape (B,3,H,W), with one ``ok`` / ``bits`` row per image: an
        extra, missing or reordered image would be scored against another image's original."""
        check_batch(out.images)
        b = images.shape[0]
        if tuple(out.images.shape) != tuple(images.shape):
            raise ValueError(f"{self.name} returned images of shape {tuple(out.images.shape)} for an input of "
                             f"shape {tuple(images.shape)}")
        for field_name in ("ok", "bits"):
            v = getattr(out, field_name)
            if v is not None and (v.ndim == 0 or v.shape[0] != b):
                raise ValueError(f"{self.name} returned {field_name} of shape {tuple(v.shape)} for {b} images")

    @abc.abstractmethod
    def _anonymize(self, images: torch.Tensor, keys: Sequence[Key], face_masks: torch.Tensor | None
                   ) -> Output: ...

    def _recover(self, images: torch.Tensor, keys: Sequence[Key]) -> Output:
        raise NotImplementedError

    def _check(self, images: torch.Tensor, keys: Sequence[Key], face_masks: torch.Tensor | None) -> None:
        check_batch(images)
        if images.numel() == 0:
            raise ValueError(f"{self.name}: empty batch (shape {tuple(images.shape)})")
        if len(keys) != images.shape[0]:
            raise ValueError(f"{self.name}: got {len(keys)} keys for a batch of {images.shape[0]} images")
        if any(not isinstance(k, bytes) or not k for k in keys):
            raise TypeError(f"{self.name}: keys must be non-empty bytes")
        if self.input_size is not None and tuple(images.shape[-2:]) != (self.input_size, self.input_size):
            raise ValueError(f"{self.name} works at {self.input_size}x{self.input_size}, "
                             f"got {tuple(images.shape[-2:])}")
        if face_masks is not None:
            b, _, h, w = images.shape
            if not isinstance(face_masks, torch.Tensor) or tuple(face_masks.shape) != (b, 1, h, w):
                got = tuple(face_masks.shape) if isinstance(face_masks, torch.Tensor) else type(face_masks).__name__
                raise ValueError(f"{self.name}: face_masks must be a (B,1,H,W) tensor matching the images, i.e. "
                                 f"{(b, 1, h, w)}; got {got}")
            if not face_masks.is_floating_point() and face_masks.dtype != torch.bool:
                raise TypeError(f"{self.name}: face_masks must be float in [0, 1] or bool, got {face_masks.dtype}")
            if face_masks.is_floating_point():
                lo, hi = (float(v) for v in torch.aminmax(face_masks.detach()))
                if not (lo >= 0.0 and hi <= 1.0):                  # NaN fails both comparisons
                    raise ValueError(f"{self.name}: face_masks must be finite and lie in [0, 1], got "
                                     f"[{lo:.3g}, {hi:.3g}]")


def _in_dtype(out: Output, dtype: torch.dtype) -> Output:
    """Every method computes in float32 (the same values whatever the caller's float dtype: a float64 batch does
    not draw another noise stream, a bf16 one is not blurred in bf16); the output is cast back to the caller's."""
    if out.images.dtype != dtype:
        out.images = out.images.to(dtype)
    return out


def check_options(method: str, given: Iterable[str], accepted: Iterable[str]) -> None:
    """Refuse factory options a method does not take (``method_options`` in a run's configuration) with a
    ValueError listing the accepted ones, instead of ignoring them or failing deep inside with a TypeError."""
    accepted = sorted(accepted)
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise ValueError(f"method {method!r}: unknown option(s) {', '.join(unknown)}; accepted: "
                         f"{', '.join(accepted) or '(none)'}")


METHODS: Registry = Registry("method")
"""name -> factory(**config) -> Anonymizer. Populated by ``g2face_eval.methods`` (imports baselines and
learned models)."""
