"""G2Face networks (Yang et al., IEEE TIFS 2024), our own implementation.

Module attribute names reproduce the official state-dict keys exactly (anonymous_net, style_mlp, map_2_id,
hiding_extractor, discriminator; see /work/shared/reference/g2face_official_state_dicts.json), so official
checkpoints load with an identity key mapping. Behaviour follows the manifest's ``forward_facts``:

* all networks take RGB images in [-1, 1];
* style MLP: PixelNorm over the concatenated [identity (id_dim), 3DMM id+exp (144), pose angles (3)] input,
  three independent 4-layer EqualLinear stacks (low/middle/high) with the *double bias* of the official
  model/mlp.py (effective bias 2*lr_mul*bias before the fused leaky ReLU); codes repeated 6/6/2 -> W+ (B,14,512);
* generator: StyleGAN2 synthesis (W+ index 0 -> conv1, 1 -> to_rgb1 and the first upsampling conv, level k:
  2k-1 upsampling conv, 2k second conv, 2k+1 ToRGB) with an image pyramid encoder fused by IFF mask blocks
  (mask = sigmoid(IN(conv1x1(concat))), fused = mask*gen + (1-mask)*pyr) at 4x4 before conv1 and at every level
  after the upsampling conv; at 8..size/2 px the concat also carries hiding_injects[2m](bits) and
  hiding_injects[2m+1](bits) is added to the fused feature;
* noise: a fresh N(0,1) map per StyledConv on every forward unless explicit noise maps are passed (use
  ``keyed_noise`` for deterministic, per-image, key-seeded evaluation noise);
* output: the ToRGB skip sum, no tanh/clamp.

``G2FaceConfig()`` is the official configuration; ``G2FaceConfig.tiny()`` gives a small one that trains and
runs on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from g2face_eval.models.stylegan2 import (
    Discriminator,
    EqualLinear,
    FusedLeakyReLU,
    PixelNorm,
    SynthesisNetwork,
    default_channels,
    num_latents,
)

GEO_ID_EXP = slice(0, 144)
GEO_ANGLE = slice(224, 227)
GEO_DIM = 147


@dataclass(frozen=True)
class G2FaceConfig:
    """Sizes of all G2Face networks. Defaults = official configuration (81.2M-param generator).

    size:               image side (power of two, >= 16); the hidden payload has (size/2)^2 bits.
    style_dim:          W dimension of the generator and the style MLP output.
    id_dim:             identity vector dimension (ArcFace: 512). Official mode hides id_dim*32 bits, so
                        official-mode payloads need id_dim*32 == n_bits.
    geo_dim:            geometric condition (3DMM id+exp 144 + pose 3).
    z_dim:              Map2ID input (random identity seed) dimension.
    n_mlp:              layers per style MLP stack.
    lr_mlp:             equalised-lr multiplier of the style MLP.
    channel_multiplier: StyleGAN2 channel multiplier.
    channel_base:       scales the StyleGAN2 channel table (512 = official widths).
    extractor_width:    hiding extractor width (official 128; branches use width/2).
    extractor_blocks:   hiding extractor blocks (official 3).
    disc_channel_base:  discriminator channel table scale (512 = official).
    w_split:            (low, middle, high) repeats of the three style codes; None -> official rule
                        (high 2, low (n_latent-2)//2, middle the rest), = (6, 6, 2) at 256.
    blur_kernel:        StyleGAN2 FIR taps.
    """

    size: int = 256
    style_dim: int = 512
    id_dim: int = 512
    geo_dim: int = GEO_DIM
    z_dim: int = 512
    n_mlp: int = 4
    lr_mlp: float = 0.01
    channel_multiplier: int = 2
    channel_base: int = 512
    extractor_width: int = 128
    extractor_blocks: int = 3
    disc_channel_base: int = 512
    w_split: tuple[int, int, int] | None = None
    blur_kernel: tuple[int, ...] = field(default=(1, 3, 3, 1))

    @classmethod
    def tiny(cls, size: int = 64, width: int = 16, **kw) -> G2FaceConfig:
        """A CPU-trainable config: generator widths ``width`` at every level, id_dim = n_bits/32 (so both the
        official and the keyed payload modes work), style/z dims 32, extractor width 16."""
        n_bits = (size // 2) ** 2
        base = dict(size=size, style_dim=32, id_dim=max(1, n_bits // 32), z_dim=32, channel_base=width,
                    channel_multiplier=2, extractor_width=16, extractor_blocks=1, disc_channel_base=width)
        base.update(kw)
        cfg = cls(**base)
        return cfg

    # ---- derived
    @property
    def n_latent(self) -> int:
        return num_latents(self.size)

    @property
    def n_bits(self) -> int:
        return (self.size // 2) ** 2

    @property
    def bits_shape(self) -> tuple[int, int]:
        """Layout of the hidden bit tensor, (n_bits/32, 32) = (512, 32) officially."""
        return (self.n_bits // 32, 32)

    @property
    def latent_dim(self) -> int:
        return self.id_dim + self.geo_dim

    @property
    def split(self) -> tuple[int, int, int]:
        if self.w_split is not None:
            return tuple(self.w_split)  # type: ignore[return-value]
        high = 2
        low = (self.n_latent - high) // 2
        return (low, self.n_latent - high - low, high)

    @property
    def channels(self) -> dict[int, int]:
        table = default_channels(self.channel_multiplier, self.channel_base, self.size)
        if self.channel_base != 512:  # tiny configs: keep every level at least 4 channels
            table = {r: max(4, c) for r, c in table.items()}
        return table

    @property
    def hiding_resolutions(self) -> list[int]:
        return [2 ** i for i in range(3, int(math.log2(self.size)))]  # 8 .. size/2

    def to_dict(self) -> dict:
        return asdict(self)

    def __post_init__(self):
        if self.size < 16 or self.size & (self.size - 1):
            raise ValueError(f"size must be a power of two >= 16, got {self.size}")
        if self.n_bits % 32:
            raise ValueError("size too small: (size/2)^2 must be a multiple of 32")
        if sum(self.split) != self.n_latent:
            raise ValueError(f"w_split {self.split} must sum to n_latent {self.n_latent}")


def geometry_condition(coeffs: torch.Tensor) -> torch.Tensor:
    """3DMM coefficients (B, >=227; Deep3DFaceRecon order) -> (B, 147) = [id+exp 0:144, angles 224:227]."""
    if coeffs.shape[-1] == GEO_DIM:
        return coeffs
    if coeffs.shape[-1] < GEO_ANGLE.stop:
        raise ValueError(f"expected Deep3DFaceRecon-ordered coefficients (>= 227) or the 147-d condition, got "
                         f"{tuple(coeffs.shape)}; priors with another layout must provide style_condition()")
    return torch.cat([coeffs[:, GEO_ID_EXP], coeffs[:, GEO_ANGLE]], dim=1)


def set_memory_format(module: nn.Module, fmt: torch.memory_format) -> None:
    """channels_last / contiguous for every 4-D parameter and buffer (``Module.to(memory_format=)`` refuses
    the 5-D modulated-conv weights)."""
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            if t.dim() == 4:
                t.data = t.data.contiguous(memory_format=fmt)


# ------------------------------------------------------------------------------------- keyed randomness
_M1 = -7046029254386353131   # 0x9E3779B97F4A7C15 as int64
_M2 = -4658895280553007687   # 0xBF58476D1CE4E5B9
_M3 = -7723592293110705685   # 0x94D049BB133111EB


def _wrap(v: int) -> int:
    """Python int -> the int64 value with the same low 64 bits."""
    return ((v + (1 << 63)) % (1 << 64)) - (1 << 63)


def _lsr(x: torch.Tensor, k: int) -> torch.Tensor:
    return (x >> k) & ((1 << (64 - k)) - 1)


def _mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64 finaliser on int64 tensors (wrapping arithmetic), pure torch, any device."""
    x = (x ^ _lsr(x, 30)) * _M2
    x = (x ^ _lsr(x, 27)) * _M3
    return x ^ _lsr(x, 31)


def keyed_normal(seeds: torch.Tensor, shape: Sequence[int], stream: int, dtype=torch.float32) -> torch.Tensor:
    """Counter-based N(0,1) draws: (B, *shape), where row b depends only on (seeds[b], stream).

    A device-side replacement for per-image ``torch.Generator`` objects: one batched kernel sequence, no host
    sync, no host random draws, independent of batch composition. ``seeds``: int64 (B,) on the target device
    (see ``g2face_eval.anonymizer.key_seed``). Box-Muller on two 24-bit uniforms from splitmix64 hashes.
    """
    n = 1
    for s in shape:
        n *= int(s)
    idx = torch.arange(n, device=seeds.device, dtype=torch.int64)
    base = _mix64(seeds.to(torch.int64)[:, None] * _M1 + _wrap((stream + 1) * _M3))
    h = _mix64(base + idx[None] * _M1)
    u1 = (_lsr(h, 40).to(torch.float32) + 0.5) * (1.0 / 16777216.0)
    u2 = ((h & 0xFFFFFF).to(torch.float32) + 0.5) * (1.0 / 16777216.0)
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
    return z.view(seeds.shape[0], *shape).to(dtype)


def keyed_noise(seeds: torch.Tensor, generator: G2FaceGenerator, stream: int = 0,
                dtype=torch.float32) -> list[torch.Tensor]:
    """Per-image deterministic noise maps for every StyledConv of ``generator`` (call order)."""
    return [keyed_normal(seeds, (1, h, w), stream * 1000 + i, dtype)
            for i, (h, w) in enumerate(generator.noise_shapes())]


class KeyedNoise(nn.Module):
    """All StyledConv noise maps of a generator in one batched kernel sequence, bit-identical to
    ``keyed_noise(seeds, generator, stream)`` (same counter-based hash per (seed, stream*1000+i, index)).

    Index constants are non-persistent buffers built once (no per-call ``arange`` per map, no host work);
    ``forward(seeds, stream)`` returns the list of (B,1,H,W) views into one (B, total) draw."""

    def __init__(self, shapes: Sequence[tuple[int, int]]):
        super().__init__()
        self.shapes = [tuple(int(v) for v in s) for s in shapes]
        sizes = [h * w for h, w in self.shapes]
        self.sizes = sizes
        map_id = torch.cat([torch.full((n,), i, dtype=torch.int64) for i, n in enumerate(sizes)])
        local = torch.cat([torch.arange(n, dtype=torch.int64) for n in sizes])
        self.register_buffer("map_id", map_id, persistent=False)
        self.register_buffer("local_m1", local * _M1, persistent=False)       # wrapping int64, as keyed_normal
        self.register_buffer("map_i", torch.arange(len(sizes), dtype=torch.int64), persistent=False)

    def draw(self, seeds: torch.Tensor, first_stream: int, dtype=torch.float32) -> torch.Tensor:
        """(B, total) draws; map i uses ``keyed_normal`` stream ``first_stream + i`` (so a one-map module with
        shape (1, n) and ``first_stream=s`` equals ``keyed_normal(seeds, (n,), s)``). The per-element index
        term is a buffer, not an ``arange`` expression: inductor/triton would fold ``arange * 2^63-range
        constant`` into 32-bit index arithmetic and fail."""
        off = (self.map_i + (first_stream + 1)) * _M3                         # wrap((s+1)*M3) per map
        base = _mix64(seeds.to(torch.int64)[:, None] * _M1 + off[None])       # (B, n_maps)
        h = _mix64(base.index_select(1, self.map_id) + self.local_m1[None])   # (B, total)
        u1 = (_lsr(h, 40).to(torch.float32) + 0.5) * (1.0 / 16777216.0)
        u2 = ((h & 0xFFFFFF).to(torch.float32) + 0.5) * (1.0 / 16777216.0)
        return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)).to(dtype)

    def forward(self, seeds: torch.Tensor, stream: int, dtype=torch.float32) -> list[torch.Tensor]:
        z = self.draw(seeds, stream * 1000, dtype)
        b = seeds.shape[0]
        return [t.view(b, 1, hh, ww) for t, (hh, ww) in zip(z.split(self.sizes, 1), self.shapes, strict=True)]


