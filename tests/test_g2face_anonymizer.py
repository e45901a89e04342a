"""G2FaceAnonymizer end to end on a tiny config (CPU): shapes, determinism, recovery, fail-closed, bf16."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from g2face_eval.anonymizer import derive_keys
from g2face_eval.models.anonymizer import ConstantGeometry, G2FaceAnonymizer
from g2face_eval.models.g2face import G2Face, G2FaceConfig, keyed_noise
from g2face_eval.models.payload import KeyedPayload

CFG = G2FaceConfig.tiny(size=64)


class TinyIdentity(nn.Module):
    """Stand-in identity prior with CFG.id_dim outputs (tests only)."""

    name = "tiny"

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.fc = nn.Linear(8, dim)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3))) * 3


class OracleExtractor(nn.Module):
    """Replaces the (untrained) hiding extractor: returns confident logits of the last hidden bits."""

    def __init__(self, shape):
        super().__init__()
        self.shape = shape
        self.bits = None

    def forward(self, y):
        return (self.bits.view(y.shape[0], *self.shape) * 2 - 1) * 5


def _make(payload="keyed", **kw):
    torch.manual_seed(0)
    model = G2Face(CFG, with_discriminator=False)
    with torch.no_grad():
        for inj in model.anonymous_net.hiding_injects:
            inj.weight.normal_(0, 0.5)  # make the payload visible in the output
        for c in [model.anonymous_net.conv1, *model.anonymous_net.convs]:
            c.noise.weight.fill_(0.3)
    return G2FaceAnonymizer(model, identity=TinyIdentity(CFG.id_dim), geometry=ConstantGeometry(), payload=payload,
                            **kw)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: threading overhead dominates on a shared 2-core machine
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.rand(3, 3, 64, 64)


def test_anonymize_shapes_and_determinism(images):
    anon = _make()
    keys = derive_keys("run", ["a", "b", "c"])
    out = anon.anonymize(images, keys)
    assert out.images.shape == images.shape and out.images.min() >= 0 and out.images.max() <= 1
    assert out.bits.shape == (3, CFG.n_bits)
    again = anon.anonymize(images, keys)
    assert torch.equal(out.images, again.images)
    # batch independence: image 1 alone gives the same result
    solo = anon.anonymize(images[1:2], keys[1:2])
    torch.testing.assert_close(solo.images[0], out.images[1], rtol=1e-4, atol=1e-4)
    other = anon.anonymize(images, derive_keys("other-run", ["a", "b", "c"]))
    assert not torch.equal(other.images, out.images)


def test_recover_with_key_and_fail_closed(images):
    anon = _make()
    oracle = OracleExtractor(CFG.bits_shape)
    anon.model.hiding_extractor = oracle
    keys = derive_keys("run", ["a", "b", "c"])
    out = anon.anonymize(images, keys)
    oracle.bits = out.bits
    rec = anon.recover(out.images, keys)
    assert rec.ok.tolist() == [True, True, True]
    assert torch.equal(rec.bits, out.bits)
    # the recovered image is the generator driven by the decoded (quantised) original identity
    x, y = images * 2 - 1, out.images * 2 - 1
    ident = anon.identity(x)
    dec = anon.payload.decode(out.bits, keys, is_bits=True)
    assert float(torch.nn.functional.cosine_similarity(dec.embeddings, ident.detach()).min()) > 0.999
    from g2face_eval.models.anonymizer import REC_NOISE_STREAM, key_seeds
    with torch.no_grad():
        ref = anon.model.recover_tensor(y, dec.embeddings, torch.zeros(3, 257), out.bits.view(3, *CFG.bits_shape),
                                        keyed_noise(key_seeds(keys, "cpu"), anon.model.anonymous_net,
                                                    REC_NOISE_STREAM))
    torch.testing.assert_close(rec.images, ((ref + 1) / 2).clamp(0, 1), rtol=1e-4, atol=1e-4)
    # wrong keys: authentication fails, images returned unchanged (no identity exposed)
    bad = anon.recover(out.images, derive_keys("wrong", ["a", "b", "c"]))
    assert bad.ok.tolist() == [False, False, False]
    assert torch.equal(bad.images, out.images)
    # mixed batch: only the image with the right key is recovered
    mixed = anon.recover(out.images, [keys[0], b"nope", keys[2]])
    assert mixed.ok.tolist() == [True, False, True]
    assert torch.equal(mixed.images[1], out.images[1])


def test_untrained_extractor_fails_closed(images):
    anon = _make()
    keys = derive_keys("run", ["a", "b", "c"])
    out = anon.anonymize(images, keys)
    rec = anon.recover(out.images, keys)
    assert rec.ok.tolist() == [False] * 3 and torch.equal(rec.images, out.images)


def test_official_payload_mode(images):
    anon = _make(payload="official")
    oracle = OracleExtractor(CFG.bits_shape)
    anon.model.hiding_extractor = oracle
    keys = derive_keys("run", ["a", "b", "c"])
    out = anon.anonymize(images, keys)
    from g2face_eval.models.payload import float2bit
    ident = anon.identity(images * 2 - 1)
    assert torch.equal(out.bits, float2bit(ident).reshape(3, -1))  # raw floats, exactly as the official code
    oracle.bits = out.bits
    rec = anon.recover(out.images, [b"any"] * 3)  # no key needed: anyone with the extractor recovers
    assert rec.ok is None and rec.images.shape == images.shape


def test_random_noise_mode_is_stochastic(images):
    anon = _make(noise="random")
    keys = derive_keys("run", ["a", "b", "c"])
    assert not torch.equal(anon.anonymize(images, keys).images, anon.anonymize(images, keys).images)


def test_bf16_autocast_close_to_fp32(images):
    keys = derive_keys("run", ["a", "b", "c"])
    fp32 = _make().anonymize(images, keys)
    bf16 = _make(amp_dtype=torch.bfloat16).anonymize(images, keys)
    assert torch.equal(fp32.bits, bf16.bits)
    diff = (fp32.images - bf16.images).abs()
    assert float(diff.mean()) < 0.01 and float(diff.max()) < 0.1


def test_input_checks(images):
    anon = _make()
    with pytest.raises(ValueError):
        anon.anonymize(torch.rand(1, 3, 32, 32), [b"k"])
    with pytest.raises(ValueError):
        _make(payload=KeyedPayload(4096, 32))


class _Geo150:
    """Mimics models.geometry.GeometryPrior's interface: 150 coefficients + style_condition."""

    def coefficients(self, x):
        return torch.arange(150.0).expand(x.shape[0], 150).clone()

    @staticmethod
    def style_condition(c):
        return c[:, :147]


