"""Identity priors: SFace rebuilt in torch equals OpenCV's FaceRecognizerSF on real aligned faces."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from g2face_eval.models.identity import ArcFaceIdentity, SFaceIdentity, get_identity_prior, sface_onnx_path

cv2 = pytest.importorskip("cv2")


def _yunet_path() -> str:
    return str(sface_onnx_path().parent / "face_detection_yunet_2023mar_int8bq.onnx")


@pytest.fixture(scope="module")
def sface():
    return SFaceIdentity().eval()


@pytest.fixture(scope="module")
def aligned(datasets_root):
    """Aligned 112x112 BGR crops and OpenCV SFace features for a few real LFW faces."""
    root = datasets_root / "lfw" / "lfw-deepfunneled"
    files = sorted(root.glob("*/*.jpg"))[:600:75]
    det = cv2.FaceDetectorYN.create(_yunet_path(), "", (250, 250), 0.6)
    rec = cv2.FaceRecognizerSF.create(str(sface_onnx_path()), "")
    crops, feats = [], []
    for f in files:
        img = cv2.imread(str(f))
        det.setInputSize((img.shape[1], img.shape[0]))
        _, faces = det.detect(img)
        if faces is None:
            continue
        crop = rec.alignCrop(img, faces[0])
        crops.append(crop)
        feats.append(rec.feature(crop).reshape(-1).copy())
    assert len(crops) >= 5
    return np.stack(crops), np.stack(feats)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_sface_torch_matches_opencv(sface, aligned):
    crops_bgr, ref = aligned
    rgb01 = torch.from_numpy(crops_bgr[..., ::-1].copy()).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        out = sface.embed_aligned(rgb01).numpy()
    cos = _cos(out, ref)
    assert cos.min() >= 0.99, cos
    # different identities stay apart, i.e. the comparison is not trivially satisfied
    assert _cos(out[:1].repeat(len(out) - 1, 0), ref[1:]).max() < 0.9


def test_sface_is_differentiable_and_m11_entry(sface, aligned):
    crops_bgr, ref = aligned
    rgb01 = torch.from_numpy(crops_bgr[:2, :, :, ::-1].copy()).permute(0, 3, 1, 2).float() / 255
    x = (rgb01 * 2 - 1).requires_grad_(True)
    e = sface(x)
    assert e.shape == (2, 128) and sface.dim == 128
    e.pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # whole-image entry point resizes (here 224 -> 112) and stays close to the aligned path
    big = torch.nn.functional.interpolate(x.detach(), size=224, mode="bilinear", align_corners=False)
    with torch.no_grad():
        e2 = sface(big)
    assert float(torch.nn.functional.cosine_similarity(e2, e.detach()).min()) > 0.95


def test_arcface_prior_interface():
    torch.manual_seed(0)
    p = get_identity_prior("arcface")
    assert isinstance(p, ArcFaceIdentity) and p.dim == 512
    p.train()
    assert not p.net.training  # frozen prior keeps BatchNorm in eval mode
    with torch.no_grad():
        e = p(torch.rand(1, 3, 256, 256) * 2 - 1)  # whole un-aligned image, nearest-resized to 112
    assert e.shape == (1, 512)
    with pytest.raises(KeyError):
        get_identity_prior("nope")


def _arcface_with_statistics(seed: int = 0) -> ArcFaceIdentity:
    """Random iresnet50 with non-trivial BatchNorm statistics and affine terms (a trained network's BN is not the
    identity; folding an identity BN would test nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        p = ArcFaceIdentity()                                  # the same network for the same seed
    with torch.no_grad():
        for m in p.net.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return p


def test_arcface_inference_form_is_the_same_function():
    """``ArcFaceIdentity`` runs its folded, channels_last inference form (``FusedIResNet``): the same embedding as
    the plain eval-mode network up to float rounding, the same input gradient, rebuilt after a weight change,
    and invisible in the state dict."""
    from g2face_eval.oracles.arcface import FusedIResNet

    p = _arcface_with_statistics()
    x = torch.rand(3, 3, 256, 256, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        fused = p(x)
        p.fused = False
        plain = p(x)
        assert torch.equal(plain, p.net(torch.nn.functional.interpolate(x, size=(112, 112))))
        p.fused = True
    assert isinstance(p.inference_net(), FusedIResNet)
    assert not torch.equal(fused, plain)                      # it is a different computation ...
    rel = float((fused - plain).abs().max() / plain.abs().max())
    assert rel < 1e-5, rel                                    # ... of the same function (measured 1.5e-6)
    assert torch.equal(p(x), fused)                           # deterministic: the bits the payload hides
    # the identity loss differentiates through it (w.r.t. the input; the prior is frozen)
    xs = [x[:1].clone().requires_grad_(True) for _ in range(2)]
    p(xs[0]).square().sum().backward()
    p.fused = False
    p(xs[1]).square().sum().backward()
    p.fused = True
    g0, g1 = xs[0].grad, xs[1].grad
    assert float((g0 - g1).abs().max() / g1.abs().max()) < 1e-4
    assert not any(q.requires_grad for q in p.inference_net().parameters())
    # state dict and parameters are the plain network's
    assert set(p.state_dict()) == {f"net.{k}" for k in p.net.state_dict()}
    # rebuilt when a weight or a statistic changes in place (optimiser step, load_state_dict)
    original = copy.deepcopy(p.state_dict())
    before = p.inference_net()
    with torch.no_grad():
        p.net.layer3[5].bn2.running_var.mul_(2.0)
        changed = p(x)
    assert p.inference_net() is before and not torch.equal(changed, fused)   # refreshed in place
    p.load_state_dict(original)
    with torch.no_grad():
        assert torch.equal(p(x), fused)
    with pytest.raises(ValueError, match="eval"):
        FusedIResNet(p.net.train(True))


def test_arcface_inference_form_does_not_depend_on_how_it_was_first_called(tmp_path):
    """The folded form is made in float32 whatever the caller's mode: a first call under bf16 autocast (training's
    first identity loss) or inference mode must not leave a bf16-rounded or inference-only fold for later fp32
    and autograd calls; parameters replaced (``load_state_dict(assign=True)``) are seen; a network that trains or
    learns runs unfolded; the fold is neither pickled nor kept across ``.to``."""
    import io

    x = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(2)) * 2 - 1
    p = _arcface_with_statistics()
    with torch.no_grad():
        clean = p(x)
    for first in (lambda: torch.autocast("cpu", dtype=torch.bfloat16), torch.inference_mode):
        q = _arcface_with_statistics()
        with first():
            q(x)
        with torch.no_grad():
            assert torch.equal(q(x), clean)
        xg = x[:1].clone().requires_grad_(True)
        q(xg).sum().backward()                                 # an inference-mode fold could not be saved
        assert xg.grad is not None
    # replaced parameter objects (same values: same output; other values: followed)
    other = _arcface_with_statistics(seed=1)
    p.load_state_dict(other.state_dict(), assign=True)
    with torch.no_grad():
        assert torch.equal(p(x), other(x))
    # training or learning: the plain network (a folded snapshot would not follow its statistics or gradients)
    p.net.layer1.train()
    with torch.no_grad():
        assert torch.equal(p(x), p.net(x))
    p.net.eval()
    p.net.fc.weight.requires_grad_(True)
    assert torch.equal(p(x), p.net(x))
    p.net.fc.weight.requires_grad_(False)
    # derived state: not pickled, dropped by .to
    p.inference_net()
    buf = io.BytesIO()
    torch.save(p, buf)
    plain = io.BytesIO()
    p.__dict__.pop("_inference")
    torch.save(p, plain)
    assert abs(buf.tell() - plain.tell()) < 4096
    p.inference_net()
    p.to(torch.float32)
    assert "_inference" not in p.__dict__


def test_arcface_inference_form_is_refreshed_in_place():
    """A weight change rebuilds the folded form into the same memory (a captured CUDA graph reads it there)."""
    p = _arcface_with_statistics()
    x = torch.rand(1, 3, 112, 112, generator=torch.Generator().manual_seed(3)) * 2 - 1
    first = p.inference_net()
    ptr = first.fc.weight.data_ptr()
    with torch.no_grad():
        p.net.fc.weight.mul_(0.5)
        y = p(x)
    assert p.inference_net() is first and first.fc.weight.data_ptr() == ptr
    p.fused = False
    with torch.no_grad():
        assert float((y - p(x)).abs().max()) <= 1e-5 * float(y.abs().max())