# ------------------------------------------------------------------------------------------- generator
# how a convolution with fewer than 8 input channels (the RGB image, the 3-channel first pyramid conv) runs on CUDA:
# "pad8" (default): zero-padded to 8 input channels for cuDNN (on the H200 cuDNN took an Ampere-generation cutlass
# kernel for the two 3 -> 128 convolutions at 256 px, 2.35 ms of 60.8 at batch 64, session 15's profile);
# "gemm": ``conv2d_as_gemm``, an explicit im2col + one GEMM writing channels_last (not yet measured on a GPU:
# scripts/gpu_compile_study.py preset ``gemm``)
SMALL_CIN_CONV = "pad8"
# G2FaceGenerator.fold_binary_bits takes effect (a switch for measuring the form against the official one)
FOLD_BINARY_BITS = True


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0
           ) -> torch.Tensor:
    """``F.conv2d``, except on CUDA for an input with fewer than 8 channels (the RGB image), which tensor-core
    convolution kernels do not take well: input and weight zero-padded to 8 channels, the same sum
    (``SMALL_CIN_CONV = "pad8"``; on the H200, 3 -> 128 channels at 256 px and batch 32 unpadded ran as a generic
    0.8 ms implicit GEMM for 15 GFLOP), or ``conv2d_as_gemm`` (``"gemm"``, at least 8 output channels)."""
    cin = x.shape[1]
    if x.is_cuda and cin < 8:
        if SMALL_CIN_CONV == "gemm" and weight.shape[0] >= 8:
            return conv2d_as_gemm(x, weight, bias, stride, padding)
        x = F.pad(x, (0, 0, 0, 0, 0, 8 - cin))
        weight = F.pad(weight, (0, 0, 0, 0, 0, 8 - cin))
    return F.conv2d(x, weight, bias, stride, padding)


