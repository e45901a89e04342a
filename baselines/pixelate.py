"""Pixelation of the face region: the region's bounding box is averaged into ``blocks`` x ``blocks`` cells
(fewer blocks = stronger), and only the pixels inside the region are replaced."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from baselines._region import bbox_of, check_param, composite, face_region
from g2face_eval.anonymizer import Anonymizer, Key, Output


def pixelate_box(image: torch.Tensor, box: tuple[int, int, int, int], blocks: int) -> torch.Tensor:
    """Pixelate the (y0,y1,x0,x1) box of a (3,H,W) image into at most blocks x blocks cells."""
    y0, y1, x0, x1 = box
    crop = image[:, y0:y1, x0:x1][None]
    gh, gw = min(blocks, y1 - y0), min(blocks, x1 - x0)
    small = F.adaptive_avg_pool2d(crop, (gh, gw))
    big = F.interpolate(small, size=(y1 - y0, x1 - x0), mode="nearest")
    out = image.clone()
    out[:, y0:y1, x0:x1] = big[0]
    return out


class Pixelate(Anonymizer):
    uses_face_mask = True
    cache_outputs = False  # a closed-form image operation: recomputed, not cached (Anonymizer.cache_outputs)

    def __init__(self, blocks: int = 16, *, name: str | None = None, box_margin: float = 0.1) -> None:
        self.blocks = check_param("blocks", blocks, minimum=1, integer=True)
        self.box_margin = check_param("box_margin", box_margin)
        self.name = name or f"pixelate_{self.blocks}"

    def config(self) -> dict:
        return {"name": self.name, "family": "pixelate", "blocks": self.blocks, "box_margin": self.box_margin}

    def _anonymize(
        self, images: torch.Tensor, keys: Sequence[Key], face_masks: torch.Tensor | None
    ) -> Output:
        region, info = face_region(images, face_masks, self.box_margin)
        mod = images.clone()
        for i in range(images.shape[0]):
            box = bbox_of(region[i, 0] > 0.5)
            if box is not None:
                mod[i] = pixelate_box(images[i], box, self.blocks)
        return Output(composite(images, mod, region), ok=torch.ones(len(keys), dtype=torch.bool), info=info)
