"""The shipped G2Face checkpoint through the zoo and the method registry, on real faces."""

from __future__ import annotations

import pytest
import torch

from g2face_eval import methods, zoo
from g2face_eval.anonymizer import derive_keys
from g2face_eval.data.datasets import open_dataset
from g2face_eval.imaging import to_tensor
from g2face_eval.models import shipped


@pytest.fixture(scope="module")
def g2face():
    return methods.build("g2face")


@pytest.fixture(scope="module")
def faces(datasets_root):
    ds = open_dataset("celebahq256", datasets_root, split="test", limit=4)
    samples = [ds.load(i) for i in ds.ids()]
    return to_tensor([s.image for s in samples]), [s.id for s in samples]


def test_checkpoint_is_verified_and_in_default_methods():
    assert zoo.available(shipped.WEIGHT_NAME)
    spec = zoo.WEIGHTS.get(shipped.WEIGHT_NAME)
    assert spec.sha256 and spec.sha256 == zoo.sha256_file(zoo.path(shipped.WEIGHT_NAME))
    cfg, meta, sd = zoo.load(shipped.WEIGHT_NAME)
    assert not any(k.startswith("discriminator.") for k in sd)
    assert meta["identity"] in ("sface", "arcface") and int(meta["train_step"]) > 0
    assert "g2face" in methods.default_methods()


def test_anonymize_shape_range_determinism(g2face, faces):
    x, ids = faces
    keys = derive_keys("k", ids)
    a = g2face.anonymize(x, keys)
    assert a.images.shape == x.shape and a.images.dtype == torch.float32
    assert float(a.images.min()) >= 0 and float(a.images.max()) <= 1
    assert a.bits is not None and a.bits.shape[0] == x.shape[0]
    # the face changed, and the same keys give the same output (batch-composition invariance of the hidden
    # bits -- grid quantisation with a margin -- is tested in test_g2face_fastpath.py)
    assert float((a.images - x).abs().mean()) > 0.02
    b = g2face.anonymize(x, keys)
    assert torch.equal(a.images, b.images)
    c = g2face.anonymize(x, derive_keys("other", ids))
    assert float((a.images - c.images).abs().mean()) > 1e-3


def test_wrong_key_fails_closed(g2face, faces):
    x, ids = faces
    a = g2face.anonymize(x, derive_keys("right", ids))
    r = g2face.recover(a.images, derive_keys("wrong", ids))
    assert r.ok is not None and not bool(r.ok.any())
    # fail closed: the anonymized image comes back unchanged, carrying no recovered identity
    assert torch.equal(r.images, a.images)
