"""G2Face inference fast path (``G2FaceAnonymizer(fast=True)``, the default) vs the fp32 reference path
(``fast=False``) on real faces with the shipped checkpoint; bf16 autocast; batch-composition independence;
weight-cache invalidation; flags. CPU only, well under a minute on 2 shared cores."""

from __future__ import annotations

import copy
import os
import time

import pytest
import torch
import torch.nn.functional as F

from g2face_eval.anonymizer import derive_keys, key_seed
from g2face_eval.models.anonymizer import G2FaceAnonymizer
from g2face_eval.models.g2face import G2Face, G2FaceConfig, KeyedNoise, keyed_noise, keyed_normal

# measured on CPU (shipped checkpoint c7042278..., 4 celebahq256 test faces at the network's 64 px): bf16
# autocast vs the fp32 fast path 53.0 / 53.0 / 50.9 / 54.9 dB on the anonymised images (hidden bits identical;
# 51.4 / 52.9 / 51.8 / 51.9 dB with the previous checkpoint); bound with margin
BF16_PSNR_BOUND_DB = 45.0


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-30))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # small convs: thread hand-off dominates on a shared 2-core machine
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def shipped_parts():
    from g2face_eval import zoo
    from g2face_eval.models import shipped
    from g2face_eval.models.geometry import load_geometry_prior
    from g2face_eval.models.identity import get_identity_prior

    cfg, meta, sd = zoo.load(shipped.WEIGHT_NAME)
    model = G2Face(cfg, with_discriminator=False)
    model.load_state_dict(sd, strict=True)
    return model, get_identity_prior(meta["identity"]), load_geometry_prior(meta["geometry"])


def _anon(parts, fast: bool, **kw) -> G2FaceAnonymizer:
    model, ident, geom = parts
    # each path on its own copy of the generator (the fast path's weight cache is per module)
    return G2FaceAnonymizer(copy.deepcopy(model), identity=ident, geometry=geom, payload="keyed", device="cpu",
                            fast=fast, **kw)


@pytest.fixture(scope="module")
def faces(datasets_root):
    import torch.nn.functional as F

    from g2face_eval.data.datasets import open_dataset
    from g2face_eval.imaging import to_tensor

    ds = open_dataset("celebahq256", datasets_root, split="test", limit=4)
    samples = [ds.load(i) for i in ds.ids()]
    x = to_tensor([s.image for s in samples])
    return F.interpolate(x, size=(64, 64), mode="area"), [s.id for s in samples]


@pytest.fixture(scope="module")
def runs(shipped_parts, faces):
    x, ids = faces
    keys = derive_keys("fastpath", ids)
    ref, fast = _anon(shipped_parts, False), _anon(shipped_parts, True)
    assert fast.fast and not ref.fast
    out = {"keys": keys, "fast_anon": fast}
    out["ref"] = ref.anonymize(x, keys)
    out["fast"] = fast.anonymize(x, keys)
    out["ref_rec"] = ref.recover(out["ref"].images, keys)
    out["fast_rec"] = fast.recover(out["fast"].images, keys)
    return out


def test_fast_matches_reference_fp32(runs):
    r, f = runs["ref"], runs["fast"]
    assert torch.equal(f.bits, r.bits), "hidden payload bits differ"
    p = psnr_db(f.images, r.images)
    assert float(p.min()) >= 40.0, p
    # the shipped model's recovery may authenticate for only some faces: both paths must extract the same bits,
    # accept the same faces and return the same images (generator recoveries and fail-closed pass-throughs);
    # test_fast_matches_reference_recovery_with_oracle below runs the recovery generator on every face
    rr, fr = runs["ref_rec"], runs["fast_rec"]
    assert torch.equal(fr.bits, rr.bits), "recovered (extracted) payload bits differ"
    assert torch.equal(fr.ok, rr.ok)
    assert float(psnr_db(fr.images, rr.images).min()) >= 40.0


