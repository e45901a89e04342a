"""StyleGAN2 building blocks in pure PyTorch (no custom CUDA ops).

Our own implementation of the layers of Karras et al. (StyleGAN2) with the module/attribute layout of the
widely used "rosinality" port, so that state-dict names equal those of the official G2Face checkpoint
(see /work/shared/reference/g2face_official_state_dicts.json).

Design for fast inference:
* every constant (FIR kernels) is a registered buffer built once in ``__init__``; the FIR layers also keep the
  kernel pre-flipped and pre-shaped for the depthwise conv as a non-persistent buffer (``kernel_flipped``;
  state dicts are unchanged), refreshed when the state dict is loaded;
* the FIR layers (``Blur``, ``Upsample``) filter separably with two matrix products (``fir_matrix``: the
  (out, in) matrix of upsample -> pad -> filter -> downsample along one axis, built once per input size, dtype
  and device), in either memory layout: on the H200 a depthwise 4x4 convolution ran at ~200 GB/s in NCHW and
  ~60 GB/s in channels_last, and was the largest non-convolution cost of the generator. ``upfirdn2d`` (reshape +
  pad + depthwise conv) is the direct formulation: the reference the matrices are tested against, the path of a
  non-separable kernel, and what ``direct_fir()`` selects so FLOP counts state the filter's nominal cost
  (16 multiply-adds per output) rather than the banded matrices' ~4-65x more; while ``torch.compile`` traces,
  they run as ``fir_stencil`` (shifted weighted slices that inductor fuses; the host-built matrices would break
  the graph at every FIR layer);
* inference weight cache (``cache_weights``, off by default; ``G2Face.set_inference_cache`` turns it on for the
  fast path): equalised-lr scaled weights, the demodulation weight norms and their casts to the activation dtype
  are computed once and reused while no gradient is recorded; an entry is rebuilt when its source parameter
  changes (in-place update = version counter, ``.data`` swap or ``.to()`` = storage pointer), so training,
  ``load_state_dict`` and device moves invalidate it. Under ``torch.compile`` the cache is bypassed (inductor
  fuses the recomputation);
* modulated convolution uses the "input scaling" formulation (scale activations by the style, convolve with the
  shared weight, scale outputs by the demodulation coefficients), which is mathematically identical to the
  per-sample weight formulation but is one dense conv for the whole batch. The demodulation coefficients are
  computed in float32 even under autocast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)


# ----------------------------------------------------------------------------------------------- FIR ops
def make_kernel(k: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Separable FIR kernel from 1-D taps, normalised to sum 1 (2-D input is normalised as given)."""
    k = torch.as_tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


def flip_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """(kh, kw) FIR kernel -> (1, 1, kh, kw) flipped: the depthwise-conv weight of a true convolution."""
    return torch.flip(kernel, [0, 1]).reshape(1, 1, *kernel.shape[-2:]).contiguous()


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0), flipped: bool = False) -> torch.Tensor:
    """Upsample (zero insertion) -> pad -> FIR filter (true convolution, kernel flipped) -> downsample.

    ``pad`` = (pad0, pad1) is applied to both spatial axes, negative values crop. Pure PyTorch; the kernel is
    cast to ``x.dtype`` (so it works under autocast and for half-precision modules). ``flipped=True``: the
    kernel is already ``flip_kernel(k)`` (the FIR modules keep it as a buffer, so no per-call flip).
    """
    b, c, h, w = x.shape
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(b, c, h * up, w * up)
    p0, p1 = pad
    if p0 > 0 or p1 > 0:
        x = F.pad(x, (max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)))
    if p0 < 0 or p1 < 0:
        hh, ww = x.shape[-2:]
        x = x[:, :, max(-p0, 0): hh - max(-p1, 0), max(-p0, 0): ww - max(-p1, 0)]
    kf = kernel if flipped else flip_kernel(kernel)
    kh, kw = kf.shape[-2:]
    weight = kf.to(x.dtype).view(1, 1, kh, kw).expand(c, 1, kh, kw)
    return F.conv2d(x, weight, stride=down, groups=c)


_DIRECT_FIR = False


