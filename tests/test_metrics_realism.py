import numpy as np
import pytest
import torch
from PIL import Image

from g2face_eval.metrics import realism as R
from g2face_eval.metrics.base import MetricUnavailable


def _faces(root, n):
    files = sorted((root / "celebahq256" / "images").glob("*.jpg"))[:n]
    arr = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0


def _blur(x, sigma):
    import torchvision.transforms.functional as TF

    return TF.gaussian_blur(x, kernel_size=2 * int(3 * sigma) + 1, sigma=sigma)


@pytest.fixture(scope="module")
def effnet():
    return R.get_extractor("effnet_lite0")


# ---- statistics -------------------------------------------------------------------------------------------
def test_streaming_stats_match_numpy_and_merge():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(301, 7))
    parts = [x[:1], x[1:100], x[100:250], x[250:]]
    s = R.FrechetStats(7)
    for p in parts[:2]:
        s.update(p)
    other = R.FrechetStats(7).update(parts[2]).update(parts[3])
    # as if gathered from two processes: state dicts round-trip and merge
    m = R.FrechetStats.merged([s.state(), other.state()])
    for st in (m, R.FrechetStats(7).update(x)):
        assert st.n == 301
        np.testing.assert_allclose(st.mean, x.mean(0), rtol=0, atol=1e-12)
        np.testing.assert_allclose(st.cov, np.cov(x, rowvar=False), rtol=0, atol=1e-12)
    with pytest.raises(ValueError):
        R.FrechetStats(7).update(np.full((2, 7), np.nan))


@pytest.mark.parametrize("n", [30, 200])  # rank-deficient (n < d) and full-rank covariances
def test_frechet_distance_matches_torch_fidelity(n):
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    rng = np.random.default_rng(n)
    d = 48
    f1 = rng.normal(size=(n, d)).astype(np.float32)
    f2 = (0.8 * rng.normal(size=(n, d)) + 0.3 + 0.2 * f1).astype(np.float32)
    ref = fid_statistics_to_metric(
        fid_features_to_statistics(torch.from_numpy(f1).double()),
        fid_features_to_statistics(torch.from_numpy(f2).double()),
        False,
    )
    ref = ref["frechet_inception_distance"]
    a, b = R.FrechetStats(d).update(f1), R.FrechetStats(d).update(f2)
    assert R.frechet_distance_stats(a, b) == pytest.approx(ref, rel=1e-6)
    assert R.frechet_distance_features(f1, f2) == pytest.approx(ref, rel=1e-6)
    assert abs(R.frechet_distance_features(f1, f1)) < 1e-6
    assert abs(R.frechet_distance_stats(a, a)) < 1e-6


def test_kid_matches_torch_fidelity():
    from torch_fidelity.metric_kid import kid_features_to_metric

    rng = np.random.default_rng(1)
    f1 = rng.normal(size=(60, 32)).astype(np.float32)
    f2 = (rng.normal(size=(50, 32)) + 0.2).astype(np.float32)
    ref = kid_features_to_metric(
        torch.from_numpy(f1).double(),
        torch.from_numpy(f2).double(),
        kid_subsets=20,
        kid_subset_size=40,
        verbose=False,
    )
    mean, std = R.kid(f1, f2, subsets=20, subset_size=40)
    assert mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-9)
    assert std == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-9)
    assert R.kid_details(f1, f2, subsets=2, subset_size=1000)["subset_size"] == 50