def conv2d_as_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0
                   ) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding)`` (square kernel, int stride / padding) as im2col + one matrix
    product, for inputs with few channels: the patches (B*Ho*Wo, Cin*k*k, zero-padded to a multiple of 8) times
    the flattened weight give the output directly in channels_last order, with no intermediate image of more
    than Cin*k*k channels. The same sum in another order (float rounding apart)."""
    b, cin, h, w = x.shape
    cout, _, k, _ = weight.shape
    s, p = int(stride if isinstance(stride, int) else stride[0]), int(padding if isinstance(padding, int)
                                                                       else padding[0])
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    xp = F.pad(x, (p, p, p, p)) if p else x
    taps = [xp[:, :, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s] for i in range(k) for j in range(k)]
    kk = cin * k * k
    kpad = -kk % 8
    cols = torch.stack(taps, -1).permute(0, 2, 3, 1, 4).reshape(b * ho * wo, kk)   # (B*Ho*Wo, Cin*k*k), c-major
    wmat = weight.reshape(cout, kk).to(cols.dtype)
    if kpad:
        cols = F.pad(cols, (0, kpad))
        wmat = F.pad(wmat, (0, kpad))
    out = cols @ wmat.t() if bias is None else torch.addmm(bias.to(cols.dtype), cols, wmat.t())
    return out.view(b, ho, wo, cout).permute(0, 3, 1, 2)


def instance_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """InstanceNorm2d(affine=False) output times an optional per-channel ``weight``, in x's memory layout.

    NCHW: ``F.instance_norm`` (one statistics pass + one transform pass). channels_last: the same arithmetic
    from ``var_mean`` (biased variance, as InstanceNorm), because ``F.instance_norm`` copies a channels_last
    input to NCHW and back (measured on the H200: 2.9 ms vs 1.8 ms for 32x128x256x256 bf16)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
        r = torch.rsqrt(var + eps)
        if weight is not None:
            r = r * weight.to(r.dtype).view(1, -1, 1, 1)
        return (x - mean) * r
    return F.instance_norm(x, weight=weight, eps=eps)