@pytest.mark.parametrize("payload", ["keyed", "official"])
def test_fast_matches_reference_recovery_with_oracle(payload):
    """Recovery that really runs, fast vs reference: the tiny config of test_g2face_anonymizer.py with its
    OracleExtractor (returns the hidden bits, here with 16 of 1024 flipped), so the keyed payload decodes and
    authenticates (RS corrects the flips) and the official payload decodes; both paths recover the same
    anonymised images and must agree (PSNR >= 40 dB, identical extracted bits)."""
    from test_g2face_anonymizer import CFG, OracleExtractor, _make  # tests/ is on sys.path

    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    keys = derive_keys("fast-recovery", ["a", "b", "c"])
    ref, fast = _make(payload=payload, fast=False), _make(payload=payload, fast=True)  # same seed: same weights
    assert fast.fast and not ref.fast
    a = ref.anonymize(x, keys)
    assert torch.equal(fast.anonymize(x, keys).bits, a.bits)
    flips = torch.zeros_like(a.bits, dtype=torch.bool)
    flips[:, torch.randperm(CFG.n_bits, generator=torch.Generator().manual_seed(4))[:16]] = True
    extracted = torch.where(flips, 1 - a.bits, a.bits)
    for anon in (ref, fast):
        anon.model.hiding_extractor = OracleExtractor(CFG.bits_shape)
        anon.model.hiding_extractor.bits = extracted
    rr, fr = ref.recover(a.images, keys), fast.recover(a.images, keys)
    if payload == "keyed":
        assert rr.ok is not None and fr.ok is not None
        assert bool(rr.ok.all()) and bool(fr.ok.all()), (rr.ok, fr.ok)  # authenticated on both paths
    else:
        assert rr.ok is None and fr.ok is None  # no authentication in the official mode
    assert torch.equal(rr.bits, extracted) and torch.equal(fr.bits, extracted)
    # recovery ran (not the fail-closed pass-through of the input)
    assert float((rr.images - a.images).abs().mean()) > 1e-3 and float((fr.images - a.images).abs().mean()) > 1e-3
    assert torch.equal(fr.bits, rr.bits), "recovered payload bits differ"
    p = psnr_db(fr.images, rr.images)
    assert float(p.min()) >= 40.0, p


def test_bf16_autocast_runs_and_is_close(shipped_parts, faces, runs):
    x, _ = faces
    keys = runs["keys"]
    bf = _anon(shipped_parts, True, amp_dtype=torch.bfloat16)
    y = bf.anonymize(x, keys)
    assert torch.isfinite(y.images).all()
    assert torch.equal(y.bits, runs["fast"].bits)  # priors + payload stay fp32: identical hidden bits
    p = psnr_db(y.images, runs["fast"].images)
    print("bf16 vs fp32 fast path PSNR (dB):", [round(float(v), 1) for v in p])
    assert float(p.min()) >= BF16_PSNR_BOUND_DB, p
    rec = bf.recover(y.images, keys)
    assert torch.isfinite(rec.images).all() and rec.ok is not None


def test_batch_composition_independence(faces, runs):
    """Image i gives the same hidden bits and (to float jitter) the same output alone, in the full batch, and
    in a different sub-batch."""
    x, _ = faces
    keys, fast, full = runs["keys"], runs["fast_anon"], runs["fast"]
    for sl in (slice(1, 2), slice(2, 4), slice(0, 3)):
        part = fast.anonymize(x[sl], keys[sl])
        assert torch.equal(part.bits, full.bits[sl]), sl
        assert float(psnr_db(part.images, full.images[sl]).min()) >= 80.0, sl
    # reversed order: same per-image results
    rev = fast.anonymize(x.flip(0), keys[::-1])
    assert torch.equal(rev.bits.flip(0), full.bits)


def test_keyed_noise_module_equals_per_map_draws():
    cfg = G2FaceConfig.tiny()
    model = G2Face(cfg, with_discriminator=False)
    kn = KeyedNoise(model.noise_shapes())
    seeds = torch.tensor([key_seed(k) for k in derive_keys("n", ["a", "b", "c"])], dtype=torch.int64)
    for stream in (2, 3):
        a, b = kn(seeds, stream), keyed_noise(seeds, model.anonymous_net, stream)
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    kz = KeyedNoise([(1, cfg.z_dim)])
    assert torch.equal(kz.draw(seeds, 1), keyed_normal(seeds, (cfg.z_dim,), 1))