def test_kid_whole_gram_path_equals_per_subset_path(monkeypatch):
    """Moderate sets index whole kernel matrices, large ones build each subset's: the same numbers, and both equal
    torch-fidelity's (subsets drawn by the same RandomState sequence)."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    rng = np.random.default_rng(2)
    f1 = rng.normal(size=(90, 16)).astype(np.float32)
    f2 = (rng.normal(size=(80, 16)) * 1.1).astype(np.float32)
    whole = R.kid_details(f1, f2, subsets=15, subset_size=60)
    monkeypatch.setattr(R, "KID_WHOLE_GRAM_MAX", 0)
    direct = R.kid_details(f1, f2, subsets=15, subset_size=60)
    assert whole["mean"] == pytest.approx(direct["mean"], rel=1e-12)
    assert whole["std"] == pytest.approx(direct["std"], rel=1e-12)
    ref = kid_features_to_metric(
        torch.from_numpy(f1).double(), torch.from_numpy(f2).double(), kid_subsets=15, kid_subset_size=60, verbose=False
    )
    assert whole["mean"] == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-9)
    assert whole["std"] == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-9)


# ---- EfficientNet-lite0 -----------------------------------------------------------------------------------
def test_effnet_normalisation_matches_bn_stats(datasets_root):
    """The stem BatchNorm running statistics tell which input scaling the weights were trained with."""
    import torch.nn.functional as F

    net = R.load_effnet_lite0()  # strict state-dict load of the package weights
    x = F.interpolate(_faces(datasets_root, 8), size=(224, 224), mode="bilinear", antialias=True)

    def var_ratio(mean, std):
        h = net._conv_stem((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
        return float((h.var((0, 2, 3)) / net._bn0.running_var).median())

    from g2face_eval import zoo

    spec = zoo.WEIGHTS.get("effnet_lite0").input  # what the extractor applies (InputSpec.normalize)
    with torch.no_grad():
        lite, imnet = (
            var_ratio(spec.mean, spec.std),
            var_ratio(R.IMAGENET_MEAN, R.IMAGENET_STD),
        )
    assert abs(np.log(lite)) < 0.7 < abs(np.log(imnet))


def test_effnet_folded_batchnorms_same_features(datasets_root, effnet):
    """The extractor runs the network with its batch norms folded into the convolutions: same features as the
    plain network (eval-mode batch norms) on real faces, up to float round-off."""
    import torch.nn.functional as F

    x = _faces(datasets_root, 8)
    plain = R.load_effnet_lite0()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in effnet.module.net.modules())
    with torch.no_grad():
        z = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
        z = effnet.module.input_spec.normalize(z, 1.0)
        want = plain.features(z)
        got = effnet.module.net.features(z.contiguous(memory_format=torch.channels_last))
    assert want.abs().max() > 0.5
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_extractor_cpu_microbatches_and_frozen_graph_same_features(datasets_root, effnet, monkeypatch):
    """On CPU the extractor feeds its network a few images at a time (cache-sized activations) through a frozen
    TorchScript graph of the trunk: the features of a batch are those of the batch run whole, of each image run
    alone, and of the eager network."""
    x = _faces(datasets_root, 10)
    got = effnet(x)  # micro-batches of CPU_MICROBATCH, the last one short
    assert effnet.CPU_MICROBATCH < len(x)
    assert isinstance(effnet.module._trunk.frozen, torch.jit.ScriptModule)
    monkeypatch.setattr(R.FeatureExtractor, "CPU_MICROBATCH", len(x))
    whole = effnet(x)
    single = np.concatenate([effnet(x[i : i + 1]) for i in range(len(x))])
    monkeypatch.setattr(effnet.module._trunk, "frozen", None)  # no graph and none to build: the eager trunk
    monkeypatch.setattr(effnet.module._trunk, "_failed", True)
    eager = effnet(x)
    assert got.shape == (10, 1280) and np.abs(got).max() > 0.5
    for other in (whole, single, eager):
        np.testing.assert_allclose(got, other, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_fd_effnet_grows_with_blur_and_matches_torch_fidelity_kid(datasets_root, effnet):
    import torch_fidelity

    x = _faces(datasets_root, 8)
    f0 = effnet(x)
    assert f0.shape == (8, 1280) and np.isfinite(f0).all()
    fds = [
        R.realism_metrics("effnet_lite0", f0, effnet(_blur(x, s)), kid_subset_size=8, kid_subsets=3)
        for s in (1.0, 3.0)
    ]
    self_fd = R.frechet_distance_features(f0, f0)
    assert abs(self_fd) < 1e-6 * fds[0]["fd_effnet_lite0"]
    assert 0 < fds[0]["fd_effnet_lite0"] < fds[1]["fd_effnet_lite0"]
    assert fds[0]["kid_effnet_lite0"] < fds[1]["kid_effnet_lite0"]
    assert set(fds[0]) == {"fd_effnet_lite0", "kid_effnet_lite0"}

    # torch-fidelity's own pipeline, through the registered custom extractor, on uint8 datasets
    class DS(torch.utils.data.Dataset):
        def __init__(self, t):
            self.t = R.quantize(t)

        def __len__(self):
            return len(self.t)

        def __getitem__(self, i):
            return self.t[i]

    xb = _blur(x[:6], 1.0)
    ref = torch_fidelity.calculate_metrics(
        input1=DS(x[:6]),
        input2=DS(xb),
        cuda=False,
        kid=True,
        feature_extractor=R.TF_EFFNET_NAME,
        kid_subsets=4,
        kid_subset_size=5,
        cache=False,
        verbose=False,
        batch_size=6,
        save_cpu_ram=True,
    )
    mine, _ = R.kid(f0[:6], effnet(xb), subsets=4, subset_size=5)
    assert mine == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-4, abs=1e-7)


# ---- Inception (FID) path ---------------------------------------------------------------------------------
def _fabricated_inception(path):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    empty = path.parent / "empty.pth"
    torch.save({}, empty)
    orig = FeatureExtractorInceptionV3.load_state_dict
    FeatureExtractorInceptionV3.load_state_dict = lambda self, sd, strict=True: None  # keys only, random init
    try:
        m = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty)
        )
    finally:
        FeatureExtractorInceptionV3.load_state_dict = orig
    torch.save(m.state_dict(), path)


def test_fabricated_inception_weights_load_through_fid_path(tmp_path, monkeypatch):
    f = tmp_path / "fake-inception.pth"
    _fabricated_inception(f)
    ext = R.get_extractor("inception_fid", weights_path=str(f))
    assert ext.dim == 2048 and ext.spec.fd_metric == "fid" and ext.spec.kid_metric == "kid"
    feats = ext(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert feats.shape == (1, 2048) and np.isfinite(feats).all()
    # through the zoo: missing file -> unavailable; right name, wrong digest -> unavailable (never a fake FID)
    monkeypatch.setenv("G2FACE_WEIGHTS_DIR", str(tmp_path / "w"))
    with pytest.raises(MetricUnavailable):
        R.get_extractor("inception_fid")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "weights-inception-2015-12-05-6726825d.pth").write_bytes(f.read_bytes())
    with pytest.raises(MetricUnavailable):
        R.get_extractor("inception_fid")


# ---- content hashing and cache ----------------------------------------------------------------------------
class _Stub(torch.nn.Module):
    def forward(self, x):
        return (x.float().mean((2, 3)),)


def test_reference_cache_atomic_and_keyed(tmp_path, monkeypatch):
    monkeypatch.setenv("G2FACE_CACHE_DIR", str(tmp_path))
    spec = R.ExtractorSpec("stub", "v1", 3, "none", "fd_stub", "kid_stub", "stub", "3")
    ext = R.FeatureExtractor(spec, _Stub(), torch.device("cpu"), "ab" * 32)
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ids = [f"img{i}" for i in range(5)]
    key = R.content_key(ids, x)
    assert key == R.content_key(ids, R.quantize(x).numpy())  # float batch hashes as its uint8 quantisation
    assert key == R.ContentHasher().update(ids[:2], x[:2]).update(ids[2:], x[2:]).hexdigest()
    assert key != R.content_key(ids[::-1], x)
    y = x.clone()
    y[0, 0, 0, 0] = 1.0 - y[0, 0, 0, 0]
    assert key != R.content_key(ids, y)
    assert R.tensor_key(x) != R.tensor_key(y)

    calls = []

    def batches():
        calls.append(1)
        return [x[:3], x[3:]]

    f1 = R.reference_features(ext, key, batches)
    f2 = R.reference_features(ext, key, batches)
    assert len(calls) == 1 and np.array_equal(f1, f2) and f1.shape == (5, 3)
    files = list((tmp_path / "realism").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz" and "stub" in files[0].name
    with np.load(files[0]) as z:
        assert set(z.files) == {"features"} and z["features"].dtype == np.float32
        assert np.array_equal(z["features"], np.asarray(f1, np.float32))
    R.reference_features(ext, R.content_key(ids, y), lambda: [y])
    assert len(list((tmp_path / "realism").glob("*.npz"))) == 2
    assert not list((tmp_path / "realism").glob("*.tmp"))


def test_streamed_realism_equals_batch_formula_and_is_order_independent():
    """Fréchet statistics accumulated batch by batch give the batch-formula FD; the KID sample is bounded and
    the same set whatever the order in which the images arrive."""
    rng = np.random.default_rng(7)
    d = 16
    real, fake = rng.normal(size=(300, d)), rng.normal(size=(300, d)) * 1.2 + 0.1
    ids = [f"img{i:04d}" for i in range(300)]
    acc_r, acc_f = R.RealismAccumulator(d, kid_max=120), R.RealismAccumulator(d, kid_max=120)
    for s in range(0, 300, 32):
        acc_r.add(ids[s : s + 32], real[s : s + 32])
        acc_f.add(ids[s : s + 32], fake[s : s + 32])
    assert acc_r.n == 300 and len(acc_r.sample) == 120
    fd = R.realism_metrics_streamed("effnet_lite0", acc_r, acc_f, kid_subsets=5, kid_subset_size=50)
    assert fd["fd_effnet_lite0"] == pytest.approx(R.frechet_distance_features(real, fake), rel=1e-9)
    perm = rng.permutation(300)
    shuffled = R.FeatureSample(120)
    for s in range(0, 300, 50):
        idx = perm[s : s + 50]
        shuffled.add([ids[i] for i in idx], fake[idx])
    np.testing.assert_array_equal(shuffled.features(), acc_f.sample.features())


# ---- id-aware KID (anonymized versions of the same faces) -------------------------------------------------
def _poly(a, b):
    return (float(np.dot(a, b)) / len(a) + 1.0) ** 3


def _kid_brute_force(x, y, ids_x, ids_y, subsets, m, seed=2020):
    """Double loops: off-diagonal means within each set, cross mean over the pairs of different ids; the subsets
    drawn as torch-fidelity does (x then y, one RandomState)."""
    rng = np.random.RandomState(seed)
    vals = []
    for _ in range(subsets):
        sa, sb = rng.choice(len(x), m, replace=False), rng.choice(len(y), m, replace=False)
        xx = sum(_poly(x[i], x[j]) for i in sa for j in sa if i != j) / (m * (m - 1))
        yy = sum(_poly(y[i], y[j]) for i in sb for j in sb if i != j) / (m * (m - 1))
        xy = [_poly(x[i], y[j]) for i in sa for j in sb if ids_x[i] != ids_y[j]]
        vals.append(xx + yy - 2 * sum(xy) / len(xy))
    return float(np.mean(vals)), float(np.std(vals))


def _paired_same_distribution(rng, n, d, noise=0.3):
    """x ~ N(0, I), y = a x + sqrt(1 - a^2) e (x plus small noise, rescaled): y has x's distribution (true
    MMD^2 = 0) but y_i stays close to x_i."""
    x = rng.normal(size=(n, d))
    a = 1.0 / np.sqrt(1.0 + noise**2)
    return x, a * x + np.sqrt(1.0 - a * a) * rng.normal(size=(n, d))


@pytest.mark.parametrize("m", [7, 12])  # subsets of the sets, and the smaller set whole
def test_id_aware_kid_equals_brute_force(m, monkeypatch):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(14, 5))
    y = 0.7 * x[:12] + rng.normal(size=(12, 5)) * 0.5 + 0.2
    ids_x = [f"f{i}" for i in range(14)]
    ids_y = [f"f{i}" for i in range(9)] + ["g0", "g1", "f3"]  # shared, unshared and a repeated id
    want = _kid_brute_force(x, y, ids_x, ids_y, subsets=6, m=m)
    got = R.kid_details(x, y, real_ids=ids_x, fake_ids=ids_y, subsets=6, subset_size=m)
    assert got["subset_size"] == m
    assert got["mean"] == pytest.approx(want[0], rel=1e-10, abs=1e-12)
    assert got["std"] == pytest.approx(want[1], rel=1e-10, abs=1e-12)
    assert R.kid(x, y, subsets=6, subset_size=m)[0] != pytest.approx(want[0], rel=1e-3)  # the exclusion matters
    monkeypatch.setattr(R, "KID_WHOLE_GRAM_MAX", 0)  # per-subset kernel matrices: same numbers
    got = R.kid(x, y, real_ids=ids_x, fake_ids=ids_y, subsets=6, subset_size=m)[0]
    assert got == pytest.approx(want[0], rel=1e-10, abs=1e-12)
    with pytest.raises(ValueError):
        R.kid(x, y, real_ids=ids_x[:-1], fake_ids=ids_y)


def test_id_aware_kid_zero_for_identical_sets_where_torch_fidelity_is_negative(monkeypatch):
    x = np.random.default_rng(4).normal(size=(40, 16))
    ids = [f"f{i}" for i in range(40)]
    for whole in (True, False):
        if not whole:
            monkeypatch.setattr(R, "KID_WHOLE_GRAM_MAX", 0)
        assert abs(R.kid(x, x.copy(), real_ids=ids, fake_ids=list(ids), subsets=10, subset_size=40)[0]) <= 1e-12
        assert R.kid(x, x.copy(), subsets=10, subset_size=40)[0] < -0.1  # the bias of torch-fidelity's estimator


def test_id_aware_kid_unbiased_on_paired_sets_torch_fidelity_biased_downward():
    """Sets of one distribution (true KID 0), fake row i sharing real row i's id, over seeds, with subsets (of 30
    from 50) drawn independently for the two sets: fake_i an independent draw (both estimators ~0), and fake_i
    = real_i + small noise (rescaled): the id-aware mean still ~0, torch-fidelity's clearly negative."""
    ids = [f"f{i}" for i in range(50)]
    kw = dict(subsets=10, subset_size=30)
    for correlated in (False, True):
        aware, plain = [], []
        for s in range(40):
            rng = np.random.default_rng(100 + s)
            x, y = _paired_same_distribution(rng, 50, 16) if correlated else rng.normal(size=(2, 50, 16))
            aware.append(R.kid(x, y, real_ids=ids, fake_ids=ids, **kw)[0])
            plain.append(R.kid(x, y, **kw)[0])
        aware, plain = np.array(aware), np.array(plain)
        se = aware.std() / np.sqrt(len(aware))
        assert abs(aware.mean()) < 4 * se < 0.05
        if correlated:
            assert plain.mean() < -0.1 and plain.max() < 0
        else:
            assert abs(plain.mean()) < 4 * plain.std() / np.sqrt(len(plain))


