"""Per-image fidelity metrics on (B,3,H,W) float batches: PSNR, SSIM and LPIPS.

* ``psnr(a, b, data_range)`` -> (B,) float64 tensor: 10 log10(R^2 / MSE), MSE over all pixels and channels
  (as ``skimage.metrics.peak_signal_noise_ratio``); identical images give +inf. uint8 batches (R = 255) get an
  exact integer MSE.
* ``ssim(a, b, data_range)`` -> (B,) float64 tensor, equal to
  ``skimage.metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=R, channel_axis=-1)``: 11x11 gaussian window (sigma 1.5, truncate 3.5 -> radius 5), K1 0.01,
  K2 0.03, population covariance, SSIM map averaged per channel over the interior (skimage crops a 5-pixel
  border, which is exactly the set of positions whose window lies inside the image, so a 'valid'
  convolution reproduces it without any padding choice), then averaged over channels. Computed on the CPU
  in float32 (OpenCV's separable filter; the border rows it pads are cropped, so its padding mode never
  enters the result), within ~4e-6 of skimage's float64 on real faces (tests); a CUDA batch is copied to the
  host.
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


def _pair(a: torch.Tensor, b: torch.Tensor, data_range: float) -> None:
    """Two float batches of one shape with values in [0, data_range]: a range that does not match the data
    (0..255 values with data_range 1, or the reverse) would give a plausible-looking wrong number."""
    try:
        check_batch(a, upper=data_range)
        check_batch(b, upper=data_range)
    except ValueError as e:
        if "must lie in" in str(e):
            raise ValueError(f"{e}: the data do not match data_range={data_range:g}") from None
        raise
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")


def _check_range(data_range: float) -> float:
    if data_range is None or not (float(data_range) > 0):
        raise ValueError("data_range must be given explicitly and be > 0")
    return float(data_range)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float) -> torch.Tensor:
    """Float batches, or two uint8 (B,3,H,W) batches (8-bit images, ``data_range`` 255 for their full range),
    whose squared errors are summed exactly in integers."""
    r = _check_range(data_range)
    if a.dtype == torch.uint8 or b.dtype == torch.uint8:
        if a.dtype != b.dtype or a.ndim != 4 or a.shape[1] != 3 or a.shape != b.shape:
            raise ValueError(f"expected two uint8 (B,3,H,W) batches of one shape, got {a.dtype} {tuple(a.shape)} "
                             f"and {b.dtype} {tuple(b.shape)}")
        if r != 255.0:  # 8-bit values span 0..255: another range gives a wrong number (1 gave -21 dB)
            raise ValueError(f"uint8 batches span 0..255: data_range must be 255, got {data_range!r}")
        d = a.detach().cpu().to(torch.int32) - b.detach().cpu().to(torch.int32)
        mse = d.mul_(d).flatten(1).sum(1, dtype=torch.int64).double() / max(1, a[0:1].numel())
    else:
        _pair(a, b, r)
        mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return (10.0 * torch.log10(r * r / mse)).detach()  # mse == 0 -> +inf, as skimage


def _gaussian_1d(sigma: float, truncate: float, dtype, device) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)  # as scipy.ndimage
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _unit_float32(t: torch.Tensor, r: float, w: int):
    """``t`` (B,C,H,W) as a (B*C*H, W) float32 host array in units of the data range, and the float32 divisor
    still to apply to it (None: already divided). A float32 batch with a float32-representable range is used
    without a copy and divided image by image by the caller: float32 division is correctly rounded, so it gives
    bit for bit the float64 division rounded to float32 that other inputs get here."""
    import numpy as np

    t = t.detach().cpu()
    if t.dtype == torch.float32 and float(np.float32(r)) == r:
        return t.reshape(-1, w).numpy(), (None if r == 1.0 else np.float32(r))
    return (t.double() / r).float().reshape(-1, w).numpy(), None


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
    _pair(a, b, r)
    import cv2
    import numpy as np

    B, C, H, W = a.shape
    # float32 filtering of the images scaled to [0, 1] (SSIM is scale-free when C1, C2 scale with the range),
    # on s = x + y - 1 and d = x - y rather than x and y: 4 filterings instead of 5 (SSIM needs only
    # ux uy, ux^2 + uy^2, var x + var y and cov, which are linear in the moments of s and d), and the second
    # moments are of values centred on 0.5 (|s|, |d| <= 1 instead of x^2 up to 1 beside variances ~1e-4),
    # which shrinks float32 cancellation: within ~4e-6 of skimage on real faces (tests/test_metrics_image.py).
    # Exactly symmetric in a, b (d only changes sign) and exactly 1 for a == b (d == 0).
    g = _gaussian_1d(sigma, 3.5, torch.float64, "cpu").numpy().astype(np.float32)
    p = g.size // 2
    if H < g.size or W < g.size:
        raise ValueError(f"ssim needs images of at least {g.size}x{g.size}, got {H}x{W}")
    x, rx = _unit_float32(a, r, W)
    y, ry = _unit_float32(b, r, W)
    c1, c2 = k1**2, k2**2
    n = C * H  # one image (all its channels stacked vertically) at a time: the valid region of each channel
    # only reads that channel's rows, so filtering the stack is exact; the working set stays in cache
    s, d, s2, d2, us, ud, fs2, fd2, ln, ld = (np.empty((n, W), np.float32) for _ in range(10))
    xr = np.empty((n, W), np.float32) if rx is not None else None
    yr = np.empty((n, W), np.float32) if ry is not None else None
    f32, border = cv2.CV_32F, cv2.BORDER_REFLECT  # the padded border rows are cropped: the mode never matters
    out = np.empty(B * C)
    for i in range(B):
        xi, yi = x[i * n : (i + 1) * n], y[i * n : (i + 1) * n]
        if rx is not None:
            xi = np.divide(xi, rx, out=xr)
        if ry is not None:
            yi = np.divide(yi, ry, out=yr)
        cv2.add(xi, yi, dst=s)
        cv2.subtract(s, 1.0, dst=s)  # s = (x - 1/2) + (y - 1/2)
        cv2.subtract(xi, yi, dst=d)  # d = (x - 1/2) - (y - 1/2)
        cv2.multiply(s, s, dst=s2)
        cv2.multiply(d, d, dst=d2)
        cv2.sepFilter2D(s, f32, g, g, dst=us, borderType=border)  # us = ux + uy - 1, ud = ux - uy
        cv2.sepFilter2D(d, f32, g, g, dst=ud, borderType=border)
        cv2.sepFilter2D(s2, f32, g, g, dst=fs2, borderType=border)
        cv2.sepFilter2D(d2, f32, g, g, dst=fd2, borderType=border)
        cv2.multiply(us, us, dst=s2)
        cv2.multiply(ud, ud, dst=d2)
        cv2.subtract(fs2, s2, dst=fs2)  # var s = var x + var y + 2 cov
        cv2.subtract(fd2, d2, dst=fd2)  # var d = var x + var y - 2 cov
        cv2.addWeighted(fs2, 0.5, fd2, 0.5, c2, dst=s)  # var x + var y + C2
        cv2.addWeighted(fs2, 0.5, fd2, -0.5, c2, dst=d)  # 2 cov + C2
        cv2.addWeighted(s2, 0.5, d2, -0.5, 0.5 + c1, dst=ln)
        cv2.add(ln, us, dst=ln)  # 2 ux uy + C1 = (us^2 - ud^2) / 2 + us + 1/2 + C1
        cv2.add(ln, d2, dst=ld)  # ux^2 + uy^2 + C1 = 2 ux uy + C1 + ud^2
        cv2.multiply(ln, d, dst=ln)
        cv2.multiply(ld, s, dst=ld)
        cv2.divide(ln, ld, dst=ln)  # the SSIM map
        m = ln.reshape(C, H, W)
        for j in range(C):  # mean over the interior (cv2.mean accumulates in float64)
            out[i * C + j] = cv2.mean(m[j, p : H - p, p : W - p])[0]
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
        _pair(a, b, r)
        dev = next(self.model.parameters()).device
        spec = self.input_spec  # [-1, 1], declared by the backbone's zoo entry
        x, y = spec.normalize(a.to(dev).float(), r), spec.normalize(b.to(dev).float(), r)
        return self.model(x, y).flatten().double().cpu()


def psnr_value(mse: float, data_range: float) -> float:
    """PSNR for a precomputed MSE (helper for callers that aggregate MSE themselves)."""
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)
