"""Gaussian blur of the face region (sigma in pixels at the working resolution)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from baselines._region import composite, face_region
from g2face_eval.anonymizer import Anonymizer, Key, Output


def gaussian_kernel1d(sigma: float, truncate: float = 3.0) -> torch.Tensor:
    radius = max(1, int(truncate * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with edge replication; works for kernels larger than the image."""
    if sigma <= 0:
        return images.clone()
    k = gaussian_kernel1d(sigma).to(images.device, images.dtype)
    r = (k.numel() - 1) // 2
    b, c, h, w = images.shape
    x = images.reshape(b * c, 1, h, w)
    # replicate padding in chunks (F.pad "replicate" has no size limit, unlike "reflect")
    x = F.pad(x, (r, r, 0, 0), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, r, r), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    return x.reshape(b, c, h, w)


class GaussianBlur(Anonymizer):
    uses_face_mask = True

    def __init__(self, sigma: float = 8.0, *, name: str | None = None, box_margin: float = 0.1) -> None:
        if sigma < 0:
            raise ValueError("sigma must be >= 0")
        self.sigma = float(sigma)
        self.box_margin = float(box_margin)
        self.name = name or f"blur_s{sigma:g}"

    def config(self) -> dict:
        return {"name": self.name, "family": "blur", "sigma": self.sigma, "box_margin": self.box_margin}

    def _anonymize(
        self, images: torch.Tensor, keys: Sequence[Key], face_masks: torch.Tensor | None
    ) -> Output:
        region, info = face_region(images, face_masks, self.box_margin)
        out = composite(images, gaussian_blur(images, self.sigma), region)
        return Output(out, ok=torch.ones(len(keys), dtype=torch.bool), info=info)