@contextmanager
def direct_fir():
    """Inside: the FIR layers use the direct depthwise formulation (``upfirdn2d``), e.g. for FLOP counting."""
    global _DIRECT_FIR
    old, _DIRECT_FIR = _DIRECT_FIR, True
    try:
        yield
    finally:
        _DIRECT_FIR = old


def separable_taps(kernel: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(vertical, horizontal) 1-D taps of a rank-1 2-D FIR kernel, as a true convolution applies them
    (outer(v, h) == kernel), or None when the kernel is not separable."""
    k = kernel.detach().double().cpu()
    if k.ndim != 2 or not torch.isfinite(k).all() or float(k.abs().sum()) == 0:
        return None
    r = int(k.abs().sum(1).argmax())                    # a row with the largest mass
    v = k[:, int(k[r].abs().argmax())] / k[r, int(k[r].abs().argmax())]
    h = k[r]
    if not torch.allclose(torch.outer(v, h), k, rtol=1e-6, atol=1e-9 * float(k.abs().max())):
        return None
    return tuple(float(t) for t in v), tuple(float(t) for t in h)


def fir_matrix(taps: Sequence[float], n_in: int, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)
               ) -> torch.Tensor:
    """(n_out, n_in) float64 matrix of ``upfirdn2d`` along one axis: zero-insertion by ``up``, padding
    ``pad`` (negative crops), true convolution with ``taps``, keeping every ``down``-th sample."""
    p0, p1 = pad
    n_up = n_in * up
    k = len(taps)
    n_out = (n_up + p0 + p1 - k) // down + 1
    if n_out < 1:
        raise ValueError(f"FIR output would be empty (n_in={n_in}, up={up}, down={down}, pad={pad}, taps={k})")
    m = np.zeros((n_out, n_in))
    flipped = taps[::-1]                                # correlation taps
    for i in range(n_out):
        for t in range(k):
            q = i * down + t - p0                       # index into the upsampled, unpadded signal
            if 0 <= q < n_up and q % up == 0:
                m[i, q // up] += flipped[t]
    return torch.from_numpy(m)


def _left_matmul(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """m (r, n) applied to every (n, k) matrix x[i] of x (N, n, k): one strided batched GEMM (m not copied)."""
    return torch.bmm(m.expand(x.shape[0], -1, -1), x)


def upfirdn2d_separable(x: torch.Tensor, mh: torch.Tensor, mw: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) -> mh @ x @ mw.T per channel; channels_last in -> channels_last out, else contiguous.

    ``mh`` (Ho, Hp) and ``mw`` (Wo, Wp) may carry zero columns beyond H / W (Hp, Wp >= H, W): the GEMMs then
    see 16-byte aligned leading dimensions (on the H200 a K of 257 fell back to a slow pre-Hopper kernel)."""
    b, c, h, w = x.shape
    ho, wo = mh.shape[0], mw.shape[0]
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        xp = x.permute(0, 2, 3, 1)                                          # (B,H,W,C) contiguous
        y = _left_matmul(mw[:, :w], xp.reshape(b * h, w, c))                # along W: (B*H, Wo, C)
        z = _left_matmul(mh[:, :h], y.view(b, h, wo * c))                   # along H: (B, Ho, Wo*C)
        return z.view(b, ho, wo, c).permute(0, 3, 1, 2)
    x = x.contiguous()
    if mw.shape[1] != w:                                                    # x is the GEMM's A: pad its rows
        x = F.pad(x, (0, mw.shape[1] - w))
    y = torch.matmul(x, mw.t())                                             # along W: (B,C,H,Wo), one GEMM
    return _left_matmul(mh[:, :h], y.view(b * c, h, wo)).view(b, c, ho, wo)


def fir_stencil(x: torch.Tensor, taps_v: Sequence[float], taps_h: Sequence[float], up: int = 1, down: int = 1,
                pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """``upfirdn2d`` with a separable kernel as weighted sums of shifted slices, one axis at a time (along W with
    ``taps_h``, then along H with ``taps_v``; zero insertion, pad / crop, true convolution, decimation). Many
    passes in eager mode, but traceable without host work: under ``torch.compile`` inductor fuses each axis into
    one pointwise kernel that reads its neighbours in place, in either memory layout (no layout copies, unlike
    the matrix products, whose per-size matrices are built on the host; see ``FIR_UNDER_COMPILE``)."""
    p0, p1 = pad

    def along(t: torch.Tensor, taps: Sequence[float], last: bool) -> torch.Tensor:
        dim = t.dim() - 1 if last else t.dim() - 2
        if up > 1:                                                      # zero insertion
            s = list(t.shape)
            t = t.unsqueeze(dim + 1)
            t = F.pad(t, (0, up - 1) if last else (0, 0, 0, up - 1))
            s[dim] *= up
            t = t.reshape(s)
        if p0 > 0 or p1 > 0:
            t = F.pad(t, (max(p0, 0), max(p1, 0)) if last else (0, 0, max(p0, 0), max(p1, 0)))
        if p0 < 0 or p1 < 0:
            t = t.narrow(dim, max(-p0, 0), t.shape[dim] - max(-p0, 0) - max(-p1, 0))
        n_out = t.shape[dim] - len(taps) + 1
        out = None
        for i, c in enumerate(reversed(tuple(taps))):                  # correlation taps
            if c == 0:
                continue
            term = t.narrow(dim, i, n_out) * c
            out = term if out is None else out + term
        if down > 1:
            out = out[..., ::down] if last else out[..., ::down, :]
        return out

    return along(along(x, taps_h, True), taps_v, False)


# How a separable FIR runs while torch.compile traces: "stencil" (``fir_stencil``, fused by inductor, no graph
# break) or "matmul" (``upfirdn2d_separable``, the eager form; its matrices are built on the host, so every FIR
# layer is a graph break). Read at trace time.
FIR_UNDER_COMPILE = "stencil"


class _FIR(nn.Module):
    """Base of the FIR modules: persistent ``kernel`` (state-dict key) + non-persistent ``kernel_flipped``;
    separable kernels run as two matrix products (``fir_matrix``, cached per input size / dtype / device)."""

    up, down = 1, 1

    def _set_kernel(self, k: torch.Tensor) -> None:
        self.register_buffer("kernel", k)
        self.register_buffer("kernel_flipped", flip_kernel(k), persistent=False)
        self._refresh_taps()

    def _refresh_taps(self) -> None:
        self.taps = separable_taps(self.kernel) if self.kernel.device.type != "meta" else None
        self._matrices: dict = {}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        with torch.no_grad():
            self.kernel_flipped = flip_kernel(self.kernel).to(self.kernel_flipped.device)
        self._refresh_taps()

    @torch.compiler.disable
    def _matrix_pair(self, h: int, w: int, dtype: torch.dtype, device: torch.device):
        key = (h, w, dtype, device)
        hit = self._matrices.get(key)
        if hit is None:
            align = 8 if device.type == "cuda" else 1   # zero columns up to a multiple of 8 (GEMM alignment)
            hit = tuple(F.pad(fir_matrix(t, n, self.up, self.down, self.pad), (0, -n % align)).to(device, dtype)
                        for t, n in zip(self.taps, (h, w), strict=True))
            self._matrices[key] = hit
        return hit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.taps is None or _DIRECT_FIR or self.kernel.device.type == "meta":
            return upfirdn2d(x, self.kernel_flipped, up=self.up, down=self.down, pad=self.pad, flipped=True)
        if FIR_UNDER_COMPILE == "stencil" and torch.compiler.is_compiling():
            return fir_stencil(x, *self.taps, up=self.up, down=self.down, pad=self.pad)
        mh, mw = self._matrix_pair(x.shape[-2], x.shape[-1], x.dtype, x.device)
        return upfirdn2d_separable(x, mh, mw)


class Blur(_FIR):
    """FIR blur with a persistent ``kernel`` buffer (scaled by upsample_factor**2 when after an upsampling)."""

    def __init__(self, kernel: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        self.pad = tuple(pad)
        k = make_kernel(kernel)
        if upsample_factor > 1:
            k = k * (upsample_factor ** 2)
        self._set_kernel(k)


class Upsample(_FIR):
    """x2 (or factor) FIR upsampling (used on the ToRGB skip path)."""

    def __init__(self, kernel: Sequence[float], factor: int = 2):
        super().__init__()
        self.factor = self.up = factor
        k = make_kernel(kernel) * (factor ** 2)
        p = k.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)
        self._set_kernel(k)


def state_key(tensors) -> tuple:
    """What identifies the values of ``tensors`` for a cache of results derived from them: each tensor's object,
    storage, device, dtype and version counter (bumped by every in-place change: optimiser steps,
    ``load_state_dict``, ``copy_``); an inference-mode tensor has no version counter and counts by the rest."""
    return tuple((id(t), t.data_ptr(), t.device, t.dtype, 0 if t.is_inference() else t._version) for t in tensors)


def refresh_in_place(old: torch.Tensor | None, new: torch.Tensor, sources=()) -> torch.Tensor:
    """``new``'s values in ``old``'s memory when they have the same shape, dtype, device and strides and ``old``
    shares no storage with a source; else ``new``. A rebuilt cached value then stays where a captured CUDA graph
    reads it (a replaced one would be freed under the graph)."""
    if (old is None or old.shape != new.shape or old.dtype != new.dtype or old.device != new.device
            or old.stride() != new.stride() or (old.is_inference() and not torch.is_inference_mode_enabled())):
        return new                     # (an inference tensor cannot be written outside inference mode)
    ptr = old.untyped_storage().data_ptr()
    if any(s.untyped_storage().data_ptr() == ptr for s in sources):
        return new
    with torch.no_grad():
        old.copy_(new)
    return old


class WeightCache:
    """Mixin: inference cache of tensors derived from parameters (see the module docstring).

    ``self._cached(name, fn, *sources)`` returns ``fn()``, reused while (no grad is recorded) and every source
    keeps its object, version counter, storage pointer and device (``state_key``); a value rebuilt after a
    weight change is written into the old one's memory (``refresh_in_place``). Off unless ``cache_weights``."""

    cache_weights = False

    def _cached(self, name: str, fn, *sources: torch.Tensor) -> torch.Tensor:
        if not self.cache_weights or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return fn()
        key = state_key(sources)
        cache = self.__dict__.setdefault("_weight_cache", {})
        hit = cache.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        val = refresh_in_place(hit[1] if hit is not None else None, fn(), sources)
        cache[name] = (key, val)
        return val

    def clear_weight_cache(self) -> None:
        self.__dict__.pop("_weight_cache", None)


# ------------------------------------------------------------------------------------- equalised layers
def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor | None, negative_slope: float = 0.2,
                     scale: float = SQRT2) -> torch.Tensor:
    if bias is not None:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        x = x + bias.to(x.dtype).view(shape)
    return F.leaky_relu(x, negative_slope) * scale


class FusedLeakyReLU(nn.Module):
    """bias + leaky ReLU(0.2) * sqrt(2); parameter ``bias`` of shape (channels,)."""

    def __init__(self, channels: int, negative_slope: float = 0.2, scale: float = SQRT2):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.negative_slope = negative_slope
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias, self.negative_slope, self.scale)