def test_id_aware_kid_without_shared_ids_is_torch_fidelity_exactly(monkeypatch):
    from torch_fidelity.metric_kid import kid_features_to_metric, mmd2

    rng = np.random.default_rng(5)
    f1 = rng.normal(size=(60, 32)).astype(np.float32)
    f2 = (rng.normal(size=(50, 32)) + 0.2).astype(np.float32)
    kw = dict(subsets=20, subset_size=40)
    ids1, ids2 = [f"a{i}" for i in range(60)], [f"b{i}" for i in range(50)]
    for whole in (True, False):
        if not whole:
            monkeypatch.setattr(R, "KID_WHOLE_GRAM_MAX", 0)
        plain = R.kid_details(f1, f2, **kw)
        assert R.kid_details(f1, f2, real_ids=ids1, fake_ids=ids2, **kw) == plain  # bit for bit
    ref = kid_features_to_metric(
        torch.from_numpy(f1).double(), torch.from_numpy(f2).double(), kid_subsets=20, kid_subset_size=40, verbose=False
    )
    assert plain["mean"] == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-9)
    a, b = f1[:40].astype(np.float64), f2[:40].astype(np.float64)
    kxx, kxy, kyy = ((u @ v.T / 32 + 1) ** 3 for u, v in ((a, a), (a, b), (b, b)))
    assert R._mmd2_unbiased(kxx, kxy, kyy, np.zeros(kxy.shape, bool)) == R._mmd2_unbiased(kxx, kxy, kyy)
    assert R._mmd2_unbiased(kxx, kxy, kyy) == pytest.approx(mmd2(kxx, kxy, kyy), rel=1e-12)


