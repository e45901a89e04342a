"""Solid mask over the face region (black by default)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from baselines._region import check_param, composite, face_region
from g2face_eval.anonymizer import Anonymizer, Key, Output


class SolidMask(Anonymizer):
    uses_face_mask = True
    cache_outputs = False  # a closed-form image operation: recomputed, not cached (Anonymizer.cache_outputs)

    def __init__(
        self,
        color: tuple[float, float, float] | float = 0.0,
        *,
        name: str | None = None,
        box_margin: float = 0.1,
    ) -> None:
        c = (float(color),) * 3 if isinstance(color, (int, float)) else tuple(float(v) for v in color)
        if len(c) != 3 or not all(0.0 <= v <= 1.0 for v in c):
            raise ValueError("color must be one value or an RGB triple in [0, 1]")
        self.color = c
        self.box_margin = check_param("box_margin", box_margin)
        self.name = name or "mask_" + "_".join(f"{v:g}" for v in c)

    def config(self) -> dict:
        return {"name": self.name, "family": "mask", "color": list(self.color), "box_margin": self.box_margin}

    def _anonymize(
        self, images: torch.Tensor, keys: Sequence[Key], face_masks: torch.Tensor | None
    ) -> Output:
        region, info = face_region(images, face_masks, self.box_margin)
        fill = torch.tensor(self.color, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return Output(
            composite(images, fill.expand_as(images), region),
            ok=torch.ones(len(keys), dtype=torch.bool),
            info=info,
        )
