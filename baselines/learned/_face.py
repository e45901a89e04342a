"""Cheap face geometry for the learned baselines, from the project's landmark geometry prior
(``g2face_eval/models/geometry.py``: 468 mediapipe-topology landmarks regressed from the image).

* ``landmarks2d(geometry, x_m11)``: (B,468,2) posed landmarks in normalised image units (x/W, y/W).
* ``ellipse_mask(lm, size, k)``: (B,1,S,S) {0,1} face region — the ellipse with the landmarks' mean and
  covariance, at Mahalanobis radius ``k`` (2 is the boundary of a uniformly filled ellipse).
* ``keypoint_maps(lm, size, sigma)``: (B,K,S,S) Gaussian heatmaps of a few sparse keypoints (eye corners, nose
  tip, mouth corners, lip centres, chin, forehead): the DeepPrivacy-style pose/expression condition that carries
  little identity.
"""

from __future__ import annotations

import torch

# mediapipe face-mesh indices: eye corners (33, 133, 362, 263), nose tip (1), mouth corners (61, 291),
# upper/lower lip centre (13, 14), chin (152), forehead (10)
KEYPOINTS: tuple[int, ...] = (33, 133, 362, 263, 1, 61, 291, 13, 14, 152, 10)


@torch.no_grad()
def landmarks2d(geometry, x_m11: torch.Tensor) -> torch.Tensor:
    c = geometry.coefficients(x_m11.float())
    return geometry.landmarks3d(c)[..., :2].float()


def _grid(size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    t = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    return torch.meshgrid(t, t, indexing="ij")  # (yy, xx)


def ellipse_mask(lm: torch.Tensor, size: int, k: float | torch.Tensor = 2.2) -> torch.Tensor:
    mu = lm.mean(1, keepdim=True)
    d = lm - mu
    cov = d.transpose(1, 2) @ d / lm.shape[1] + 1e-6 * torch.eye(2, device=lm.device)
    inv = torch.linalg.inv(cov)
    yy, xx = _grid(size, lm.device)
    p = torch.stack([xx, yy], -1).reshape(1, -1, 2) - mu  # (B, S*S, 2)
    m2 = ((p @ inv) * p).sum(-1)
    k = torch.as_tensor(k, dtype=torch.float32, device=lm.device).reshape(-1, 1)
    return (m2 < k ** 2).float().reshape(-1, 1, size, size)


def keypoint_maps(lm: torch.Tensor, size: int, sigma_px: float = 1.5) -> torch.Tensor:
    pts = lm[:, list(KEYPOINTS)]  # (B,K,2)
    yy, xx = _grid(size, lm.device)
    dx = xx[None, None] - pts[..., 0, None, None]
    dy = yy[None, None] - pts[..., 1, None, None]
    s = sigma_px / size
    return torch.exp(-(dx ** 2 + dy ** 2) / (2 * s * s))
