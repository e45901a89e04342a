"""Deep3DFaceRecon + BFM geometry prior on fabricated user files (a 10x10-grid BFM, a random-weight epoch_20.pth),
registered through the zoo; hand-computed camera, rotation and SH checks."""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pytest
import torch
from scipy.io import savemat

from g2face_eval import zoo
from g2face_eval.models import d3dfr as d
from g2face_eval.models import geometry as g

torch.set_num_threads(1)
GRID = 10
N = GRID * GRID


def _grid_mesh():
    """Vertices on a 10x10 grid in the xy plane (z bump), CCW triangles seen from +z, point_buf padded with F+1."""
    xs = np.linspace(-0.9, 0.9, GRID)
    xx, yy = np.meshgrid(xs, xs)  # row index = y
    zz = 0.3 * np.exp(-(xx ** 2 + yy ** 2))
    pts = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], 1)
    pts -= pts.mean(0)  # zero-mean: the model's recentring gives these exact coordinates back
    tri = []
    for r in range(GRID - 1):
        for c in range(GRID - 1):
            a, b, e, f = r * GRID + c, r * GRID + c + 1, (r + 1) * GRID + c, (r + 1) * GRID + c + 1
            tri += [(a, b, f), (a, f, e)]  # CCW in (x right, y up)
    tri = np.array(tri)
    adj = [[] for _ in range(N)]
    for i, t in enumerate(tri):
        for v in t:
            adj[v].append(i + 1)
    k = max(map(len, adj))
    point_buf = np.array([a + [len(tri) + 1] * (k - len(a)) for a in adj])
    return pts, tri + 1, point_buf