class ConvNormAct(nn.Module):
    """conv (plain nn.Conv2d with bias) -> InstanceNorm2d(affine=False, eps 1e-5) -> [LeakyReLU 0.2], times
    ``out_scale`` (PyramidBlock folds its 1/sqrt(2) here; leaky ReLU commutes with a positive scale).

    The conv bias (official state dict) is added only while autograd records (so the parameter has its exact,
    zero, gradient for optimisers and DDP): the instance norm subtracts each channel's mean, which removes a
    per-channel constant exactly, so at inference adding it would only cost a pass over the activation."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int, padding: int, act: bool = True,
                 out_scale: float = 1.0):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding)
        self.act = act
        in_weight = torch.full((out_ch,), float(out_scale)) if out_scale != 1.0 else None
        self.register_buffer("in_weight", in_weight, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        y = conv2d(x, c.weight, c.bias if torch.is_grad_enabled() else None, c.stride, c.padding)
        x = instance_norm(y, self.in_weight)
        return F.leaky_relu(x, 0.2) if self.act else x


class PyramidBlock(nn.Module):
    """(conv3x3+IN+LReLU -> conv+IN+LReLU) + (skip conv+IN), / sqrt(2). down: 4x4 stride-2 pad-1 convs."""

    def __init__(self, in_ch: int, out_ch: int, down: bool):
        super().__init__()
        k, s = (4, 2) if down else (3, 1)
        self.conv1 = ConvNormAct(in_ch, in_ch, 3, 1, 1)
        self.conv2 = ConvNormAct(in_ch, out_ch, k, s, 1, out_scale=1.0 / math.sqrt(2.0))
        self.skip = ConvNormAct(in_ch, out_ch, k, s, 1, act=False, out_scale=1.0 / math.sqrt(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x)) + self.skip(x)       # the 1/sqrt(2) is inside conv2 and skip


class FusionMask(nn.Module):
    """IFF block: mask = sigmoid(IN(conv1x1(concat[gen, pyr, (inj)]))); fused = mask*gen + (1-mask)*pyr,
    computed as one ``lerp`` (the conv bias is added only while autograd records: the norm removes it, see
    ConvNormAct)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, gen: torch.Tensor, pyr: torch.Tensor, inj: torch.Tensor | None = None,
                inj_folded: tuple[HidingInjection, torch.Tensor] | None = None) -> torch.Tensor:
        """``inj_folded`` = (injection, its ``codes(bits)``) replaces ``inj`` by ``HidingInjection.folded_term``
        (binary bits only; the inference fast path, see ``G2FaceGenerator.forward``)."""
        dt = pyr.dtype
        bias = self.conv.bias if torch.is_grad_enabled() else None          # removed by the norm (ConvNormAct)
        w = self.conv.weight
        if inj_folded is None:
            parts = [gen, pyr] if inj is None else [gen, pyr, inj]
            y = F.conv2d(torch.cat([t.to(dt) for t in parts], 1), w, bias)
        else:
            c = gen.shape[1] + pyr.shape[1]
            injection, codes = inj_folded
            y = F.conv2d(torch.cat([gen.to(dt), pyr], 1), w[:, :c], bias)
            y = y + injection.folded_term(codes, w[:, c:, 0, 0], y.dtype)
        mask = torch.sigmoid(instance_norm(y))
        return torch.lerp(pyr, gen.to(dt), mask.to(dt))


