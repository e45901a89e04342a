"""StyleGAN2 layers and G2Face forward facts (tiny configs; fast)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from g2face_eval.models import stylegan2 as sg
from g2face_eval.models.g2face import (
    G2Face,
    G2FaceConfig,
    HidingInjection,
    StyleMLP,
    geometry_condition,
    keyed_noise,
    keyed_normal,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: threading overhead dominates on a shared 2-core machine
    yield
    torch.set_num_threads(n)


def _naive_upfirdn(x: np.ndarray, k: np.ndarray, up: int, down: int, pad: tuple[int, int]) -> np.ndarray:
    b, c, h, w = x.shape
    u = np.zeros((b, c, h * up, w * up), x.dtype)
    u[:, :, ::up, ::up] = x
    p0, p1 = pad
    u = np.pad(u, ((0, 0), (0, 0), (p0, p1), (p0, p1)))
    kf = k[::-1, ::-1]
    kh, kw = k.shape
    oh, ow = u.shape[2] - kh + 1, u.shape[3] - kw + 1
    out = np.zeros((b, c, oh, ow), x.dtype)
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = (u[:, :, i:i + kh, j:j + kw] * kf).sum((2, 3))
    return out[:, :, ::down, ::down]


@pytest.mark.parametrize("up,down,pad", [(2, 1, (2, 1)), (1, 1, (1, 1)), (1, 2, (2, 2))])
def test_upfirdn2d_matches_naive(up, down, pad):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    k = torch.rand(4, 4)  # asymmetric: checks the flip (true convolution)
    ref = _naive_upfirdn(x.numpy(), k.numpy(), up, down, pad)
    out = sg.upfirdn2d(x, k, up=up, down=down, pad=pad)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-5)


def _ref_modconv(m: sg.ModulatedConv2d, x, style):
    """Per-sample weight (grouped conv) formulation, as in the original StyleGAN2 code."""
    b, cin, h, w = x.shape
    s = m.modulation(style).view(b, 1, cin, 1, 1)
    wt = m.scale * m.weight * s
    if m.demodulate:
        wt = wt * torch.rsqrt(wt.pow(2).sum([2, 3, 4]) + 1e-8).view(b, m.out_channel, 1, 1, 1)
    wt = wt.view(b * m.out_channel, cin, m.kernel_size, m.kernel_size)
    if m.upsample:
        wt = wt.view(b, m.out_channel, cin, m.kernel_size, m.kernel_size).transpose(1, 2).reshape(
            b * cin, m.out_channel, m.kernel_size, m.kernel_size)
        out = F.conv_transpose2d(x.reshape(1, b * cin, h, w), wt, stride=2, groups=b)
        out = out.view(b, m.out_channel, out.shape[-2], out.shape[-1])
        return m.blur(out)
    out = F.conv2d(x.reshape(1, b * cin, h, w), wt, padding=m.padding, groups=b)
    return out.view(b, m.out_channel, h, w)


@pytest.mark.parametrize("upsample,demod,k", [(False, True, 3), (True, True, 3), (False, False, 1)])
def test_modulated_conv_equals_grouped_reference(upsample, demod, k):
    torch.manual_seed(0)
    m = sg.ModulatedConv2d(5, 7, k, 16, demodulate=demod, upsample=upsample)
    with torch.no_grad():
        m.modulation.bias.normal_()
    x, s = torch.randn(3, 5, 8, 8), torch.randn(3, 16)
    out = m(x, s)
    ref = _ref_modconv(m, x, s)
    assert out.shape == ref.shape == (3, 7, 16 if upsample else 8, 16 if upsample else 8)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_blur_kernel_buffers():
    up = sg.ModulatedConv2d(4, 4, 3, 8, upsample=True)
    k = torch.tensor([1.0, 3, 3, 1])
    torch.testing.assert_close(up.blur.kernel, torch.outer(k, k) / 64 * 4)
    assert up.blur.pad == (1, 1)
    rgb = sg.ToRGB(4, 8)
    assert rgb.upsample.pad == (2, 1)
    torch.testing.assert_close(rgb.upsample.kernel, torch.outer(k, k) / 64 * 4)
    d = sg.Discriminator(32, channel_base=16)
    torch.testing.assert_close(d.convs[1].conv2[0].kernel, torch.outer(k, k) / 64)


def test_plain_generator_and_discriminator_tiny():
    torch.manual_seed(0)
    g = sg.Generator(size=32, style_dim=16, n_mlp=2, channel_base=16)
    img = g(torch.randn(2, 16))
    assert img.shape == (2, 3, 32, 32) and torch.isfinite(img).all()
    assert not any(k.startswith(("mapping.", "synthesis.")) for k in g.state_dict())
    d = sg.Discriminator(32, channel_base=16)
    assert d(img).shape == (2, 1)
    assert d(torch.randn(6, 3, 32, 32)).shape == (6, 1)  # batch not divisible by 4


def test_style_mlp_double_bias_and_wplus_layout():
    cfg = G2FaceConfig()  # official widths; the MLP alone is small
    mlp = StyleMLP(cfg)
    lin = mlp.style_low[0]
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.fill_(1.0)
    out = lin(torch.randn(2, 659))
    torch.testing.assert_close(out, torch.full_like(out, math.sqrt(2) * 2 * 0.01))  # bias added twice
    w = mlp(torch.randn(2, 512), torch.randn(2, 257))
    assert w.shape == (2, 14, 512) and cfg.split == (6, 6, 2)
    for a, b in [(0, 5), (6, 11), (12, 13)]:
        assert torch.equal(w[:, a], w[:, b])
    assert not torch.equal(w[:, 5], w[:, 6]) and not torch.equal(w[:, 11], w[:, 12])
    c = torch.arange(257.0)[None]
    assert geometry_condition(c).tolist()[0] == list(range(144)) + [224, 225, 226]


def test_wplus_index_mapping():
    cfg = G2FaceConfig.tiny(size=64)
    g = G2Face(cfg, with_discriminator=False).anonymous_net
    seen = {}

    def hook(name):
        def f(mod, args):
            seen[name] = args[0]
        return f

    g.conv1.conv.modulation.register_forward_pre_hook(hook("conv1"))
    g.to_rgb1.conv.modulation.register_forward_pre_hook(hook("to_rgb1"))
    for i, c in enumerate(g.convs):
        c.conv.modulation.register_forward_pre_hook(hook(f"convs.{i}"))
    for i, t in enumerate(g.to_rgbs):
        t.conv.modulation.register_forward_pre_hook(hook(f"to_rgbs.{i}"))
    n = cfg.n_latent
    styles = torch.arange(n, dtype=torch.float32)[None, :, None].expand(1, n, cfg.style_dim).clone()
    g(torch.zeros(1, 3, 64, 64), styles, torch.zeros(1, *cfg.bits_shape))
    idx = {k: int(v[0, 0]) for k, v in seen.items()}
    expect = {"conv1": 0, "to_rgb1": 1}
    for k in range(1, len(g.to_rgbs) + 1):
        expect[f"convs.{2 * k - 2}"] = 2 * k - 1
        expect[f"convs.{2 * k - 1}"] = 2 * k
        expect[f"to_rgbs.{k - 1}"] = 2 * k + 1
    assert idx == expect


def test_hiding_injection_row_major_reshape():
    inj = HidingInjection(16384, 32, 8)
    bits = torch.arange(512 * 32, dtype=torch.float32).view(1, 512, 32)
    assert torch.count_nonzero(inj.weight) == 0  # zero-initialised output scale
    with torch.no_grad():
        inj.weight.fill_(1 / math.sqrt(2))       # output = leaky_relu(selected input channel), inputs >= 0
        inj.conv.bias.zero_()
        for c, r in [(0, 0), (3, 7), (15, 31)]:
            inj.conv.weight.zero_()
            inj.conv.weight[0, c] = 1.0
            x = inj(bits)
            assert x.shape == (1, 8, 32, 32)
            assert torch.allclose(x[0, 0, r], bits[0, 32 * c + r])  # row r of channel c = float 32c+r


def test_fused_layer_forms_equal_their_definitions():
    """The generator layers compute their official definitions with fewer passes (bias dropped before an
    instance norm, 1/sqrt(2) folded into the norm, lerp blend, fused StyledConv / injection epilogues): each
    equals the literal formula in float64, in both memory layouts."""
    torch.manual_seed(0)
    from g2face_eval.models.g2face import FusionMask, PyramidBlock

    def inorm(t):
        return F.instance_norm(t, eps=1e-5)

    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 6, 12, 12, dtype=torch.float64).contiguous(memory_format=fmt)
        pb = PyramidBlock(6, 10, down=True).double()
        for m in pb.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.normal_(m.bias)              # nonzero biases: dropping them must not matter
        c1, c2, sk = pb.conv1.conv, pb.conv2.conv, pb.skip.conv
        a = F.leaky_relu(inorm(c1(x)), 0.2)
        ref = (F.leaky_relu(inorm(c2(a)), 0.2) + inorm(sk(x))) / math.sqrt(2)
        for grad in (False, True):                         # inference drops the biases, training adds them
            with torch.set_grad_enabled(grad):
                assert torch.allclose(pb(x), ref, atol=1e-10)

        fm = FusionMask(18, 6).double()
        torch.nn.init.normal_(fm.conv.bias)
        g, p_, i = (torch.randn(2, 6, 12, 12, dtype=torch.float64).contiguous(memory_format=fmt) for _ in range(3))
        mask = torch.sigmoid(inorm(fm.conv(torch.cat([g, p_, i], 1))))
        for grad in (False, True):
            with torch.set_grad_enabled(grad):
                assert torch.allclose(fm(g, p_, i), mask * g + (1 - mask) * p_, atol=1e-10)

        inj = HidingInjection(16384, 32, 5).double()
        for t in (inj.conv.bias, inj.activate.bias, inj.weight):
            torch.nn.init.normal_(t)
        bits = (torch.rand(2, 512, 32) > 0.5).double()
        xb = bits.reshape(2, 16, 32, 32)
        ref = sg.fused_leaky_relu(inj.conv(xb), inj.activate.bias) * inj.weight
        assert torch.allclose(inj(bits), ref, atol=1e-10)

    for up in (False, True):
        sc = sg.StyledConv(4, 6, 3, 8, upsample=up).double()
        with torch.no_grad():
            sc.noise.weight.fill_(0.7)
            sc.activate.bias.normal_()
        x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
        st = torch.randn(2, 8, dtype=torch.float64)
        nz = torch.randn(2, 1, 16 if up else 8, 16 if up else 8, dtype=torch.float64)
        ref = sc.activate(sc.noise(sc.conv(x, st), nz))
        assert torch.allclose(sc(x, st, nz), ref, atol=1e-10)


def test_official_injection_and_fusion_channels():
    cfg = G2FaceConfig()
    assert cfg.hiding_resolutions == [8, 16, 32, 64, 128]
    assert cfg.bits_shape == (512, 32) and cfg.n_latent == 14


def test_noise_fresh_by_default_and_keyed_deterministic():
    torch.manual_seed(0)
    cfg = G2FaceConfig.tiny()
    m = G2Face(cfg, with_discriminator=False).eval()
    for c in [m.anonymous_net.conv1, *m.anonymous_net.convs]:
        torch.nn.init.constant_(c.noise.weight, 0.5)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    bits = torch.randint(0, 2, (2, *cfg.bits_shape)).float()
    z, geo = torch.randn(2, cfg.z_dim), torch.zeros(2, 257)
    with torch.no_grad():
        a, b = m.anonymize_tensor(x, geo, bits, z), m.anonymize_tensor(x, geo, bits, z)
        assert not torch.equal(a, b)  # official: fresh noise every forward, even in eval
        seeds = torch.tensor([11, 12])
        n1 = keyed_noise(seeds, m.anonymous_net)
        assert [tuple(t.shape[-2:]) for t in n1] == m.noise_shapes()
        c, d = m.anonymize_tensor(x, geo, bits, z, n1), m.anonymize_tensor(x, geo, bits, z, n1)
        assert torch.equal(c, d)
    # per-image draws do not depend on the batch composition
    assert torch.equal(keyed_normal(torch.tensor([12]), (5,), 3)[0], keyed_normal(seeds, (5,), 3)[1])
    big = keyed_normal(torch.tensor([1, 2, 3, 4]), (20000,), 0)
    assert abs(float(big.mean())) < 0.02 and abs(float(big.std()) - 1) < 0.02


def test_tiny_trains_one_step():
    torch.manual_seed(0)
    cfg = G2FaceConfig.tiny()
    m = G2Face(cfg).train()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    bits = torch.randint(0, 2, (2, *cfg.bits_shape)).float()
    y = m.anonymize_tensor(x, torch.randn(2, 257), bits, torch.randn(2, cfg.z_dim))
    logits = m.extract_logits(y + 0.01 * torch.randn_like(y))
    loss = F.l1_loss(y, x) + 10 * F.binary_cross_entropy_with_logits(logits, bits) - m.discriminator(y).mean()
    loss.backward()
    no_grad = [n for n, p in m.named_parameters() if p.grad is None]
    assert no_grad == []


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_fir_modules_equal_direct_upfirdn(fmt):
    """Blur / Upsample run as two matrix products (fir_matrix); they equal the direct depthwise formulation
    (itself checked against a naive loop above) for the generator's upsampling blur, the ToRGB upsampler and
    the discriminator's downsampling blur, in both memory layouts, with the output in the input's layout;
    a non-separable kernel loaded from a state dict falls back to the direct form; direct_fir() forces it."""
    torch.manual_seed(0)
    cases = [(sg.Blur((1, 3, 3, 1), pad=(1, 1), upsample_factor=2), (2, 5, 17, 17), {}),
             (sg.Upsample((1, 3, 3, 1)), (2, 3, 8, 8), {"up": 2}),
             (sg.Blur((1, 3, 3, 1), pad=(2, 1)), (2, 4, 16, 16), {})]
    for mod, shape, kw in cases:
        x = torch.randn(*shape, dtype=torch.float64).contiguous(memory_format=fmt)
        mod = mod.double()
        assert mod.taps is not None
        ref = sg.upfirdn2d(x, mod.kernel, pad=mod.pad, **kw)
        out = mod(x)
        assert out.shape == ref.shape
        assert torch.allclose(out, ref, atol=1e-12)
        if fmt == torch.channels_last:
            assert out.is_contiguous(memory_format=torch.channels_last)
        with sg.direct_fir():
            assert torch.equal(mod(x), ref)
    blur = sg.Blur((1, 3, 3, 1), pad=(1, 1)).double()
    k = torch.rand(4, 4, dtype=torch.float64)                          # rank 4: not separable
    blur.load_state_dict({"kernel": k})
    assert blur.taps is None
    x = torch.randn(1, 2, 9, 9, dtype=torch.float64).contiguous(memory_format=fmt)
    assert torch.allclose(blur(x), sg.upfirdn2d(x, k, pad=(1, 1)), atol=1e-12)
    blur.load_state_dict({"kernel": torch.outer(k[0], k[:, 0])})      # separable again: matrices rebuilt
    assert blur.taps is not None
    assert torch.allclose(blur(x), sg.upfirdn2d(x, blur.kernel, pad=(1, 1)), atol=1e-12)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_fir_stencil_equals_direct_upfirdn(fmt):
    """fir_stencil (the form the FIR layers take under torch.compile) equals the direct depthwise upfirdn2d for
    the generator's upsampling blur, the ToRGB upsampler (up=2), a decimating filter (down=2), an asymmetric
    separable kernel (so a flipped tap order would show) and a negative (cropping) pad, in both layouts."""
    torch.manual_seed(1)
    v, h = torch.tensor([1.0, 2.0, 5.0, -1.0], dtype=torch.float64), torch.tensor([3.0, -2.0, 1.0],
                                                                                   dtype=torch.float64)
    k4 = sg.make_kernel((1, 3, 3, 1)).double()
    cases = [(k4 * 4, 1, 1, (1, 1)), (k4 * 4, 2, 1, (2, 1)), (k4, 1, 2, (1, 1)), (k4, 1, 1, (2, 1)),
             (torch.outer(v, h), 1, 1, (2, 0)), (torch.outer(v, h), 1, 1, (-1, 2)), (torch.outer(v, h), 2, 2, (1, 3))]
    for k, up, down, pad in cases:
        taps = sg.separable_taps(k)
        assert taps is not None
        x = torch.randn(2, 3, 11, 13, dtype=torch.float64).contiguous(memory_format=fmt)
        ref = sg.upfirdn2d(x, k, up=up, down=down, pad=pad)
        out = sg.fir_stencil(x, *taps, up=up, down=down, pad=pad)
        assert out.shape == ref.shape, (up, down, pad)
        assert torch.allclose(out, ref, atol=1e-12), (up, down, pad, float((out - ref).abs().max()))


def test_fir_layers_use_stencil_only_while_compiling(monkeypatch):
    """Eager Blur / Upsample keep the matrix form; while torch.compile traces (simulated here) both take
    fir_stencil (no host-built matrices, so no graph break), unless FIR_UNDER_COMPILE says "matmul"."""
    calls = []
    real = sg.fir_stencil
    monkeypatch.setattr(sg, "fir_stencil", lambda *a, **k: calls.append(1) or real(*a, **k))
    blur = sg.Blur((1, 3, 3, 1), pad=(1, 1), upsample_factor=2).double()
    up = sg.Upsample((1, 3, 3, 1)).double()
    x = torch.randn(1, 2, 9, 9, dtype=torch.float64)
    refs = [sg.upfirdn2d(x, blur.kernel, pad=blur.pad), sg.upfirdn2d(x, up.kernel, up=2, pad=up.pad)]
    for mod, ref in zip((blur, up), refs, strict=True):
        assert torch.allclose(mod(x), ref, atol=1e-12)
    assert not calls
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    for mod, ref in zip((blur, up), refs, strict=True):
        assert torch.allclose(mod(x), ref, atol=1e-12)
    assert len(calls) == 2
    monkeypatch.setattr(sg, "FIR_UNDER_COMPILE", "matmul")
    blur(x)
    assert len(calls) == 2
