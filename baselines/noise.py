"""Additive Gaussian noise on the face region, std ``sigma`` in units of the [0, 1] value range.

The noise of each image is drawn from a generator seeded by ``key_seed(key)``: deterministic for a key and
independent of batch composition (the generator keeps 32 bits of the seed: the noise is no secret, and two images
in ~65,000 sharing a noise pattern changes no metric)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from baselines._region import check_param, composite, face_region
from g2face_eval.anonymizer import Anonymizer, Key, Output, key_seed


class AdditiveNoise(Anonymizer):
    uses_face_mask = True
    cache_outputs = False  # a closed-form image operation: recomputed, not cached (Anonymizer.cache_outputs)

    def __init__(self, sigma: float = 0.3, *, name: str | None = None, box_margin: float = 0.1) -> None:
        self.sigma = check_param("sigma", sigma)
        self.box_margin = check_param("box_margin", box_margin)
        self.name = name or f"noise_s{sigma:g}"

    def config(self) -> dict:
        return {"name": self.name, "family": "noise", "sigma": self.sigma, "box_margin": self.box_margin}

    def _anonymize(
        self, images: torch.Tensor, keys: Sequence[Key], face_masks: torch.Tensor | None
    ) -> Output:
        region, info = face_region(images, face_masks, self.box_margin)
        noise = torch.empty_like(images, device="cpu")
        for i, k in enumerate(keys):
            g = torch.Generator().manual_seed(key_seed(k))
            noise[i] = torch.randn(images.shape[1:], generator=g, dtype=images.dtype)
        mod = images + self.sigma * noise.to(images.device)
        return Output(composite(images, mod, region), ok=torch.ones(len(keys), dtype=torch.bool), info=info)