class HidingInjection(nn.Module):
    """bits (B, n_bits/32, 32) -> row-major view (B, n_bits/s^2, s, s) -> conv1x1 -> FusedLeakyReLU -> * weight.

    Computed as conv1x1 with the two biases summed -> leaky ReLU -> * (sqrt(2) * weight): the same function in
    three passes over the activation instead of five."""

    def __init__(self, n_bits: int, resolution: int, out_ch: int):
        super().__init__()
        self.resolution = resolution
        self.in_ch = n_bits // resolution ** 2
        self.conv = nn.Conv2d(self.in_ch, out_ch, 1)
        self.activate = FusedLeakyReLU(out_ch)
        self.weight = nn.Parameter(torch.zeros(out_ch, 1, 1))

    def forward(self, bits: torch.Tensor) -> torch.Tensor:
        s = self.resolution
        x = bits.reshape(bits.shape[0], self.in_ch, s, s)
        a = self.activate
        y = F.conv2d(x, self.conv.weight, self.conv.bias + a.bias)
        return F.leaky_relu(y, a.negative_slope) * (self.weight * a.scale).to(y.dtype)

    # ---- binary bits (inference fast path): every pixel's output is one of 2^in_ch vectors
    max_folded_in_ch = 4            # tables of at most 16 rows (at 256 px: the 128 and 64 px injections)

    def table(self) -> torch.Tensor:
        """(2^in_ch, out_ch) float32: ``forward``'s output vector for each pattern of in_ch bits (row index =
        sum of bit k * 2^k over the in_ch bit channels of a pixel)."""
        a = self.activate
        n = self.in_ch
        codes = torch.arange(2 ** n, device=self.weight.device)
        patterns = ((codes[:, None] >> torch.arange(n, device=codes.device)) & 1).float()       # (2^n, n)
        y = patterns @ self.conv.weight[:, :, 0, 0].float().t() + (self.conv.bias + a.bias).float()
        return F.leaky_relu(y, a.negative_slope) * (self.weight.view(1, -1) * a.scale).float()

    def codes(self, bits: torch.Tensor) -> torch.Tensor:
        """binary bits (any shape with n_bits per image) -> (B, s, s) int64: each pixel's row index of ``table``
        (bit channel k of ``forward``'s reshape contributes 2^k); a bit is 1 above 0.5."""
        s, n = self.resolution, self.in_ch
        x = (bits.reshape(bits.shape[0], n, s, s) > 0.5).to(torch.int64)
        return (x << torch.arange(n, device=x.device).view(1, n, 1, 1)).sum(1)

    @staticmethod
    def lookup(codes: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """(B, s, s) ``codes`` -> (B, table columns, s, s), channels_last: each pixel's row of ``table``."""
        return F.embedding(codes, table).permute(0, 3, 1, 2)

    def folded_term(self, codes: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``F.conv2d(forward(bits), weight[..., None, None])`` for binary bits (``codes(bits)``), as a lookup in
        ``dtype``: what the fusion mask's 1x1 convolution adds for this injection's channels (``weight``:
        (out, out_ch)), without computing the injection."""
        return self.lookup(codes, (self.table() @ weight.float().t()).to(dtype))

    def folded(self, codes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``forward(bits)`` for binary bits (``codes(bits)``), as a lookup in ``dtype``."""
        return self.lookup(codes, self.table().to(dtype))


class G2FaceGenerator(SynthesisNetwork):
    """The ``anonymous_net``: StyleGAN2 synthesis + pyramid encoder + IFF fusion masks + hiding injections.

    ``fold_binary_bits`` (set by ``G2Face.set_inference_cache``, i.e. on the inference fast path; applies without
    autograd and while ``FOLD_BINARY_BITS``): the bits are 0/1, so an injection with at most 4 bit channels per
    pixel (at 256 px: 1 at 128 px, 4 at 64 px) takes one of at most 16 vectors per pixel; the fusion mask's 1x1
    convolution of those channels becomes a lookup in a 16-row table, so the concatenation carries no injection
    channels (at 128 px 512 instead of 768), and the added injection is a lookup too. The same function as the
    official form for binary bits (float rounding apart); soft bits need the official form (training, which
    records autograd)."""

    fold_binary_bits = False

    def __init__(self, cfg: G2FaceConfig = G2FaceConfig()):
        super().__init__(cfg.size, cfg.style_dim, cfg.channels, cfg.blur_kernel)
        self.cfg = cfg
        ch = self.channels
        n_levels = self.log_size - 1                     # 256: 7 levels (256 .. 4 px)
        res = [cfg.size >> j for j in range(n_levels)]   # pyramid[j] output resolution
        self.pyramid = nn.ModuleList()
        in_ch = 3
        for j, r in enumerate(res):
            self.pyramid.append(PyramidBlock(in_ch, ch[r], down=j > 0))
            in_ch = ch[r]
        self.hiding_injects = nn.ModuleList()
        for r in cfg.hiding_resolutions:
            for _ in range(2):
                self.hiding_injects.append(HidingInjection(cfg.n_bits, r, ch[r]))
        hid = set(cfg.hiding_resolutions)
        self.fusion_mask = nn.ModuleList(
            [FusionMask(ch[r] * (3 if r in hid else 2), ch[r]) for r in res])
        self._res = res

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Image pyramid features, index j = resolution size/2^j."""
        feats = []
        for block in self.pyramid:
            x = block(x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor, styles: torch.Tensor, bits: torch.Tensor,  # type: ignore[override]
                noise: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """x: (B,3,size,size) in [-1,1]; styles: W+ (B, n_latent, style_dim); bits: (B, n_bits/32, 32) or
        (B, n_bits) float {0,1}; noise: list of (B,1,H,W) maps (see ``noise_shapes``) or None (fresh randn).
        Returns the generated image (no clamp)."""
        feats = self.encode(x)
        fold = FOLD_BINARY_BITS and self.fold_binary_bits and not torch.is_grad_enabled()
        noise = list(noise) if noise is not None else [None] * (1 + len(self.convs))
        nlev = len(feats)
        out = self.input(x.shape[0]).to(feats[-1].dtype)
        out = self.fusion_mask[nlev - 1](out, feats[nlev - 1])
        out = self.conv1(out, styles[:, 0], noise[0])
        skip = self.to_rgb1(out, styles[:, 1])
        i = 1
        hid = self.cfg.hiding_resolutions
        for k, to_rgb in enumerate(self.to_rgbs):
            r = 8 << k
            j = nlev - 2 - k
            out = self.convs[2 * k](out, styles[:, i], noise[1 + 2 * k])
            if r in hid:
                m = hid.index(r)
                inj, add = self.hiding_injects[2 * m], self.hiding_injects[2 * m + 1]
                if fold and inj.in_ch <= inj.max_folded_in_ch:
                    codes = inj.codes(bits)                  # the same map for both (same resolution, bits)
                    out = self.fusion_mask[j](out, feats[j], inj_folded=(inj, codes))
                    out = out + add.folded(codes, out.dtype)
                else:
                    out = self.fusion_mask[j](out, feats[j], inj(bits))
                    out = out + add(bits)
            else:
                out = self.fusion_mask[j](out, feats[j])
            out = self.convs[2 * k + 1](out, styles[:, i + 1], noise[2 + 2 * k])
            skip = to_rgb(out, styles[:, i + 2], skip)
            i += 2
        return skip


# ------------------------------------------------------------------------------------ style MLP / Map2ID
class StyleMLP(nn.Module):
    """PixelNorm(concat[identity, geometry]) -> three 4-layer EqualLinear stacks -> W+ (B, n_latent, style_dim)."""

    def __init__(self, cfg: G2FaceConfig = G2FaceConfig()):
        super().__init__()
        self.cfg = cfg
        self.norm = PixelNorm()

        def stack() -> nn.Sequential:
            return nn.Sequential(*[
                EqualLinear(cfg.latent_dim if i == 0 else cfg.style_dim, cfg.style_dim, lr_mul=cfg.lr_mlp,
                            activation="fused_lrelu", double_bias=True) for i in range(cfg.n_mlp)])

        self.style_low, self.style_middle, self.style_high = stack(), stack(), stack()

    def forward(self, identity: torch.Tensor, geometry: torch.Tensor) -> torch.Tensor:
        """identity (B, id_dim); geometry (B, 147) or full 3DMM coefficients (B, 257)."""
        h = self.norm(torch.cat([identity, geometry_condition(geometry).to(identity.dtype)], 1))
        lo, mi, hi = self.cfg.split
        codes = [self.style_low(h), self.style_middle(h), self.style_high(h)]
        return torch.cat([c[:, None].expand(-1, n, -1) for c, n in zip(codes, (lo, mi, hi), strict=True)], 1)


class Map2ID(nn.Module):
    """Linear -> LReLU(0.2) -> Linear -> LReLU(0.2) -> BatchNorm1d: random z -> pseudo identity vector."""

    def __init__(self, cfg: G2FaceConfig = G2FaceConfig()):
        super().__init__()
        self.map_2_id = nn.Sequential(nn.Linear(cfg.z_dim, cfg.id_dim), nn.LeakyReLU(0.2),
                                      nn.Linear(cfg.id_dim, cfg.id_dim), nn.LeakyReLU(0.2),
                                      nn.BatchNorm1d(cfg.id_dim, eps=1e-5, momentum=0.1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.map_2_id(z)


# ---------------------------------------------------------------------------------------- hiding extractor
class ExtractorBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        h = width // 2
        self.conv1x1_branch_1 = nn.Conv2d(width, h, 1)
        self.bn_branch_1_1 = nn.BatchNorm2d(h)
        self.conv3x3_branch_1 = nn.Conv2d(h, h, 3, padding=1)
        self.bn_branch_1_2 = nn.BatchNorm2d(h)
        self.conv1x1_branch_2 = nn.Conv2d(width, h, 1)
        self.bn_branch_2_1 = nn.BatchNorm2d(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.leaky_relu(self.bn_branch_1_1(self.conv1x1_branch_1(x)), 0.1)
        a = F.leaky_relu(self.bn_branch_1_2(self.conv3x3_branch_1(a)), 0.1)
        b = F.leaky_relu(self.bn_branch_2_1(self.conv1x1_branch_2(x)), 0.1)
        return torch.cat([a, b], 1)


class HidingExtractor(nn.Module):
    """conv1x1(3->W)+LReLU(0.1), blocks at full res, conv3x3(W->1) stride 2 -> logits (B, n_bits/32, 32)."""

    def __init__(self, cfg: G2FaceConfig = G2FaceConfig()):
        super().__init__()
        self.cfg = cfg
        w = cfg.extractor_width
        self.conv1x1_input = nn.Conv2d(3, w, 1)
        self.body = nn.Sequential(*[ExtractorBlock(w) for _ in range(cfg.extractor_blocks)])
        self.conv1x1_output = nn.Conv2d(w, 1, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv1x1_input
        y = self.conv1x1_output(self.body(F.leaky_relu(conv2d(x, c.weight, c.bias), 0.1)))
        return y.reshape(y.shape[0], *self.cfg.bits_shape)


# -------------------------------------------------------------------------------------------- container
class G2Face(nn.Module):
    """All trainable G2Face networks with the official checkpoint's top-level names.

    Fast tensor-only paths (no host work, no host sync; everything stays on the module's device):
    ``anonymize_tensor``, ``recover_tensor``, ``extract_logits``. Priors (identity / geometry) and the payload
    codec live outside (see ``g2face_eval.models.anonymizer``).
    """

    CHECKPOINT_KEYS = ("anonymous_net", "style_mlp", "map_2_id", "hiding_extractor", "discriminator")

    def __init__(self, cfg: G2FaceConfig = G2FaceConfig(), with_discriminator: bool = True):
        super().__init__()
        self.cfg = cfg
        self.anonymous_net = G2FaceGenerator(cfg)
        self.style_mlp = StyleMLP(cfg)
        self.map_2_id = Map2ID(cfg)
        self.hiding_extractor = HidingExtractor(cfg)
        self.discriminator = (Discriminator(cfg.size, cfg.channel_multiplier, cfg.disc_channel_base,
                                            cfg.blur_kernel) if with_discriminator else None)

    def noise_shapes(self) -> list[tuple[int, int]]:
        return self.anonymous_net.noise_shapes()

    def set_inference_cache(self, on: bool = True) -> G2Face:
        """Turn the eval-mode weight cache of every equalised / modulated layer on or off (stylegan2.py), and the
        generator's binary-bit tables (``G2FaceGenerator.fold_binary_bits``)."""
        from g2face_eval.models.stylegan2 import WeightCache

        self.anonymous_net.fold_binary_bits = on
        for m in self.modules():
            if isinstance(m, WeightCache):
                m.cache_weights = on
                if not on:
                    m.clear_weight_cache()
        return self

    def anonymize_tensor(self, x: torch.Tensor, geometry: torch.Tensor, bits: torch.Tensor, z: torch.Tensor,
                         noise: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """x [-1,1]; geometry (B,147|257) of x; bits (B,n_bits/32,32); z (B,z_dim) -> anonymised image [-1,1]
        (unclamped). The pseudo identity is Map2ID(z)."""
        styles = self.style_mlp(self.map_2_id(z), geometry)
        return self.anonymous_net(x, styles, bits, noise)

    def recover_tensor(self, y: torch.Tensor, identity: torch.Tensor, geometry: torch.Tensor, bits: torch.Tensor,
                       noise: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """y anonymised [-1,1]; identity recovered (B,id_dim); geometry of y; bits the hidden bit tensor."""
        styles = self.style_mlp(identity, geometry)
        return self.anonymous_net(y, styles, bits, noise)

    def extract_logits(self, y: torch.Tensor) -> torch.Tensor:
        return self.hiding_extractor(y)

    NEW_GENERATOR_PARTS = ("pyramid", "fusion_mask", "hiding_injects")

    def param_groups(self, lr: float = 1e-3, lr_pretrained: float = 1e-4) -> list[dict]:
        """Official optimiser grouping (discriminator excluded): pyramid, fusion_mask, hiding_injects, style_mlp,
        map_2_id and hiding_extractor at ``lr``; the pretrained StyleGAN2 synthesis part at ``lr_pretrained``."""
        new, pre = [], []
        for n, p in self.anonymous_net.named_parameters():
            (new if n.split(".")[0] in self.NEW_GENERATOR_PARTS else pre).append(p)
        new += [*self.style_mlp.parameters(), *self.map_2_id.parameters(), *self.hiding_extractor.parameters()]
        return [{"params": new, "lr": lr, "name": "g2face_new"},
                {"params": pre, "lr": lr_pretrained, "name": "stylegan2_synthesis"}]

    def checkpoint_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """{anonymous_net: sd, style_mlp: sd, ...} exactly as in the official G2Face.pth."""
        return {k: getattr(self, k).state_dict() for k in self.CHECKPOINT_KEYS if getattr(self, k) is not None}
