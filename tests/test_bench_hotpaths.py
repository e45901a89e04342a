"""pytest-benchmark micro-benchmarks of CPU hot paths (marker ``bench``; run by ``nox -s bench``:
``pytest -m bench --benchmark-only``). Excluded from the default test session (``-m "not bench"``).

Small inputs so that the whole file runs in well under a minute on a shared 2-core machine; the numbers
are for spotting regressions between commits on the same machine, not for the report (that is
``g2face-eval bench``).
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.bench

B, S = 4, 64


@pytest.fixture(scope="module")
def pair():
    g = torch.Generator().manual_seed(0)
    return torch.rand(B, 3, S, S, generator=g), torch.rand(B, 3, S, S, generator=g)


@pytest.fixture(scope="module")
def tiny_pipe():
    from g2face_eval import bench

    return bench.build_pipeline("tiny", "cpu")


def _nograd(fn, *a):
    with torch.no_grad():
        return fn(*a)


def test_psnr(benchmark, pair):
    from g2face_eval.metrics.image import psnr

    benchmark(psnr, *pair, 1.0)


def test_ssim(benchmark, pair):
    from g2face_eval.metrics.image import ssim

    benchmark(ssim, *pair, 1.0)


def test_upfirdn2d_blur(benchmark):
    from g2face_eval.models.stylegan2 import make_kernel, upfirdn2d

    x = torch.randn(B, 32, S, S)
    k = make_kernel([1, 3, 3, 1])
    benchmark(_nograd, lambda t: upfirdn2d(t, k, pad=(2, 1)), x)


def test_modulated_conv(benchmark):
    from g2face_eval.models.stylegan2 import ModulatedConv2d

    m = ModulatedConv2d(32, 32, 3, 32).eval()
    x, s = torch.randn(B, 32, S, S), torch.randn(B, 32)
    benchmark(_nograd, m, x, s)


def test_keyed_noise(benchmark, tiny_pipe):
    seeds = torch.arange(B, dtype=torch.int64)
    benchmark(_nograd, tiny_pipe.noise, seeds, 2)


def test_float2bit_bit2float(benchmark, tiny_pipe):
    v = torch.randn(B, tiny_pipe.cfg.id_dim)

    def roundtrip():
        return tiny_pipe.bit2float(tiny_pipe.float2bit(v))

    out = benchmark(roundtrip)
    assert torch.equal(out, v)


def test_tiny_generator(benchmark, tiny_pipe):
    """The G2Face generator alone at the tiny config (priors excluded: ArcFace dominates tiny pipelines)."""
    p = tiny_pipe
    cfg = p.cfg
    x = torch.rand(B, 3, cfg.size, cfg.size) * 2 - 1
    styles = torch.randn(B, cfg.n_latent, cfg.style_dim)
    bits = torch.randint(0, 2, (B, *cfg.bits_shape)).float()
    noise = p.noise(torch.arange(B, dtype=torch.int64), 2)
    benchmark(_nograd, p.model.anonymous_net, x, styles, bits, noise)


def test_pixelate_baseline(benchmark):
    from g2face_eval import methods

    m = methods.build("pixelate_16")
    x = torch.rand(B, 3, 256, 256)
    mask = torch.ones(B, 1, 256, 256)
    keys = [b"k%d" % i for i in range(B)]
    benchmark(lambda: m.anonymize(x, keys, face_masks=mask))


def test_blur_baseline_sigma64(benchmark):
    from baselines.blur import gaussian_blur

    x = torch.rand(B, 3, 256, 256)
    benchmark(gaussian_blur, x, 64.0)


def test_dlib_resnet_port(benchmark):
    from g2face_eval import zoo

    net = zoo.load("dlib_resnet")
    chips = torch.randint(0, 256, (B, 150, 150, 3), dtype=torch.uint8)
    benchmark(_nograd, net, chips)


def test_effnet_lite0_features(benchmark):
    from g2face_eval.metrics import realism

    ext = realism.get_extractor("effnet_lite0")
    x = torch.rand(B, 3, 256, 256)
    benchmark(ext, x)


@pytest.fixture(scope="module")
def embedded_faces():
    from g2face_eval.data.datasets import open_dataset

    return [s.image for s in list(open_dataset("embedded"))[:B]]


@pytest.mark.parametrize("how", ["detect", "finds"])
def test_dlib_hog(benchmark, embedded_faces, how):
    """dlib HOG on 256 px faces: full detect (with the shape predictor), and the harness's detection decision
    ``finds`` (boxes only, matched to the subject's box)."""
    from g2face_eval.oracles.detectors import get_detector

    det = get_detector("dlib_hog")
    subjects = [get_detector("yunet").detect(x)[0].box for x in embedded_faces]
    fn = {
        "detect": lambda: [bool(det.detect(x)) for x in embedded_faces],
        "finds": lambda: [det.finds(x, b) for x, b in zip(embedded_faces, subjects, strict=True)],
    }[how]
    assert benchmark(fn) == [True] * len(embedded_faces)
