import socket
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from g2face_eval.metrics import image as M
from g2face_eval.metrics.base import MetricUnavailable


def _faces(root, n=3):
    files = sorted((root / "celebahq256" / "images").glob("*.jpg"))[:n]
    assert files, "no celebahq256 images"
    arr = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).double() / 255.0


def _blur(x, sigma):
    import torchvision.transforms.functional as TF

    return TF.gaussian_blur(x.float(), kernel_size=2 * int(3 * sigma) + 1, sigma=sigma).double()


def _sk(a, b, dr):
    ps, ss = [], []
    for x, y in zip(a.permute(0, 2, 3, 1).numpy(), b.permute(0, 2, 3, 1).numpy(), strict=True):
        ps.append(peak_signal_noise_ratio(x, y, data_range=dr))
        ss.append(
            structural_similarity(
                x,
                y,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=dr,
                channel_axis=-1,
            )
        )
    return np.array(ps), np.array(ss)


@pytest.mark.parametrize("distortion", ["noise", "blur", "crop_noise", "contrast", "flip"])
def test_psnr_ssim_match_skimage_on_real_faces(datasets_root, distortion):
    x = _faces(datasets_root)
    g = torch.Generator().manual_seed(0)
    if distortion == "noise":
        y = (x + 0.05 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    elif distortion == "blur":
        y = _blur(x, 2.0)
    elif distortion == "contrast":  # same structure, SSIM near 1: the worst case for float32 cancellation
        y = 0.7 * x + 0.1
    elif distortion == "flip":
        y = x.flip(-1)
    else:  # odd, non-square size: exercises skimage's border crop on both axes
        x = x[:, :, 3:200, 10:183].contiguous()
        y = (x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    xf, yf = x.float(), y.float()  # the metrics see float32 batches, skimage gets the same values in float64
    ref_p, ref_s = _sk(xf.double(), yf.double(), 1.0)
    np.testing.assert_allclose(M.psnr(xf, yf, data_range=1.0).numpy(), ref_p, atol=1e-4, rtol=0)
    np.testing.assert_allclose(M.ssim(xf, yf, data_range=1.0).numpy(), ref_s, atol=1e-5, rtol=0)
    # data_range is honoured: the same images on a 0..255 scale
    ref_p255, ref_s255 = _sk(xf.double() * 255, yf.double() * 255, 255.0)
    np.testing.assert_allclose(M.psnr(xf * 255, yf * 255, data_range=255.0).numpy(), ref_p255, atol=1e-4)
    np.testing.assert_allclose(M.ssim(xf * 255, yf * 255, data_range=255.0).numpy(), ref_s255, atol=1e-5)


def test_psnr_of_uint8_batches_is_exact(datasets_root):
    """uint8 batches: PSNR from the exact integer MSE, equal to skimage's on the 8-bit arrays (float64) to 1e-12,
    and to the float path on the same images scaled to [0, 1] to float precision; mixed or misshapen input is
    refused, identical images give +inf."""
    from skimage.metrics import peak_signal_noise_ratio

    x = (_faces(datasets_root) * 255).round().to(torch.uint8)
    g = torch.Generator().manual_seed(3)
    y = (x.double() + 12 * torch.randn(x.shape, generator=g, dtype=torch.float64)).round().clamp(0, 255)
    y = y.to(torch.uint8)
    y[0] = x[0]
    y[1, :, :, :5] = x[1, :, :, :5] ^ 1  # differs by one grey level in a few columns only: MSE far below 1
    got = M.psnr(x, y, data_range=255.0).numpy()
    ref = [peak_signal_noise_ratio(a.permute(1, 2, 0).numpy(), b.permute(1, 2, 0).numpy(), data_range=255)
           for a, b in zip(x[1:], y[1:], strict=True)]
    assert np.isinf(got[0])
    np.testing.assert_allclose(got[1:], ref, rtol=1e-12)
    np.testing.assert_allclose(got[1:], M.psnr(x.float() / 255, y.float() / 255, 1.0).numpy()[1:], rtol=1e-6)
    nhwc = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # the harness's (B,3,H,W) views of HWC images
    np.testing.assert_array_equal(M.psnr(nhwc, y, 255.0).numpy(), got)
    with pytest.raises(ValueError):
        M.psnr(x, y.float(), 255.0)
    with pytest.raises(ValueError):
        M.psnr(x[:, :2], y[:, :2], 255.0)


def test_identity_and_errors():
    x = torch.rand(2, 3, 32, 40)
    assert torch.isinf(M.psnr(x, x, 1.0)).all()
    np.testing.assert_allclose(M.ssim(x, x, 1.0).numpy(), 1.0, atol=1e-12)
    with pytest.raises(ValueError):
        M.ssim(x, x, None)
    with pytest.raises(ValueError):
        M.ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), 1.0)
    with pytest.raises(ValueError):
        M.ssim(torch.rand(1, 3, 7, 300), torch.rand(1, 3, 7, 300), 1.0)
    with pytest.raises(ValueError):
        M.psnr(x, x[:1], 1.0)