def test_weight_cache_is_invalidated_when_weights_change():
    torch.manual_seed(0)
    cfg = G2FaceConfig.tiny()
    model = G2Face(cfg, with_discriminator=False)

    class Geo:
        def coefficients(self, x):
            return torch.zeros(x.shape[0], 147)

    class Ident(torch.nn.Module):
        def forward(self, x):
            return x.mean((2, 3)).repeat(1, cfg.id_dim // 3 + 1)[:, : cfg.id_dim]

    fast = G2FaceAnonymizer(model, identity=Ident(), geometry=Geo(), payload="official", fast=True)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    keys = [b"a", b"b"]
    y0 = fast.anonymize(x, keys).images
    cached = {(id(m), k): v[1] for m in model.modules() for k, v in m.__dict__.get("_weight_cache", {}).items()}
    before = {k: (t.data_ptr(), t.clone()) for k, t in cached.items()}
    assert before
    with torch.no_grad():  # in-place update (as an optimiser step) of every modulated conv weight
        for m in model.modules():
            if hasattr(m, "demodulate"):
                m.weight.mul_(-1.5)
    y1 = fast.anonymize(x, keys).images
    # rebuilt values are written where the old ones were (a captured CUDA graph reads them there)
    after = {(id(m), k): v[1] for m in model.modules() for k, v in m.__dict__.get("_weight_cache", {}).items()}
    assert all(after[k].data_ptr() == ptr for k, (ptr, _) in before.items())
    assert any(not torch.equal(after[k], old) for k, (_, old) in before.items())
    ref = G2FaceAnonymizer(copy.deepcopy(model), identity=Ident(), geometry=Geo(), payload="official", fast=False)
    yr = ref.anonymize(x, keys).images
    assert not torch.equal(y0, y1)
    assert float(psnr_db(y1, yr).min()) >= 40.0
    # state-dict load replaces the values in place too
    model.load_state_dict(G2Face(cfg, with_discriminator=False).state_dict(), strict=False)
    ref2 = G2FaceAnonymizer(copy.deepcopy(model), identity=Ident(), geometry=Geo(), payload="official", fast=False)
    assert float(psnr_db(fast.anonymize(x, keys).images, ref2.anonymize(x, keys).images).min()) >= 40.0


def test_flags_and_tensor_api(shipped_parts):
    a = _anon(shipped_parts, True, cuda_graphs=True, channels_last=True)
    assert not a.cuda_graphs  # CUDA graphs only on CUDA
    assert a.config()["fast"] and a.config()["channels_last"]
    with pytest.raises(ValueError):
        a.anonymize_tensors(torch.rand(1, 3, 64, 64), torch.zeros(1, dtype=torch.int64))  # keyed: needs keys
    ref = _anon(shipped_parts, False)
    with pytest.raises(ValueError):
        ref.configure(amp_dtype=torch.bfloat16)


@pytest.mark.skipif(not os.environ.get("G2FACE_TEST_COMPILE"),
                    reason="torch.compile on CPU (inductor C++ build): first call 223 s on this shared 2-core "
                           "machine (passed: hidden bits identical, PSNR >= 40 dB); set G2FACE_TEST_COMPILE=1 to "
                           "run it (scripts/gpu_fastpath_check.py runs compile on CUDA)")
def test_compile_flag_matches_eager(shipped_parts, faces, runs):
    x, _ = faces
    keys = runs["keys"]
    c = _anon(shipped_parts, True, compile=True)
    t = time.perf_counter()
    y = c.anonymize(x, keys)
    print(f"compiled first call {time.perf_counter() - t:.1f} s")
    assert torch.equal(y.bits, runs["fast"].bits)
    assert float(psnr_db(y.images, runs["fast"].images).min()) >= 40.0


def test_to_device_moves_everything(shipped_parts, faces, runs):
    """The harness calls ``method.to(device)``: the shipped method and G2FaceAnonymizer implement it."""
    from g2face_eval import methods

    g = methods.build("g2face")
    assert g.to("cpu") is g and g.inner.device == torch.device("cpu")
    assert g.inner.keyed_noise.map_id.device.type == "cpu"
    x, _ = faces
    a = _anon(shipped_parts, True).to("cpu")
    assert torch.equal(a.anonymize(x, runs["keys"]).bits, runs["fast"].bits)


def _tiny_with_injections(seed: int = 0) -> G2Face:
    """Tiny G2Face whose hiding injections are not the zero of their initialisation (a trained model's are not;
    a zero injection would make any folding look exact)."""
    torch.manual_seed(seed)
    model = G2Face(G2FaceConfig.tiny(), with_discriminator=False).eval()
    with torch.no_grad():
        for inj in model.anonymous_net.hiding_injects:
            inj.weight.normal_()
            inj.activate.bias.normal_()
            inj.conv.bias.normal_()
    return model


def test_binary_bit_tables_equal_the_official_injection():
    """The fast path's binary-bit form (``G2FaceGenerator.fold_binary_bits``): table lookups equal the official
    injections for 0/1 bits, level by level and through the whole generator; it is off under autograd (training
    may feed soft bits) and off by default (the reference path)."""
    from g2face_eval.models import g2face as g2

    model = _tiny_with_injections()
    cfg = model.cfg
    g = torch.Generator().manual_seed(5)
    bits = (torch.rand(3, *cfg.bits_shape, generator=g) > 0.5).float()
    net = model.anonymous_net
    folded = [inj for inj in net.hiding_injects if inj.in_ch <= inj.max_folded_in_ch]
    assert sorted({inj.in_ch for inj in folded}) == [1, 4] and len(folded) < len(net.hiding_injects)
    with torch.no_grad():
        for inj in folded:
            assert inj.table().shape == (2 ** inj.in_ch, inj.conv.out_channels)
            ref = inj(bits)
            codes = inj.codes(bits)
            assert codes.shape == (3, inj.resolution, inj.resolution) and int(codes.max()) < 2 ** inj.in_ch
            assert float((inj.folded(codes, torch.float32) - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
            assert inj.folded(codes, torch.bfloat16).dtype == torch.bfloat16
            w = torch.randn(5, inj.conv.out_channels, generator=g)
            via_conv = F.conv2d(ref, w[:, :, None, None])
            term = inj.folded_term(codes, w, torch.float32)
            assert float((term - via_conv).abs().max()) <= 1e-5 * float(via_conv.abs().max())
    x = torch.rand(3, 3, cfg.size, cfg.size, generator=g) * 2 - 1
    z, geo = torch.randn(3, cfg.z_dim, generator=g), torch.randn(3, 147, generator=g) * 0.1
    noise = [torch.randn(3, 1, h, w, generator=g) for h, w in model.noise_shapes()]
    assert not net.fold_binary_bits                                      # reference form by default
    with torch.no_grad():
        official = model.anonymize_tensor(x, geo, bits, z, noise)
        model.set_inference_cache(True)
        assert net.fold_binary_bits
        fast = model.anonymize_tensor(x, geo, bits, z, noise)
        g2.FOLD_BINARY_BITS = False
        try:
            switched_off = model.anonymize_tensor(x, geo, bits, z, noise)
        finally:
            g2.FOLD_BINARY_BITS = True
    assert not torch.equal(fast, official)                               # a different computation ...
    assert float((fast - official).abs().max()) <= 1e-5 * float(official.abs().max())   # ... same function
    assert torch.equal(switched_off, official)                          # the switch restores the official form
    soft = torch.rand(3, *cfg.bits_shape, generator=g)                   # training: soft bits, autograd on
    with torch.no_grad():
        soft_ref = model.set_inference_cache(False).anonymize_tensor(x, geo, soft, z, noise)
    soft_grad = model.set_inference_cache(True).anonymize_tensor(x, geo, soft, z, noise)
    assert torch.allclose(soft_grad.detach(), soft_ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("k", "stride", "pad", "bias"), [(3, 1, 1, True), (4, 2, 1, False), (1, 1, 0, True)])
def test_conv2d_as_gemm_equals_conv2d(k, stride, pad, bias):
    """``conv2d_as_gemm`` (how CUDA can run a convolution of the 3-channel image, ``SMALL_CIN_CONV = "gemm"``) is
    ``F.conv2d``: same values and gradients, output in channels_last, bf16 under autocast."""
    from g2face_eval.models.g2face import conv2d_as_gemm

    g = torch.Generator().manual_seed(k)
    x = torch.randn(2, 3, 19, 17, generator=g, requires_grad=True)
    w = torch.randn(16, 3, k, k, generator=g, requires_grad=True)
    b = torch.randn(16, generator=g, requires_grad=True) if bias else None
    ref = F.conv2d(x, w, b, stride, pad)
    out = conv2d_as_gemm(x, w, b, stride, pad)
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert float((out - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
    gr = torch.autograd.grad(ref.square().sum(), [x, w])
    go = torch.autograd.grad(out.square().sum(), [x, w])
    for u, v in zip(go, gr, strict=True):
        assert float((u - v).abs().max()) <= 1e-4 * float(v.abs().max())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o16 = conv2d_as_gemm(x, w, b, stride, pad)
    assert o16.dtype == torch.bfloat16
    assert float((o16.float() - ref).abs().max()) <= 0.02 * float(ref.abs().max())