class ScaledLeakyReLU(nn.Module):
    def __init__(self, negative_slope: float = 0.2):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.negative_slope) * SQRT2


class EqualLinear(WeightCache, nn.Module):
    """Equalised-learning-rate linear layer.

    Weight stored as randn/lr_mul and scaled at runtime by lr_mul/sqrt(in_dim). With ``activation="fused_lrelu"``
    the bias (times lr_mul) is applied once inside the fused leaky ReLU; ``double_bias=True`` reproduces
    G2Face's model/mlp.py variant that adds the bias in the linear op *and* again in the activation.
    """

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: str | None = None, double_bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.zeros(out_dim).fill_(bias_init)) if bias else None
        self.scale = (1.0 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul
        self.activation = activation
        self.double_bias = double_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self._cached("w", lambda: self.weight * self.scale, self.weight)
        b = (self._cached("b", lambda: self.bias * self.lr_mul, self.bias) if self.bias is not None else None)
        if self.activation:
            out = F.linear(x, w, b if self.double_bias else None)
            return fused_leaky_relu(out, b)
        return F.linear(x, w, b)


class EqualConv2d(WeightCache, nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size ** 2)
        self.stride = stride
        self.padding = padding
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self._cached("w", lambda: self.weight * self.scale, self.weight)
        return F.conv2d(x, w, self.bias, stride=self.stride, padding=self.padding)


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


# ------------------------------------------------------------------------------------ synthesis layers
class ModulatedConv2d(WeightCache, nn.Module):
    """Modulated (optionally demodulated) conv; ``upsample`` = stride-2 transposed conv + Blur (pad (1,1)).

    Parameters: ``weight`` (1,out,in,k,k), ``modulation`` (EqualLinear style_dim->in, bias init 1),
    ``blur.kernel`` buffer when upsampling.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, style_dim: int, demodulate: bool = True,
                 upsample: bool = False, blur_kernel: Sequence[float] = (1, 3, 3, 1), eps: float = 1e-8):
        super().__init__()
        self.in_channel, self.out_channel, self.kernel_size = in_ch, out_ch, kernel_size
        self.upsample = upsample
        self.demodulate = demodulate
        self.eps = eps
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        out, d = self.modulated(x, style)
        return out if d is None else out * d.to(out.dtype)[:, :, None, None]

    def modulated(self, x: torch.Tensor, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(conv of the style-scaled input [then blurred], demodulation coefficients (B, out) fp32 or None):
        ``forward`` = their product. The demodulation is a per-(sample, channel) scale, so it commutes with the
        per-channel blur and callers can fuse it into their epilogue (StyledConv)."""
        s = self.modulation(style)                                      # (B, in)
        dt = x.dtype
        xs = x * s.to(dt)[:, :, None, None]
        cl = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        fmt = torch.channels_last if cl else torch.contiguous_format
        if self.upsample:
            wc = self._cached(f"wt_{dt}_{cl}", lambda: self._w().transpose(0, 1).to(dt).contiguous(
                memory_format=fmt), self.weight)
            out = F.conv_transpose2d(xs, wc, stride=2)
        else:
            wc = self._cached(f"w_{dt}_{cl}", lambda: self._w().to(dt).contiguous(memory_format=fmt),
                              self.weight)
            out = F.conv2d(xs, wc, padding=self.padding)
        d = None
        if self.demodulate:
            # demod[b,o] = rsqrt(sum_i s[b,i]^2 * sum_kk w[o,i,kk]^2 + eps), in float32
            wsq_t = self._cached("wsq_t", lambda: self._w().float().pow(2).sum(dim=(2, 3)).t(),
                                 self.weight)                           # (in, out)
            d = torch.rsqrt(s.float().pow(2) @ wsq_t + self.eps)        # (B, out)
        if self.upsample:
            out = self.blur(out)
        return out, d

    def _w(self) -> torch.Tensor:
        return self.weight[0] * self.scale                              # (out, in, k, k)


class NoiseInjection(nn.Module):
    """x + weight * noise; noise is (B,1,H,W). When ``noise`` is None a fresh N(0,1) map is drawn (official)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            b, _, h, w = x.shape
            noise = torch.randn(b, 1, h, w, device=x.device, dtype=x.dtype)
        return x + self.weight.to(x.dtype) * noise.to(x.dtype)


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


class StyledConv(nn.Module):
    """ModulatedConv2d (demodulated) -> NoiseInjection -> FusedLeakyReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, style_dim: int, upsample: bool = False,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1), demodulate: bool = True):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, kernel_size, style_dim, demodulate=demodulate,
                                    upsample=upsample, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """leaky_relu(conv * demod + w * noise + bias) * sqrt(2), computed as
        leaky_relu(conv * (demod * sqrt(2)) + (w * sqrt(2)) * noise + bias * sqrt(2)) (a leaky ReLU commutes
        with a positive scale): three passes over the activation instead of five."""
        out, d = self.conv.modulated(x, style)
        b, _, h, w = out.shape
        dt = out.dtype
        if noise is None:                                   # official: a fresh N(0,1) map per forward
            noise = torch.randn(b, 1, h, w, device=out.device, dtype=dt)
        a = self.activate
        acc = torch.promote_types(torch.float32, dt)     # the scale folded in at >= fp32, rounded once to dt
        ds = (d.to(acc) * a.scale if d is not None else out.new_full((b, out.shape[1]), a.scale, dtype=acc))
        nz = (self.noise.weight * a.scale).to(dt) * noise.to(dt)                  # (B, 1, H, W)
        y = torch.addcmul(nz, out, ds.to(dt)[:, :, None, None])
        y = y.add_((a.bias * a.scale).to(dt).view(1, -1, 1, 1))
        return F.leaky_relu(y, a.negative_slope, inplace=True)


