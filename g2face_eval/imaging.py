"""Image conventions, declared once.

* A single image on the host is ``np.ndarray`` of dtype uint8, shape (H, W, 3), RGB channel order.
* A batch for models, anonymizers and metrics is a ``torch.Tensor`` float32 of shape (B, 3, H, W), RGB,
  with values in ``RANGE`` = [0, 1]. Models that want another range (e.g. G2Face's [-1, 1], OpenCV's BGR
  uint8) convert at their own boundary and declare it in their weight entry.
"""

from __future__ import annotations

import math

import numpy as np
import torch

RANGE: tuple[float, float] = (0.0, 1.0)


def to_tensor(images: np.ndarray | list[np.ndarray]) -> torch.Tensor:
    """uint8 HWC RGB image(s) -> float32 BCHW in [0, 1]."""
    arr = np.stack(images) if isinstance(images, list) else images
    if arr.ndim == 3:
        arr = arr[None]
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected uint8 (B,H,W,3) RGB images, got {arr.dtype} {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div_(255.0)


def to_uint8(batch: torch.Tensor) -> np.ndarray:
    """float BCHW in [0, 1] -> uint8 BHWC RGB (rounded, clipped)."""
    check_batch(batch, allow_out_of_range=True)
    return batch.detach().float().clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def check_batch(batch: torch.Tensor, *, allow_out_of_range: bool = False, upper: float = RANGE[1]) -> torch.Tensor:
    """Refuse tensors that would silently produce garbage: wrong rank/channels/dtype, NaN or inf values, values
    outside [0, ``upper``] (default the images' [0, 1]; a metric passes its ``data_range``) unless
    ``allow_out_of_range``."""
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor batch, got {type(batch).__name__}")
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"expected a (B,3,H,W) RGB batch, got shape {tuple(batch.shape)}")
    if not batch.is_floating_point():
        raise TypeError(f"expected a floating-point batch in [0, 1], got dtype {batch.dtype}")
    if batch.numel() == 0:
        return batch
    lo, hi = (float(v) for v in torch.aminmax(batch.detach()))  # one pass; NaN propagates into both
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("batch contains NaN or inf values")
    tol = 1e-6 * max(1.0, float(upper))
    if not allow_out_of_range and (lo < RANGE[0] - tol or hi > upper + tol):
        raise ValueError(f"batch values must lie in [{RANGE[0]:g}, {upper:g}], got [{lo:.3g}, {hi:.3g}]")
    return batch
