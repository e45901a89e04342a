"""Identity priors: SFace rebuilt in torch equals OpenCV's FaceRecognizerSF on real aligned faces."""

from __future__ import annotations

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