def _hash_order(ids):
    import hashlib

    return sorted(ids, key=lambda i: hashlib.sha256(f"kid\0{i}".encode()).digest())


def test_streamed_kid_keeps_failed_images_originals():
    """The harness's case: the fake accumulator holds the anonymized versions of the real ids, fed in another
    order, one of which failed (absent). KID leaves out the same-id pairs but keeps every original, the failed
    image's included: the direct id-aware ``kid`` on all the real rows, and moving that original changes it."""
    rng = np.random.default_rng(8)
    n, d = 60, 16
    ids = [f"img{i:04d}" for i in range(n)]
    real, fake = _paired_same_distribution(rng, n, d)
    moved = real.copy()
    moved[7] += 1.0  # the failed image's original
    missing = ids[7]
    acc_r, acc_moved, acc_f = R.RealismAccumulator(d), R.RealismAccumulator(d), R.RealismAccumulator(d)
    for s in range(0, n, 16):
        acc_r.add(ids[s : s + 16], real[s : s + 16])
        acc_moved.add(ids[s : s + 16], moved[s : s + 16])
    order = [i for i in rng.permutation(n) if ids[i] != missing]
    for s in range(0, len(order), 25):
        idx = order[s : s + 25]
        acc_f.add([ids[i] for i in idx], fake[idx])
    assert len(acc_r.sample) == n and len(acc_f.sample) == n - 1

    row = {i: r for r, i in enumerate(ids)}
    ids_r = _hash_order(ids)  # the samples' row order
    ids_f = [i for i in ids_r if i != missing]
    xr, xf = real[[row[i] for i in ids_r]].astype(np.float32), fake[[row[i] for i in ids_f]].astype(np.float32)
    kw = dict(subsets=5, subset_size=40)
    got = R.realism_metrics_streamed("effnet_lite0", acc_r, acc_f, kid_subsets=5, kid_subset_size=40)
    assert got["kid_effnet_lite0"] == R.kid(xr, xf, real_ids=ids_r, fake_ids=ids_f, **kw)[0]
    other = R.realism_metrics_streamed("effnet_lite0", acc_moved, acc_f, kid_subsets=5, kid_subset_size=40)
    assert abs(other["kid_effnet_lite0"] - got["kid_effnet_lite0"]) > 1e-3
    assert R.kid(xr, xf, **kw)[0] < got["kid_effnet_lite0"] - 0.1  # torch-fidelity's estimator: biased downward