@pytest.mark.parametrize("hw", [(11, 13), (13, 11), (16, 256), (256, 12)])
def test_ssim_odd_sizes_ranges_and_layouts(datasets_root, hw):
    h, w = hw
    x = _faces(datasets_root)[:, :, 40 : 40 + h, 7 : 7 + w].float()
    g = torch.Generator().manual_seed(h * 1000 + w)
    y = (0.9 * x + 0.05 + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    # 0.7 is not a float32 value: that range takes the float64-division route
    for scale in (1.0, 255.0, 0.7):
        xs, ys = x * scale, y * scale
        ref = _sk(xs.double(), ys.double(), scale)[1]
        np.testing.assert_allclose(M.ssim(xs, ys, data_range=scale).numpy(), ref, atol=1e-5, rtol=0)
    ref = _sk(x.double(), y.double(), 1.0)[1]
    for xa, ya in (
        (x.double(), y.double()),  # float64 batches (exactly float32 values)
        (x.contiguous(memory_format=torch.channels_last), y[..., :].transpose(2, 3).contiguous().transpose(2, 3)),
    ):
        np.testing.assert_allclose(M.ssim(xa, ya, data_range=1.0).numpy(), ref, atol=1e-5, rtol=0)


def test_ssim_symmetric_identity_inputs_untouched(datasets_root):
    x = _faces(datasets_root).float()
    y = _blur(x, 1.0).float()
    x0, y0 = x.clone(), y.clone()
    for dr in (1.0, 255.0):
        xs, ys = (x, y) if dr == 1.0 else (x * dr, y * dr)
        assert torch.equal(M.ssim(xs, ys, dr), M.ssim(ys, xs, dr))
        np.testing.assert_allclose(M.ssim(xs, xs, dr).numpy(), 1.0, atol=1e-12, rtol=0)
    assert torch.equal(x, x0) and torch.equal(y, y0)  # float32 batches are read in place, never written


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_lpips_with_fabricated_alexnet_backbone(tmp_path, no_network):
    import torchvision

    torch.manual_seed(0)
    sd = torchvision.models.alexnet(weights=None).state_dict()
    f = tmp_path / "alexnet-fabricated.pth"
    torch.save(sd, f)
    m = M.LPIPS("alex", weights_path=str(f))
    # the backbone really came from the file (not torchvision's random init)
    np.testing.assert_array_equal(
        getattr(m.model.net.slice1, "0").weight.numpy(), sd["features.0.weight"].numpy()
    )
    np.testing.assert_array_equal(
        getattr(m.model.net.slice5, "10").bias.numpy(), sd["features.10.bias"].numpy()
    )
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, 64, 64, generator=g)
    b = (a + 0.2 * torch.rand(2, 3, 64, 64, generator=g)).clamp(0, 1)
    assert torch.allclose(m(a, a, 1.0), torch.zeros(2, dtype=torch.float64), atol=1e-7)
    dab, dba = m(a, b, 1.0), m(b, a, 1.0)
    assert (dab > 0).all() and torch.allclose(dab, dba, atol=1e-6)
    assert torch.allclose(m(a * 255, b * 255, 255.0), dab, atol=1e-5)
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": sd["features.0.weight"]}, bad)
    with pytest.raises(ValueError):
        M.LPIPS("alex", weights_path=str(bad))


def test_lpips_unavailable_without_user_file(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("G2FACE_WEIGHTS_DIR", str(tmp_path))
    for net in ("alex", "vgg"):
        with pytest.raises(MetricUnavailable):
            M.LPIPS(net)
    # a file with the right name but wrong content fails the zoo's digest check: unavailable, never faked
    import torchvision

    torch.save(torchvision.models.alexnet(weights=None).state_dict(), tmp_path / "alexnet-owt-7be5be79.pth")
    with pytest.raises(MetricUnavailable):
        M.LPIPS("alex")


def test_data_outside_the_given_range_is_refused():
    """Values above data_range (0..255 data measured with data_range 1) would give a plausible-looking wrong
    number (PSNR -21.8 dB, an SSIM near 1): refused, naming the range. Data inside a larger range (a dark 0..1
    image with data_range 255) cannot be told from a dark image and stays allowed."""
    from g2face_eval.metrics.image import psnr, ssim

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    for fn in (psnr, ssim):
        with pytest.raises(ValueError, match="do not match data_range=1"):
            fn(a * 255, b * 255, 1.0)
        with pytest.raises(ValueError, match="do not match data_range=1"):
            fn(a - 0.5, b, 1.0)
        assert torch.isfinite(fn(a, b, 1.0)).all() and torch.isfinite(fn(a * 255, b * 255, 255.0)).all()


def test_uint8_psnr_needs_the_8_bit_range():
    """uint8 batches with data_range 1 gave -21 dB without a word (found by a review)."""
    a = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    b = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="data_range must be 255"):
        M.psnr(a, b, 1.0)
    assert float(M.psnr(a, b, 255)) == pytest.approx(float(M.psnr(a.float(), b.float(), 255.0)), abs=1e-9)
