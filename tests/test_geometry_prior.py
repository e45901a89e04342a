"""Offline geometry prior (mediapipe landmark morphable model + differentiable regressor)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from g2face_eval.models import geometry as g
from g2face_eval.models import geometry_fit as gf

needs_ckpt = pytest.mark.skipif(not g.CHECKPOINT.exists(), reason="geometry prior checkpoint not built")


def test_rotation_roundtrip():
    a = torch.tensor([[0.3, -0.2, 0.1], [-0.5, 0.4, -0.3], [0.0, 0.0, 0.0]])
    r = g.euler_to_matrix(a)
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3).expand(3, 3, 3), atol=1e-6)
    assert torch.allclose(g.matrix_to_euler(r), a, atol=1e-5)


def test_umeyama_recovers_similarity():
    torch.manual_seed(0)
    a = torch.randn(50, 3, dtype=torch.float64)
    r = g.euler_to_matrix(torch.tensor([[0.2, -0.1, 0.3]], dtype=torch.float64))
    x = 2.5 * a @ r[0].T + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    s, rr, t = gf.umeyama(a, x[None])
    assert abs(s.item() - 2.5) < 1e-9 and torch.allclose(rr[0], r[0], atol=1e-9)


def test_layout_matches_official_slicing():
    assert (g.ID, g.EXP, g.ANGLES) == (slice(0, 80), slice(80, 144), slice(144, 147))
    assert g.N_COEF == 150 and g.N_COND == 147
    from g2face_eval.models.g2face import GEO_DIM, geometry_condition

    c = torch.randn(2, g.N_COEF)
    cond = g.GeometryPrior.style_condition(c)
    assert cond.shape == (2, GEO_DIM) and torch.equal(geometry_condition(cond), cond)
    assert torch.equal(cond[:, 144:], c[:, g.ANGLES])


def test_d3dfr_backend_reports_missing_user_files(tmp_path, monkeypatch):
    monkeypatch.setenv("G2FACE_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(Exception) as ei:
        g.load_geometry_prior("d3dfr")
    msg = str(ei.value)
    assert "epoch_20.pth" in msg or "BFM_model_front.mat" in msg, msg


@needs_ckpt
def test_checkpoint_small_and_differentiable():
    assert g.CHECKPOINT.stat().st_size < 12e6
    prior = g.GeometryPrior.load()
    x = (torch.rand(2, 3, 256, 256) * 2 - 1).requires_grad_(True)
    c = prior.coefficients(x)
    assert c.shape == (2, g.N_COEF) and torch.isfinite(c).all()
    lm = prior.landmarks3d(c)
    assert lm.shape == (2, 468, 3)
    loss = prior.geometry_loss(c, torch.zeros_like(c).detach() + c.detach().mean(0))
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@needs_ckpt
def test_heldout_pose_and_nme_against_mediapipe(datasets_root):
    """celebahq256 test split (never used for fitting), 120 images spread over it: per-angle mean absolute
    pose error <= 5 degrees vs the pose fitted to the mediapipe mesh, and landmark NME (mean 2D error over
    the 468 points / outer-eye-corner distance 33-263) <= 5%."""
    files = gf.celebahq_files(datasets_root, "test")
    assert len(files) == 500
    files = files[::4][:120]
    runner = gf.MeshRunner()
    ims, meshes = [], []
    for f in files:
        rgb = gf._read_rgb(f)
        m = runner(rgb)
        if m is not None:
            ims.append(rgb)
            meshes.append(m)
    assert len(ims) >= 100
    prior = g.GeometryPrior.load()
    x_ref = torch.from_numpy(np.stack(meshes))
    c_ref = gf.fit_coefficients(prior.model, x_ref, 256)
    x = torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        c = torch.cat([prior.coefficients(x[i:i + 40]) for i in range(0, len(x), 40)])
    pose_err = (prior.angles_degrees(c) - prior.angles_degrees(c_ref)).abs().mean(0)
    nme = g.nme(prior.landmarks3d(c)[..., :2] * 256, x_ref[..., :2]).mean().item()
    assert (pose_err <= 5.0).all(), pose_err
    assert nme <= 0.05, nme


def test_prior_checkpoint_is_verified_by_sha256(tmp_path):
    """The shipped prior loads through its zoo entry (sha256 on record); a saved prior gets a record beside it,
    and a copy whose bytes changed, or that has no record, is refused instead of loaded."""
    from g2face_eval import zoo

    prior = g.GeometryPrior.load()
    assert zoo.status(g.WEIGHT_NAME)[0] == "available"
    out = tmp_path / "prior.safetensors"
    prior.save(out, prior.meta)
    assert zoo.record_path(out).read_text().split()[0] == zoo.sha256_file(out)
    again = g.GeometryPrior.load(out)
    for a, b in zip(again.state_dict().values(), prior.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    data = bytearray(out.read_bytes())
    data[-1] ^= 1
    out.write_bytes(bytes(data))
    zoo._digests.clear()
    with pytest.raises(zoo.WeightIntegrityError):
        g.GeometryPrior.load(out)
    zoo.record_path(out).unlink()
    with pytest.raises(zoo.WeightUnrecordedError):
        g.GeometryPrior.load(out)
