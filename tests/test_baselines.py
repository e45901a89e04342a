"""Classic baselines: shape/range, only the face region changes, determinism for a key."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baselines._region import box_mask, parsing_to_face_mask
from baselines.blur import gaussian_blur
from g2face_eval import methods as M
from g2face_eval.anonymizer import derive_keys

CLASSIC = list(M.CLASSIC_METHODS)


def _batch(n=3, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    masks = torch.zeros(n, 1, size, size)
    masks[:, :, 16:48, 20:44] = 1.0  # an off-centre face region
    masks[1, :, 10:30, 10:30] = 1.0
    return x, masks


def test_registry_lists_baselines_and_identity():
    names = M.default_methods()
    for n in ("blur_s4", "pixelate_8", "mask_black", "noise_s0.2", "identity"):
        assert n in names
    assert M.METHODS.get("identity")().reversible


@pytest.mark.parametrize("name", CLASSIC)
def test_shape_range_and_region_only(name):
    x, masks = _batch()
    keys = derive_keys("k", ["a", "b", "c"])
    out = M.build(name).anonymize(x, keys, face_masks=masks)
    y = out.images
    assert y.shape == x.shape and y.dtype == torch.float32
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    outside = (masks == 0).expand_as(x)
    assert torch.equal(y[outside], x[outside]), "pixels outside the face region changed"
    inside = (masks > 0).expand_as(x)
    assert (y[inside] - x[inside]).abs().mean() > 1e-3, "face region not modified"


@pytest.mark.parametrize("name", CLASSIC)
def test_deterministic_and_batch_independent(name):
    x, masks = _batch()
    keys = derive_keys("k", ["a", "b", "c"])
    m = M.build(name)
    a = m.anonymize(x, keys, face_masks=masks).images
    b = m.anonymize(x, keys, face_masks=masks).images
    assert torch.equal(a, b)
    single = m.anonymize(x[1:2], keys[1:2], face_masks=masks[1:2]).images
    assert torch.allclose(single[0], a[1], atol=1e-6)


def test_noise_depends_on_key():
    x, masks = _batch()
    m = M.build("noise_s0.2")
    a = m.anonymize(x, derive_keys("k1", ["a", "b", "c"]), face_masks=masks).images
    b = m.anonymize(x, derive_keys("k2", ["a", "b", "c"]), face_masks=masks).images
    assert not torch.equal(a, b)


def test_strength_orders_change():
    x, masks = _batch()
    keys = derive_keys("k", ["a", "b", "c"])
    d = [
        float((M.build(n).anonymize(x, keys, face_masks=masks).images - x).abs().mean())
        for n in ("blur_s1", "blur_s4", "blur_s16")
    ]
    assert d[0] < d[1] < d[2]
    p = [
        float((M.build(n).anonymize(x, keys, face_masks=masks).images - x).abs().mean())
        for n in ("pixelate_32", "pixelate_8")
    ]
    assert p[0] < p[1]


def test_identity_method_roundtrip():
    x, _ = _batch()
    keys = derive_keys("k", ["a", "b", "c"])
    m = M.build("identity")
    a = m.anonymize(x, keys)
    r = m.recover(a.images, keys)
    assert torch.equal(a.images, x) and torch.equal(r.images, x) and bool(r.ok.all())


def test_gaussian_blur_large_sigma_and_constant():
    c = torch.full((1, 3, 20, 20), 0.3)
    assert torch.allclose(gaussian_blur(c, 64.0), c, atol=1e-5)  # kernel larger than the image


@pytest.mark.parametrize("sigma", [1.0, 4.0, 16.0, 64.0])
def test_gaussian_blur_matches_scipy(datasets_root, sigma):
    """scipy.ndimage.gaussian_filter (mode "nearest" = edge replication, truncate 3) on a real face, also for
    a non-square crop and kernels wider than the image."""
    import scipy.ndimage as nd
    from PIL import Image

    f = sorted((datasets_root / "celebahq256" / "images").glob("*.jpg"))[0]
    x = torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1).double()[None] / 255
    x = x[..., 10:250, :]  # 240 x 256
    want = nd.gaussian_filter(x[0].numpy(), sigma=(0, sigma, sigma), mode="nearest", truncate=3.0)
    got = gaussian_blur(x.float(), sigma)[0].double().numpy()
    assert np.abs(want - x[0].numpy()).max() > 0.05  # the blur does something
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)


def test_mask_helpers():
    p = np.zeros((8, 8), np.uint8)
    p[2:4, 2:4] = 1  # skin
    p[0, :] = 13  # hair: outside the face region
    p[6, :] = 17  # neck
    m = parsing_to_face_mask(p)
    assert m.sum() == 4 and m[0].sum() == 0
    assert parsing_to_face_mask(np.array([[0, 1], [1, 0]], np.uint8)).sum() == 2
    b = box_mask(10, 10, np.array([2, 2, 4, 4]), margin=0.0)
    assert b.sum() == 16
    assert box_mask(10, 10, None).sum() == 100


def test_detector_region_on_a_real_face(datasets_root):
    """Without face_masks the YuNet box is used: only pixels inside the (enlarged) box change."""
    from g2face_eval.data.datasets import open_dataset
    from g2face_eval.imaging import to_tensor

    ds = open_dataset("celebahq256", root=datasets_root, split="test", limit=2)
    x = to_tensor([ds.load(i).image for i in ds.ids()])
    keys = derive_keys("k", ds.ids())
    out = M.build("pixelate_8").anonymize(x, keys)
    assert out.info["region"] == "yunet_box" and out.info["no_face"] == []
    changed = (out.images != x).any(1)[0]
    ys, xs = torch.nonzero(changed, as_tuple=True)
    assert 0 < changed.float().mean() < 0.8  # a box, not the whole image
    assert ys.min() > 0 or xs.min() > 0


def test_face_masks_must_be_b1hw():
    """A (B,H,W) mask used to broadcast against (B,3,H,W) images: channel c of every image got image c's mask."""
    x, masks = _batch()
    keys = derive_keys("k", ["a", "b", "c"])
    for name in ("blur_s4", "pixelate_8", "mask_black", "noise_s0.2", "identity"):
        m = M.build(name)
        m.anonymize(x, keys, face_masks=masks)  # (B,1,H,W): accepted
        for bad in (masks[:, 0], masks.expand(3, 3, 64, 64), masks[:2], masks[..., :32]):
            with pytest.raises(ValueError, match=r"\(B,1,H,W\)"):
                m.anonymize(x, keys, face_masks=bad)


