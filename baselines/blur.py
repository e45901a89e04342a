"""Gaussian blur of the face region (sigma in pixels at the working resolution)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from baselines._region import check_param, composite, face_region
from g2face_eval.anonymizer import Anonymizer, Key, Output


def gaussian_kernel1d(sigma: float, truncate: float = 3.0) -> torch.Tensor:
    radius = max(1, int(truncate * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


def _blur_matrix(n: int, k: torch.Tensor) -> torch.Tensor:
    """(n, n) matrix M with (row @ M) = the row convolved with ``k`` under edge replication."""
    r = (k.numel() - 1) // 2
    j = torch.arange(n).view(1, -1)
    t = torch.arange(k.numel()).view(-1, 1)
    src = (j + t - r).clamp(0, n - 1)  # (taps, n): the input index each tap of output j reads
    m = torch.zeros(n, n, dtype=torch.float64)
    m.index_put_(
        (src.reshape(-1), j.expand_as(src).reshape(-1)),
        k.double().view(-1, 1).expand_as(src).reshape(-1),
        accumulate=True,
    )
    return m


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with edge replication (scipy.ndimage.gaussian_filter, mode "nearest",
    truncate 3), for kernels of any size (larger than the image too). Each pass is one matrix product with the
    (size x size) blur operator: ~25x faster on CPU than a direct 1-D convolution for sigma 64 at 256 px."""
    if sigma <= 0:
        return images.clone()
    k = gaussian_kernel1d(sigma)
    h, w = images.shape[-2:]
    mw = _blur_matrix(w, k).to(images.device, images.dtype)
    mh = mw if h == w else _blur_matrix(h, k).to(images.device, images.dtype)
    return mh.T @ (images @ mw)


class GaussianBlur(Anonymizer):
    uses_face_mask = True
    cache_outputs = False  # a closed-form image operation: recomputed, not cached (Anonymizer.cache_outputs)

    def __init__(self, sigma: float = 8.0, *, name: str | None = None, box_margin: float = 0.1) -> None:
        # beyond ~10x any image side the blur is the image's mean; a huge sigma would only build huge matrices
        self.sigma = check_param("sigma", sigma, maximum=1e4)
        self.box_margin = check_param("box_margin", box_margin)
        self.name = name or f"blur_s{sigma:g}"

    def config(self) -> dict:
        return {"name": self.name, "family": "blur", "sigma": self.sigma, "box_margin": self.box_margin}

    def _anonymize(self, images: torch.Tensor, keys: Sequence[Key], face_masks: torch.Tensor | None) -> Output:
        region, info = face_region(images, face_masks, self.box_margin)
        out = composite(images, gaussian_blur(images, self.sigma), region)
        return Output(out, ok=torch.ones(len(keys), dtype=torch.bool), info=info)