def test_realism_metrics_passes_ids():
    rng = np.random.default_rng(10)
    real, fake = _paired_same_distribution(rng, 50, 16)
    ids = [f"f{i}" for i in range(50)]
    perm = rng.permutation(50)[:45]  # shuffled, five failed
    ids_f = [ids[i] for i in perm]
    kw = dict(kid_subsets=5, kid_subset_size=30)
    got = R.realism_metrics("effnet_lite0", real, fake[perm], real_ids=ids, fake_ids=ids_f, **kw)
    want = R.kid(real, fake[perm], real_ids=ids, fake_ids=ids_f, subsets=5, subset_size=30)[0]
    assert got["kid_effnet_lite0"] == want
    assert got["fd_effnet_lite0"] == R.frechet_distance_features(real, fake[perm])
    no_ids = R.realism_metrics("effnet_lite0", real, fake[perm], **kw)  # no ids: torch-fidelity's estimator
    assert no_ids["kid_effnet_lite0"] == R.kid(real, fake[perm], subsets=5, subset_size=30)[0]
    assert no_ids["kid_effnet_lite0"] < -0.1 < got["kid_effnet_lite0"]


# ---- buffered Fréchet statistics and the memoised covariance square root ------------------------------------
def _one_shot(x):
    return x.shape[0], x.mean(0), np.cov(x, rowvar=False)