def test_geometry_prior_with_style_condition(images):
    anon = _make()
    anon.geometry = _Geo150()
    cond = anon._geometry(images * 2 - 1)
    assert cond.shape == (3, 147) and cond[0, -1] == 146
    anon.geometry = ConstantGeometry(n_coef=150)  # no style_condition and not D3DFR-ordered -> clear error
    with pytest.raises(ValueError):
        anon.anonymize(images, [b"a", b"b", b"c"])


def test_payload_options_enter_the_configuration_and_the_method_hash(images):
    """Outputs hidden under other keyed-payload options (nonce mode, context, bit permutation) differ, so those
    options are part of ``config()`` and hence of the method hash that names the output cache's namespace."""
    from g2face_eval.harness import config as C

    keys = derive_keys("m", ["a", "b", "c"])
    base = _make()
    other = _make(payload=KeyedPayload(CFG.n_bits, CFG.id_dim, permutation_seed=7))
    assert not torch.equal(base.anonymize(images, keys).images, other.anonymize(images, keys).images)
    cb, co = base.config(), other.config()
    assert cb["payload_permutation_seed"] == 20240827 and co["payload_permutation_seed"] == 7
    assert {k for k in cb if k != "payload_permutation_seed" and cb[k] != co[k]} == set()
    assert C.method_hash(cb) != C.method_hash(co)
    random_nonce = _make(payload=KeyedPayload(CFG.n_bits, CFG.id_dim, nonce="random")).config()
    assert random_nonce["payload_nonce"] == "random" and C.method_hash(random_nonce) != C.method_hash(cb)
    official = _make(payload="official").config()  # the tiny config carries id_dim * 32 bits
    assert official["payload"] == "official" and not any(k.startswith("payload_") for k in official)
