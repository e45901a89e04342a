"""The torch port of dlib's face-recognition ResNet against dlib's own implementation, on real face chips."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from g2face_eval import zoo
from g2face_eval.oracles import dlib_resnet, recognizers
from g2face_eval.oracles.detectors import get_detector


@pytest.fixture(scope="module")
def chips(datasets_root):
    """150x150 dlib chips of 12 LFW faces (aligned as the 'dlib' recognizer aligns them)."""
    rec, det = recognizers.get_recognizer("dlib"), get_detector("yunet")
    root = datasets_root / "lfw" / "lfw-deepfunneled"
    out = []
    for person in sorted(p for p in root.iterdir() if p.is_dir())[:12]:
        bgr = cv2.imread(str(sorted(person.iterdir())[0]), cv2.IMREAD_COLOR)
        img = np.ascontiguousarray(bgr[:, :, ::-1])
        faces = det.detect(img)
        assert faces, person
        out.append(rec.align(img, faces[0]))
    return out


def test_port_matches_dlib(chips):
    import dlib

    reference = dlib.face_recognition_model_v1(str(zoo.path("dlib_resnet")))
    want = np.array([np.asarray(d) for d in reference.compute_face_descriptor(chips)], np.float32)
    net = dlib_resnet.DlibResNet.from_dat(zoo.path("dlib_resnet"))
    with torch.inference_mode():
        got = net(torch.from_numpy(np.stack(chips))).numpy()
        single = net(torch.from_numpy(chips[3][None])).numpy()
    assert want.shape == got.shape == (12, 128)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)
    np.testing.assert_allclose(single[0], got[3], atol=2e-5, rtol=0)  # batching does not change a descriptor
    # the faces are different people: the descriptors are not all alike
    d = np.linalg.norm(want[:, None] - want[None], axis=-1)
    assert d[np.triu_indices(12, 1)].min() > 0.3


def test_recognizer_uses_the_port(chips):
    rec = recognizers.get_recognizer("dlib")
    assert isinstance(rec._net, dlib_resnet.DlibResNet)
    emb = rec.embed_aligned(chips[:5])
    assert emb.shape == (5, 128) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert rec.embed_aligned([]).shape == (0, 128)


def test_input_checks():
    net = dlib_resnet.DlibResNet.from_dat(zoo.path("dlib_resnet"))
    with pytest.raises(ValueError, match="150, 150, 3"):
        net(torch.zeros(1, 3, 150, 150))


def test_format_errors(tmp_path):
    data = zoo.path("dlib_resnet").read_bytes()
    truncated = tmp_path / "truncated.dat"
    for n in (len(data) // 2, 40, 3):  # inside the weights, inside the wrapper versions, inside the loss layer
        truncated.write_bytes(data[:n])
        with pytest.raises(dlib_resnet.DlibFormatError, match="file ends"):
            dlib_resnet.read_dat(truncated)
    other = tmp_path / "other.dat"
    other.write_bytes(zoo.path("dlib_shape5").read_bytes())
    with pytest.raises(dlib_resnet.DlibFormatError):
        dlib_resnet.read_dat(other)
    renamed = tmp_path / "renamed.dat"
    renamed.write_bytes(data.replace(b"\x01\x05con_4", b"\x01\x05con_9", 1))
    with pytest.raises(dlib_resnet.DlibFormatError, match="unknown layer 'con_9'"):
        dlib_resnet.read_dat(renamed)
    pooled = tmp_path / "pooled.dat"  # forward hard-codes the 3x3/2 max pool: a file with another one is refused
    assert data.count(b"max_pool_2\x01\x03\x01\x03") == 1
    pooled.write_bytes(data.replace(b"max_pool_2\x01\x03\x01\x03", b"max_pool_2\x01\x02\x01\x02"))
    with pytest.raises(dlib_resnet.DlibFormatError, match="pooling settings"):
        dlib_resnet.DlibResNet.from_dat(pooled)