def _assert_stats(st, x):
    n, mean, cov = _one_shot(x)
    assert st.n == n
    np.testing.assert_allclose(st.mean, mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(st.cov, cov, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fold_rows", [None, 40])  # everything pending until read / folded mid-stream as well
def test_buffered_stats_equal_one_shot(fold_rows, monkeypatch):
    """Many small batches (float32 and float64, in reused buffers) are buffered and folded in blocks: the same
    mean, covariance and count as one-shot statistics, through ``state`` round trips and merges with pending
    rows on the receiving side, the argument side or both."""
    import copy
    import pickle

    if fold_rows is not None:
        monkeypatch.setattr(R.FrechetStats, "FOLD_ROWS", fold_rows)
    rng = np.random.default_rng(11)
    d = 9
    x = rng.normal(2.0, 3.0, size=(397, d))
    x[::2] = x[::2].astype(np.float32)  # rows given as float32 are exact in float64 too
    cuts = np.cumsum(rng.integers(1, 17, size=200))
    parts = np.split(x, cuts[cuts < len(x)])
    s = R.FrechetStats(d)
    buf = np.empty((16, d), np.float64)
    seen = 0
    for i, p in enumerate(parts):
        if i % 2:  # reused caller buffer: the pending rows must be copies
            buf[: len(p)] = p
            s.update(buf[: len(p)])
            buf[:] = np.nan
        else:
            s.update(p.astype(np.float32) if i % 4 == 0 and np.array_equal(p.astype(np.float32), p) else p)
        seen += len(p)
        assert s.n == seen  # pending rows counted
        if i == 3:
            assert s._pending  # buffered, not folded per batch
            _assert_stats(s, x[:seen])  # a read folds; later batches keep streaming
    _assert_stats(s, x)
    _assert_stats(R.FrechetStats.from_state(s.state()), x)
    for clone in (copy.deepcopy(s), pickle.loads(pickle.dumps(s))):
        _assert_stats(clone.update(x[:5]), np.concatenate([x, x[:5]]))
    _assert_stats(s, x)

    def fresh(rows):  # stats with pending rows (unless fold_rows is small)
        st = R.FrechetStats(d)
        for i in range(0, len(rows), 7):
            st.update(rows[i : i + 7])
        return st

    a, b = x[:150], x[150:]
    for recv_pending, arg_pending in [(True, True), (True, False), (False, True), (False, False)]:
        sa, sb = fresh(a), fresh(b)
        if not recv_pending:
            sa.mean  # noqa: B018  (folds)
        if not arg_pending:
            sb.state()
        if fold_rows is None:
            assert bool(sa._pending) == recv_pending and bool(sb._pending) == arg_pending
        sa.merge(sb)
        _assert_stats(sa, x)
        _assert_stats(sb, b)  # the argument is unchanged
    st = R.FrechetStats.merged([fresh(a).state(), fresh(b).state()])
    _assert_stats(st, x)
    _assert_stats(fresh(a).update(b), x)  # a batch that reaches the fold size alone
    with pytest.raises(ValueError):  # validated when given, not when folded
        fresh(a).update(np.full((2, d), np.inf))
    with pytest.raises(ValueError):
        fresh(a).update(np.zeros((2, d + 1)))


@pytest.mark.parametrize("n", [30, 200])  # rank-deficient and full-rank covariances
def test_memoised_cov_sqrt_fd_equals_uncached(n, monkeypatch):
    """``frechet_distance_stats(a, b)`` uses ``a``'s memoised covariance square root: the value of the plain
    array formula, one eigendecomposition for many distances against ``a``, recomputed after ``a`` changes
    (update or merge); safe with ``a`` shared by threads."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(n)
    d = 48
    ref_x = rng.normal(size=(n, d))
    sets = [0.8 * rng.normal(size=(n, d)) + 0.1 * k + 0.2 * ref_x for k in range(5)]

    def stats(x, step=16):
        st = R.FrechetStats(d)
        for i in range(0, len(x), step):
            st.update(x[i : i + step])
        return st

    calls, slow = [], []
    root = R._psd_sqrt

    def counted_root(s):
        calls.append(1)
        if slow:  # a wide window for threads racing to compute the same root
            time.sleep(0.05)
        return root(s)

    monkeypatch.setattr(R, "_psd_sqrt", counted_root)

    def check(a, bs):
        for b in bs:
            want = R.frechet_distance(a.mean, a.cov, b.mean, b.cov)
            assert R.frechet_distance_stats(a, b) == pytest.approx(want, rel=1e-12, abs=1e-12)

    a, bs = stats(ref_x), [stats(x) for x in sets]
    calls.clear()
    got = [R.frechet_distance_stats(a, b) for b in bs]
    assert len(calls) == 1  # one eigendecomposition of a's covariance for all of them
    sq = a.cov_sqrt()
    assert a.cov_sqrt() is sq and len(calls) == 1
    np.testing.assert_allclose(sq @ sq, a.cov, rtol=0, atol=1e-10 * np.abs(a.cov).max())
    calls.clear()
    check(a, bs)  # the uncached formula computes its own roots; the stats one is already there
    assert len(calls) == len(bs)

    a.update(rng.normal(size=(3, d)) + 1.0)  # invalidates the root
    check(a, bs)
    assert R.frechet_distance_stats(a, bs[0]) != pytest.approx(got[0], rel=1e-6)
    a.merge(bs[1])  # so does a merge
    check(a, bs)
    a2 = R.FrechetStats.from_state(a.state())
    assert R.frechet_distance_stats(a2, bs[2]) == R.frechet_distance_stats(a, bs[2])

    # one shared reference (rows pending, root not computed) read by several threads at once
    seq = stats(ref_x, 7)
    want = [R.frechet_distance_stats(seq, stats(x)) for x in sets * 3]
    shared, fresh_bs = stats(ref_x, 7), [stats(x) for x in sets * 3]
    assert shared._pending
    calls.clear()
    slow.append(1)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda b: R.frechet_distance_stats(shared, b), fresh_bs))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert len(calls) == 1