def _bfm_arrays(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    pts, tri, point_buf = _grid_mesh()
    offset = np.array([0.5, -2.0, 1.0])  # removed by the recentring
    return {
        "meanshape": (pts + offset).reshape(1, -1),
        "idBase": 0.01 * rng.standard_normal((3 * N, 80)),
        "exBase": 0.01 * rng.standard_normal((3 * N, 64)),
        "meantex": rng.uniform(0, 255, (1, 3 * N)),
        "texBase": rng.standard_normal((3 * N, 80)),
        "tri": tri.astype(np.float64),  # MATLAB stores indices as doubles
        "point_buf": point_buf.astype(np.float64),
        "keypoints": rng.choice(N, 68, replace=False)[None].astype(np.float64) + 1,
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("d3dfr_weights")
    arrays = _bfm_arrays()
    savemat(root / "BFM_model_front.mat", arrays)
    torch.manual_seed(0)
    net = d.ReconNet()
    with torch.no_grad():
        for layer in net.final_layers:
            layer.weight.normal_(0, 0.02)
            layer.bias.normal_(0, 0.1)
    torch.save({"net_recon": net.state_dict(), "epoch": 20}, root / "epoch_20.pth")
    return root, arrays, net.state_dict()


@pytest.fixture
def registered(files, tmp_path, monkeypatch):
    """Both fabricated files recorded in the zoo with their own digests (the real files' are not on record)."""
    root = files[0]
    monkeypatch.setenv("G2FACE_WEIGHTS_DIR", str(root))
    monkeypatch.setenv("G2FACE_CACHE_DIR", str(tmp_path / "cache"))
    zoo._digests.clear()
    for name in ("d3dfr_epoch20", "bfm_front"):
        spec = zoo.WEIGHTS.get(name)
        new = dataclasses.replace(spec, sha256=zoo.sha256_file(root / spec.filename), sha256_prefix=None)
        monkeypatch.setitem(zoo.WEIGHTS._items, name, new)
    return root


@pytest.fixture(scope="module")
def prior(files):
    root = files[0]
    return d.D3DFRPrior.from_files(root / "epoch_20.pth", root / "BFM_model_front.mat")


def _coeffs(b: int = 2, **parts) -> torch.Tensor:
    c = torch.zeros(b, 257)
    for name, v in parts.items():
        c[:, getattr(d, name.upper())] = torch.as_tensor(v, dtype=torch.float32)
    return c


# ------------------------------------------------------------------------------------------------ layout
def test_state_dict_matches_manifest():
    from g2face_eval.models import official

    try:
        ref = official.manifest()
    except FileNotFoundError:
        if os.environ.get("CI"):
            pytest.fail("CI requires the shared reference manifest")
        pytest.skip("shared reference manifest not present")
    with torch.device("meta"):
        net = d.ReconNet()
    sd = net.state_dict()
    assert official.check_against_manifest("d3dfr_net_recon", sd, ref) == []
    assert list(sd) == list(ref["modules"]["d3dfr_net_recon"])  # same order too
    info = ref["module_info"]["d3dfr_net_recon"]
    assert len(sd) == info["num_entries"] and sum(p.numel() for p in net.parameters()) == info["num_params"]
    assert all(sd[k].dtype == torch.int64 for k in info["int64_entries"])
    assert d.HEADS == (80, 64, 80, 3, 27, 2, 1) and d.N_COEF == 257 and ref["hyperparameters"]["latent_dim"] == 659


def test_load_through_zoo_and_coefficients(registered, files):
    _, _, saved = files
    prior = g.load_geometry_prior("d3dfr")
    assert isinstance(prior, d.D3DFRPrior) and not prior.training and prior.backend == "d3dfr"
    for k, v in prior.net_recon.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert set(prior.state_dict()) == {f"net_recon.{k}" for k in saved}  # BFM buffers are not persisted
    torch.manual_seed(1)
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        c = prior.coefficients(x)
        assert c.shape == (2, 257) and torch.isfinite(c).all() and c.abs().sum() > 0
        assert torch.allclose(c, prior.net_recon((x + 1) / 2))  # the net sees [0,1]
    # the official style condition and the official G2Face config
    from g2face_eval.models.g2face import GEO_DIM, G2FaceConfig, geometry_condition

    cond = prior.style_condition(c)
    assert cond.shape == (2, GEO_DIM) == (2, prior.n_cond)
    assert torch.equal(cond, torch.cat([c[:, :144], c[:, 224:227]], 1)) and torch.equal(geometry_condition(c), cond)
    assert G2FaceConfig().latent_dim == 659 == G2FaceConfig().id_dim + prior.n_cond


def test_missing_files_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("G2FACE_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(zoo.WeightMissingError) as e:
        g.load_geometry_prior("d3dfr")
    assert "epoch_20.pth" in str(e.value) and str(tmp_path) in str(e.value)
    torch.save({"net_recon": {}}, tmp_path / "epoch_20.pth")
    with pytest.raises(zoo.WeightMissingError) as e:
        g.load_d3dfr()
    assert "BFM_model_front.mat" in str(e.value) and str(tmp_path) in str(e.value)


def test_bad_files_give_clear_errors(files, tmp_path):
    root, arrays, _ = files
    bad = {k: v for k, v in arrays.items() if k != "keypoints"}
    savemat(tmp_path / "nokp.mat", bad)
    with pytest.raises(d.D3DFRFileError, match="missing keys \\['keypoints'\\]") as e:
        d.BFM.from_mat(tmp_path / "nokp.mat")
    assert "nokp.mat" in str(e.value) and isinstance(e.value, zoo.WeightError)
    savemat(tmp_path / "shape.mat", {**arrays, "exBase": arrays["exBase"][:, :60]})
    with pytest.raises(d.D3DFRFileError, match="exBase must be \\(300, 64\\)"):
        d.BFM.from_mat(tmp_path / "shape.mat")
    savemat(tmp_path / "tri.mat", {**arrays, "tri": arrays["tri"] + N})
    with pytest.raises(d.D3DFRFileError, match="tri indices"):
        d.BFM.from_mat(tmp_path / "tri.mat")
    (tmp_path / "junk.mat").write_bytes(b"not a mat file")
    with pytest.raises(d.D3DFRFileError, match="cannot read"):
        d.BFM.from_mat(tmp_path / "junk.mat")
    torch.save({"model": {}}, tmp_path / "epoch_20.pth")
    with pytest.raises(d.D3DFRFileError, match="no 'net_recon'"):
        d.D3DFRPrior.from_files(tmp_path / "epoch_20.pth", root / "BFM_model_front.mat")
    torch.save({"net_recon": {"backbone.conv1.weight": torch.zeros(64, 3, 7, 7)}}, tmp_path / "epoch_20.pth")
    with pytest.raises(d.D3DFRFileError, match="Missing key"):
        d.D3DFRPrior.from_files(tmp_path / "epoch_20.pth", root / "BFM_model_front.mat")


# --------------------------------------------------------------------------------------------- geometry
def test_bfm_layout(prior, files):
    arrays = files[1]
    bfm = prior.bfm
    assert bfm.mean_shape.shape == (N, 3) and torch.allclose(bfm.mean_shape.mean(0), torch.zeros(3), atol=1e-6)
    assert int(bfm.tri.min()) == 0 and int(bfm.keypoints[0]) == int(arrays["keypoints"][0, 0]) - 1
    c = _coeffs(1, id=torch.eye(80)[3])  # id coefficient 3 = 1: vertex v moves by idBase[3v:3v+3, 3]
    s = prior.vertices(c)[0]
    v = 7
    want = torch.tensor(_grid_mesh()[0][v] + arrays["idBase"][3 * v:3 * v + 3, 3], dtype=torch.float32)
    assert torch.allclose(s[v], want, atol=1e-5)


def test_projection_matches_hand_computation(prior, files):
    arrays = files[1]
    k = 5
    v = int(arrays["keypoints"][0, k]) - 1
    x, y, z = _grid_mesh()[0][v]  # the grid is already zero-mean, so recentring gives it back
    t = (0.05, -0.1, 0.3)
    lm = prior.landmarks68(_coeffs(1, trans=t))
    assert lm.shape == (1, 68, 2)
    depth = 10.0 - (z + t[2])
    u = 1015.0 * (x + t[0]) / depth + 112.0
    w = 224.0 - (1015.0 * (y + t[1]) / depth + 112.0)
    assert torch.allclose(lm[0, k], torch.tensor([u, w], dtype=torch.float32), atol=1e-3)
    # origin (0,0,0) projects to the principal point
    assert torch.allclose(d.project(torch.zeros(1, 1, 3)), torch.tensor([[[112.0, 112.0]]]))


def test_rotation_convention_and_yaw(prior):
    a = torch.tensor([[0.3, -0.2, 0.1]])
    r = d.rotation_matrix(a)[0]
    cx, sx, cy, sy, cz, sz = (math.cos(0.3), math.sin(0.3), math.cos(-0.2), math.sin(-0.2),
                              math.cos(0.1), math.sin(0.1))
    rx = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    assert torch.allclose(r, rz @ ry @ rx, atol=1e-6)
    # a point on the +z axis (towards the camera, like the nose tip) under yaw ay = 30 degrees
    th = math.radians(30)
    p = d.BFM.pose(torch.tensor([[[0.0, 0.0, 1.0]]]), _coeffs(1, angles=[0.0, th, 0.0]))
    assert torch.allclose(p, torch.tensor([[[math.sin(th), 0.0, math.cos(th)]]]), atol=1e-6)
    uv = d.project(p)[0, 0]
    assert abs(float(uv[0]) - (1015 * math.sin(th) / (10 - math.cos(th)) + 112)) < 1e-3 and uv[0] > 112
    # on the fabricated face: every landmark by hand (rotation about the vertical axis), and the keypoint
    # nearest the camera (top of the bump, like a nose tip) moves to the image right
    lm0 = prior.landmarks68(_coeffs(1))
    lm1 = prior.landmarks68(_coeffs(1, angles=[0.0, th, 0.0]))
    kp = prior.bfm.mean_shape[prior.bfm.keypoints].double()
    x, y, z = kp.unbind(1)
    xr, zr = x * math.cos(th) + z * math.sin(th), -x * math.sin(th) + z * math.cos(th)
    want = torch.stack([1015 * xr / (10 - zr) + 112, 224 - (1015 * y / (10 - zr) + 112)], 1)
    assert torch.allclose(lm1[0].double(), want, atol=1e-3)
    top = int(z.argmax())
    assert lm1[0, top, 0] > lm0[0, top, 0] and torch.allclose(lm1[0, top, 1], lm0[0, top, 1], atol=2.0)
    assert torch.allclose(prior.angles_degrees(_coeffs(1, angles=[0.1, th, -0.2])),
                          torch.tensor([[-30.0, math.degrees(0.1), math.degrees(0.2)]]), atol=1e-4)
    assert torch.allclose(prior.angles_xyz_degrees(_coeffs(1, angles=[0.0, th, 0.0]))[0, 1], torch.tensor(30.0))


def test_sh_shading(prior):
    n = torch.tensor([[[0.0, 0.0, 1.0], [0.6, 0.0, 0.8]]])
    dc = 0.8 * math.pi / math.sqrt(4 * math.pi)  # a0 * c0 * (gamma_dc + 0.8) with gamma = 0
    sh = d.sh_shading(n, torch.zeros(1, 27))
    assert torch.allclose(sh, torch.full((1, 2, 3), dc), atol=1e-6)
    gamma = torch.zeros(1, 27)
    gamma[0, 2] = 0.5  # red channel, band-1 z coefficient: a1 c1 nz
    k1 = (2 * math.pi / math.sqrt(3)) * (math.sqrt(3) / math.sqrt(4 * math.pi))
    sh = d.sh_shading(n, gamma)
    assert torch.allclose(sh[0, :, 0], torch.tensor([dc + 0.5 * k1, dc + 0.5 * k1 * 0.8]), atol=1e-6)
    assert torch.allclose(sh[0, :, 1:], torch.full((2, 2), dc), atol=1e-6)
    # a flat mesh (z = 0) has normals +z (CCW triangles seen from the camera) and shades to the DC constant
    flat = prior.bfm.mean_shape.clone()[None]
    flat[..., 2] = 0
    assert torch.allclose(prior.bfm.normals(flat), torch.tensor([0.0, 0.0, 1.0]).expand(1, N, 3), atol=1e-6)
    assert torch.allclose(prior.shading(_coeffs(1), shape=flat), torch.full((1, N, 3), dc), atol=1e-6)
    # rotating the face rotates the normals: yaw 90 degrees turns +z normals to +x (band-1 x coefficient)
    gamma = torch.zeros(1, 27)
    gamma[0, 3] = 1.0
    c = _coeffs(1, angles=[0.0, math.pi / 2, 0.0])
    c[:, d.GAMMA] = gamma
    assert torch.allclose(prior.shading(c, shape=flat)[0, :, 0], torch.full((N,), dc - k1), atol=1e-5)


def test_geometry_loss(prior):
    torch.manual_seed(2)
    c_ref = torch.randn(3, 257) * 0.1
    assert float(prior.geometry_loss(c_ref, c_ref.clone())) == 0.0
    c_pred = (c_ref + 0.05 * torch.randn(3, 257)).requires_grad_(True)
    loss = prior.geometry_loss(c_pred, c_ref)
    assert loss > 0
    loss.backward()
    gr = c_pred.grad
    for part in (d.ID, d.EXP, d.ANGLES, d.GAMMA, d.TRANS):
        assert gr[:, part].abs().sum() > 0, part
    assert gr[:, d.TEX].abs().sum() == 0  # texture is not in the loss (official: tex weight unused)
    # the weights select the terms, as the training loop passes them (w_shape, w_landmark)
    sp, sr = prior.vertices(c_pred), prior.vertices(c_ref)
    lm = torch.nn.functional.mse_loss(prior.landmarks68(c_pred), prior.landmarks68(c_ref))
    sh = torch.nn.functional.mse_loss(prior.shading(c_pred), prior.shading(c_ref))
    want = torch.nn.functional.mse_loss(sp, sr) + 0.01 * lm + sh
    assert torch.allclose(loss, want, rtol=1e-5)
    only_lm = prior.geometry_loss(c_pred, c_ref, w_shape=0.0, w_landmark=1.0, w_shading=0.0)
    assert torch.allclose(only_lm, lm, rtol=1e-5)
    # gradients reach the image through the network
    x = (torch.rand(1, 3, 64, 64) * 2 - 1).requires_grad_(True)
    prior.geometry_loss(prior.coefficients(x), c_ref[:1]).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