def test_method_options_cannot_contradict_the_name():
    # the parameter a name encodes: refused when it would change it (the records would keep the old name)
    with pytest.raises(ValueError, match="use the method 'blur_s64'"):
        M.build("blur_s4", sigma=64)
    with pytest.raises(ValueError, match=r"register 'blur_s8'.*blur_s1, blur_s4, blur_s16, blur_s64"):
        M.build("blur_s4", sigma=8)
    with pytest.raises(ValueError, match="use the method 'mask_gray'"):
        M.build("mask_black", color=0.5)
    with pytest.raises(ValueError, match="use the method 'pixelate_16'"):
        M.build("pixelate_8", blocks=16)
    assert M.build("blur_s4", sigma=4).sigma == 4.0  # the value the name says: harmless
    # options the name does not encode are fine; unknown ones are refused with the accepted list
    m = M.build("noise_s0.2", box_margin=0.3)
    assert (m.name, m.sigma, m.box_margin) == ("noise_s0.2", 0.2, 0.3)
    with pytest.raises(ValueError, match="unknown option.*sigmaa.*accepted: box_margin"):
        M.build("blur_s4", sigmaa=3)
    with pytest.raises(ValueError, match=r"unknown option.*strength.*accepted: \(none\)"):
        M.build("identity", strength=2)
    assert M.build("identity").name == "identity"


def test_face_region_classes_are_the_harness_definition():
    """One definition of the face region's parsing classes: the harness's (no ears)."""
    from baselines import _region
    from g2face_eval.data import datasets

    assert _region.FACE_PARSING_CLASSES is datasets.FACE_REGION_CLASSES
    parsing = np.arange(19, dtype=np.uint8).reshape(1, 19)
    assert np.array_equal(parsing_to_face_mask(parsing), datasets.face_region_mask(parsing).astype(np.float32))
    assert parsing_to_face_mask(parsing)[0, list(datasets.EAR_CLASSES)].sum() == 0


# ------------------------------------------------------------------------------------------ review 2026-11-28
_KEYS = derive_keys("review", ["a", "b"])

def test_a_mask_value_of_one_half_is_face_for_every_method():
    """The interface says a mask value >= 0.5 is face, and the empty-mask rule uses it; the region code used
    > 0.5, so a mask of 0.5 passed as "has a face" and came back unchanged (found by a review)."""
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    half = torch.full((2, 1, 64, 64), 0.5)
    for name in ("blur_s16", "pixelate_8", "mask_black", "noise_s0.2"):
        out = M.build(name).anonymize(x, _KEYS, face_masks=half)
        changed = (out.images != x).flatten(1).float().mean(1)
        assert bool((changed > 0.5).all()), (name, changed)   # most pixels of every image are changed
        assert "empty_face_mask" not in out.info


def test_every_method_computes_in_float32_whatever_the_callers_float_dtype():
    """A float64 batch drew another noise stream (max difference 1.0 from the float32 output) and a bf16 one
    was blurred in bf16: each method now computes in float32 and returns the caller's dtype."""
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    fm = torch.ones(2, 1, 64, 64)
    for name in ("noise_s0.2", "blur_s4", "pixelate_8"):
        m = M.build(name)
        ref = m.anonymize(x, _KEYS, face_masks=fm).images
        out = m.anonymize(x.double(), _KEYS, face_masks=fm).images
        assert out.dtype == torch.float64 and torch.equal(out.float(), ref), name


@pytest.mark.parametrize(("factory", "message"), [
    (lambda: M.build("blur_s4", box_margin=float("nan")), "box_margin must be a finite number >= 0"),
    (lambda: M.build("pixelate_8", box_margin=-0.4), "box_margin must be a finite number >= 0"),
    (lambda: __import__("baselines.blur", fromlist=["x"]).GaussianBlur(float("inf")), "sigma must be a finite"),
    (lambda: __import__("baselines.pixelate", fromlist=["x"]).Pixelate(7.9), "blocks must be an integer >= 1"),
    (lambda: __import__("baselines.noise", fromlist=["x"]).AdditiveNoise(-0.1), "sigma must be a finite"),
])
def test_classic_options_are_checked_where_they_are_given(factory, message):
    """NaN / inf sigma crashed at the first batch, 7.9 blocks ran as 7 under the name pixelate_7.9, a negative
    margin silently shrank or inverted the region (found by a review)."""
    with pytest.raises(ValueError, match=message):
        factory()