class ToRGB(nn.Module):
    """Non-demodulated 1x1 modulated conv + bias (1,3,1,1) + FIR-upsampled previous skip."""

    def __init__(self, in_ch: int, style_dim: int, upsample: bool = True,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, style) + self.bias.to(x.dtype)
        if skip is not None:
            out = out + self.upsample(skip).to(out.dtype)
        return out


def default_channels(channel_multiplier: int = 2, base: int = 512, max_res: int = 1024) -> dict[int, int]:
    """rosinality channel table; ``base`` scales it for small configs (base=512 is the official table)."""
    f = base / 512
    table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier, 128: 128 * channel_multiplier,
             256: 64 * channel_multiplier, 512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    return {r: max(1, int(round(c * f))) for r, c in table.items() if r <= max_res}


def num_latents(size: int) -> int:
    return int(math.log2(size)) * 2 - 2


class SynthesisNetwork(nn.Module):
    """Constant input + StyledConvs + ToRGBs (rosinality attribute names: input, conv1, to_rgb1, convs, to_rgbs).

    W+ layout (n_latent = 2*log2(size)-2): index 0 -> conv1, 1 -> to_rgb1 and first upsampling conv, and for
    level k (k=1..): 2k-1 upsampling conv, 2k second conv, 2k+1 ToRGB.
    """

    def __init__(self, size: int = 256, style_dim: int = 512, channels: dict[int, int] | None = None,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.size = size
        self.style_dim = style_dim
        self.channels = channels or default_channels(2)
        self.log_size = int(math.log2(size))
        self.n_latent = num_latents(size)
        ch = self.channels
        self.input = ConstantInput(ch[4])
        self.conv1 = StyledConv(ch[4], ch[4], 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(ch[4], style_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_ch = ch[4]
        for i in range(3, self.log_size + 1):
            out_ch = ch[2 ** i]
            self.convs.append(StyledConv(in_ch, out_ch, 3, style_dim, upsample=True, blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_ch, out_ch, 3, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_ch, style_dim, blur_kernel=blur_kernel))
            in_ch = out_ch

    def noise_shapes(self) -> list[tuple[int, int]]:
        """(H, W) of the noise map each StyledConv uses, in call order (conv1, convs.0, convs.1, ...)."""
        shapes = [(4, 4)]
        for i in range(3, self.log_size + 1):
            shapes += [(2 ** i, 2 ** i)] * 2
        return shapes

    def forward(self, latent: torch.Tensor, noise: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """latent: (B, n_latent, style_dim) W+ codes. Returns the ToRGB skip sum (no tanh/clamp)."""
        noise = list(noise) if noise is not None else [None] * (1 + len(self.convs))
        out = self.input(latent.shape[0])
        out = self.conv1(out, latent[:, 0], noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        i = 1
        for k, to_rgb in enumerate(self.to_rgbs):
            out = self.convs[2 * k](out, latent[:, i], noise[1 + 2 * k])
            out = self.convs[2 * k + 1](out, latent[:, i + 1], noise[2 + 2 * k])
            skip = to_rgb(out, latent[:, i + 2], skip)
            i += 2
        return skip


class Generator(SynthesisNetwork):
    """Plain StyleGAN2 generator (mapping + synthesis) for the project's own generative prior.

    State-dict layout equals rosinality's (``style.*`` mapping MLP, ``input``, ``conv1``, ``to_rgb1``,
    ``convs``, ``to_rgbs``; no noise buffers, so ``noises.*`` of a rosinality checkpoint are dropped by
    ``load_rosinality``). Resolution and widths are config (``channel_base`` scales the channel table; 512 =
    official widths).
    """

    def __init__(self, size: int = 256, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2,
                 channel_base: int = 512, blur_kernel: Sequence[float] = (1, 3, 3, 1), lr_mlp: float = 0.01):
        super().__init__(size, style_dim, default_channels(channel_multiplier, channel_base, size), blur_kernel)
        layers: list[nn.Module] = [PixelNorm()]
        for _ in range(n_mlp):
            layers.append(EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="fused_lrelu"))
        self.style = nn.Sequential(*layers)

    def load_rosinality(self, state_dict: dict, strict: bool = True):
        return self.load_state_dict({k: v for k, v in state_dict.items() if not k.startswith("noises.")},
                                    strict=strict)

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        return self.style(z)

    @torch.no_grad()
    def mean_latent(self, n: int = 4096) -> torch.Tensor:
        z = torch.randn(n, self.style_dim, device=self.input.input.device)
        return self.style(z).mean(0, keepdim=True)

    def forward(self, z: torch.Tensor, truncation: float = 1.0,  # type: ignore[override]
                truncation_latent: torch.Tensor | None = None,
                noise: Sequence[torch.Tensor | None] | None = None, input_is_latent: bool = False) -> torch.Tensor:
        """z: (B, style_dim), or W (B, style_dim) / W+ (B, n_latent, style_dim) when ``input_is_latent``."""
        w = z if input_is_latent else self.style(z)
        if truncation < 1 and truncation_latent is not None:
            w = truncation_latent + truncation * (w - truncation_latent)
        if w.ndim == 2:
            w = w[:, None].expand(-1, self.n_latent, -1)
        return super().forward(w, noise)


# --------------------------------------------------------------------------------------- discriminator
class ConvLayer(nn.Sequential):
    """[Blur] -> EqualConv2d -> [FusedLeakyReLU | ScaledLeakyReLU]; rosinality index layout."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, downsample: bool = False,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1), bias: bool = True, activate: bool = True):
        layers: list[nn.Module] = []
        if downsample:
            factor = 2
            p = (len(blur_kernel) - factor) + (kernel_size - 1)
            layers.append(Blur(blur_kernel, pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding,
                                  bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_ch) if bias else ScaledLeakyReLU(0.2))
        super().__init__(*layers)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.conv1 = ConvLayer(in_ch, in_ch, 3)
        self.conv2 = ConvLayer(in_ch, out_ch, 3, downsample=True, blur_kernel=blur_kernel)
        self.skip = ConvLayer(in_ch, out_ch, 1, downsample=True, activate=False, bias=False,
                              blur_kernel=blur_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / SQRT2


class Discriminator(nn.Module):
    """StyleGAN2 ResNet discriminator (minibatch stddev, group min(B,4), 1 feature); rosinality names."""

    def __init__(self, size: int = 256, channel_multiplier: int = 2, channel_base: int = 512,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1), stddev_group: int = 4, stddev_feat: int = 1):
        super().__init__()
        ch = default_channels(channel_multiplier, channel_base, max(size, 4))
        convs: list[nn.Module] = [ConvLayer(3, ch[size], 1)]
        log_size = int(math.log2(size))
        in_ch = ch[size]
        for i in range(log_size, 2, -1):
            out_ch = ch[2 ** (i - 1)]
            convs.append(ResBlock(in_ch, out_ch, blur_kernel))
            in_ch = out_ch
        self.convs = nn.Sequential(*convs)
        self.stddev_group, self.stddev_feat = stddev_group, stddev_feat
        self.final_conv = ConvLayer(in_ch + 1, ch[4], 3)
        self.final_linear = nn.Sequential(EqualLinear(ch[4] * 4 * 4, ch[4], activation="fused_lrelu"),
                                          EqualLinear(ch[4], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs(x)
        b, c, h, w = out.shape
        group = min(b, self.stddev_group)
        while b % group:  # official code requires divisibility; fall back to the largest divisor
            group -= 1
        f = self.stddev_feat
        y = out.float().view(group, -1, f, c // f, h, w)
        y = torch.sqrt(y.var(0, unbiased=False) + 1e-8).mean([2, 3, 4], keepdim=True).squeeze(2)
        y = y.repeat(group, 1, h, w).to(out.dtype)
        out = self.final_conv(torch.cat([out, y], 1))
        return self.final_linear(out.reshape(b, -1))
