"""Per-image fidelity metrics on (B,3,H,W) float batches: PSNR, SSIM and LPIPS.

* ``psnr(a, b, data_range)`` -> (B,) float64 tensor: 10 log10(R^2 / MSE), MSE over all pixels and channels
  (as ``skimage.metrics.peak_signal_noise_ratio``); identical images give +inf.
* ``ssim(a, b, data_range)`` -> (B,) float64 tensor, equal to
  ``skimage.metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=R, channel_axis=-1)``: 11x11 gaussian window (sigma 1.5, truncate 3.5 -> radius 5), K1 0.01,
  K2 0.03, population covariance, SSIM map averaged per channel over the interior (skimage crops a 5-pixel
  border, which is exactly the set of positions whose window lies inside the image, so a 'valid'
  convolution reproduces it without any padding choice), then averaged over channels. Computed in float64
  on the CPU (OpenCV's separable filter: the border rows it pads are cropped, so its padding mode never
  enters the result); a CUDA batch is copied to the host.
* ``LPIPS(net="alex"|"vgg")``: the ``lpips`` package's linear heads (shipped inside it) on a backbone loaded
  from  the zoo's user file ("lpips_alex" / "lpips_vgg": a torchvision alexnet / vgg16 state dict) — never
  downloaded. A missing backbone raises ``MetricUnavailable``.
"""

from __future__ import annotations

import math
import re

import torch

from g2face_eval.imaging import check_batch
from g2face_eval.metrics.base import MetricUnavailable


def _pair(a: torch.Tensor, b: torch.Tensor) -> None:
    check_batch(a, allow_out_of_range=True)
    check_batch(b, allow_out_of_range=True)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")


def _check_range(data_range: float) -> float:
    if data_range is None or not (float(data_range) > 0):
        raise ValueError("data_range must be given explicitly and be > 0")
    return float(data_range)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float) -> torch.Tensor:
    r = _check_range(data_range)
    _pair(a, b)
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return (10.0 * torch.log10(r * r / mse)).detach()  # mse == 0 -> +inf, as skimage


def _gaussian_1d(sigma: float, truncate: float, dtype, device) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)  # as scipy.ndimage
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    data_range: float,
    *,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    r = _check_range(data_range)
    _pair(a, b)
    import cv2
    import numpy as np

    B, C, H, W = a.shape
    # float32 filtering of the images scaled to [0, 1] (SSIM is scale-free when C1, C2 scale with the range):
    # ~2x faster than float64, within 1e-5 of skimage on real faces (tests/test_metrics_image.py)
    g = _gaussian_1d(sigma, 3.5, torch.float64, "cpu").numpy().astype(np.float32)
    p = g.size // 2
    if H < g.size or W < g.size:
        raise ValueError(f"ssim needs images of at least {g.size}x{g.size}, got {H}x{W}")
    x = (a.detach().double().cpu() / r).float().reshape(B * C, H, W).numpy()
    y = (b.detach().double().cpu() / r).float().reshape(B * C, H, W).numpy()
    c1, c2 = k1**2, k2**2

    def filt(t: np.ndarray) -> np.ndarray:  # separable gaussian (OpenCV), 'valid' region only
        return cv2.sepFilter2D(t, cv2.CV_32F, g, g, borderType=cv2.BORDER_REFLECT)[p : H - p, p : W - p]

    out = np.empty(B * C)
    for i in range(B * C):  # one channel at a time: the working set stays in cache
        xi, yi = x[i], y[i]
        ux, uy = filt(xi), filt(yi)
        uxx, uyy, uxy = filt(xi * xi), filt(yi * yi), filt(xi * yi)
        vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
        out[i] = s.mean(dtype=np.float64)
    return torch.from_numpy(out.reshape(B, C).mean(1))


# ---- LPIPS -------------------------------------------------------------------------------------------------
_ZOO_NAME = {"alex": "lpips_alex", "vgg": "lpips_vgg"}


def _backbone_state(raw: dict, net_module: torch.nn.Module) -> dict:
    """Map a torchvision ``alexnet``/``vgg16`` state dict (``features.<i>.weight``; ``classifier.*`` ignored)
    — or    one already keyed like lpips' ``slice<k>.<i>.weight`` — onto lpips' sliced backbone."""
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]
    target = net_module.state_dict()
    index = {}  # features index -> slice key prefix
    for k in target:
        m = re.match(r"(slice\d+)\.(\d+)\.(.+)$", k)
        if m:
            index[(m.group(2), m.group(3))] = k
    out = {}
    for k, v in raw.items():
        k2 = k[len("module.") :] if k.startswith("module.") else k
        k2 = k2[len("net.") :] if k2.startswith("net.") else k2
        m = re.match(r"features\.(\d+)\.(.+)$", k2)
        if m and (m.group(1), m.group(2)) in index:
            out[index[(m.group(1), m.group(2))]] = v
        elif k2 in target:
            out[k2] = v
    missing = sorted(set(target) - set(out))
    if missing:
        raise ValueError(f"backbone file lacks {len(missing)} tensors, e.g. {missing[:3]}")
    return out


class LPIPS(torch.nn.Module):
    """``LPIPS(net)(a, b, data_range) -> (B,)``; inputs in [0, data_range] are mapped to lpips' [-1, 1]."""

    def __init__(
        self, net: str = "alex", device: str | torch.device = "cpu", weights_path: str | None = None
    ) -> None:
        super().__init__()
        if net not in _ZOO_NAME:
            raise ValueError(f"LPIPS net must be 'alex' or 'vgg', got {net!r}")
        self.net_name = net
        from g2face_eval import zoo

        self.input_spec = zoo.WEIGHTS.get(_ZOO_NAME[net]).input
        if weights_path is None:  # normal route: the zoo's verified user file
            name = _ZOO_NAME[net]
            try:
                path = zoo.path(name)
            except Exception as e:  # WeightMissingError / WeightIntegrityError / unknown entry
                raise MetricUnavailable(f"LPIPS-{net} backbone unavailable ({name}): {e}") from e
        else:  # explicit file (tests, custom backbones): same loading code, no digest check
            path = weights_path
        import warnings

        import lpips

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision 'pretrained' deprecation inside lpips
            # pnet_rand=True: torchvision builds the backbone without downloading; the linear heads come from
            # the weights shipped inside the lpips package (pretrained=True).
            model = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)
        raw = torch.load(path, map_location="cpu", weights_only=True)
        model.net.load_state_dict(_backbone_state(raw, model.net), strict=True)
        model.eval().requires_grad_(False)
        self.model = model.to(device)
        self.weights_path = str(path)

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor, data_range: float) -> torch.Tensor:
        r = _check_range(data_range)
        _pair(a, b)
        dev = next(self.model.parameters()).device
        spec = self.input_spec  # [-1, 1], declared by the backbone's zoo entry
        x, y = spec.normalize(a.to(dev).float(), r), spec.normalize(b.to(dev).float(), r)
        return self.model(x, y).flatten().double().cpu()


def psnr_value(mse: float, data_range: float) -> float:
    """PSNR for a precomputed MSE (helper for callers that aggregate MSE themselves)."""
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)
