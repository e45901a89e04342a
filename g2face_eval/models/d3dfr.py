"""Deep3DFaceRecon (D3DFR) geometry prior: ResNet-50 coefficient regressor + the BFM 'front' face model.

The official geometry prior of G2Face, written for this project from the published description of
Deep3DFaceRecon_pytorch (network layout, BFM_model_front.mat layout, camera and SH lighting model); no code was
copied. It needs two user files resolved through the zoo (``d3dfr_epoch20`` = ``epoch_20.pth`` and
``bfm_front`` = ``BFM_model_front.mat``), see ``load_d3dfr``. Interface as ``geometry.GeometryPrior`` where it
applies: ``coefficients``, ``style_condition``, ``geometry_loss``, ``angles_degrees``; plus ``vertices``,
``landmarks68``, ``shading``, ``albedo``.

Conventions (declared once here):

* **Input**: (B,3,H,W) RGB in **[-1, 1]**; the network sees ``(x + 1) / 2`` in [0,1] at the given size with
  no resize, crop or alignment (as G2Face feeds its 256x256 images; the pooled ResNet absorbs the size).
* **Coefficients** (B, 257): ``id [0:80] | exp [80:144] | tex [144:224] | angles [224:227] (rotation about
  x, y, z, radians) | gamma [227:254] (SH, 9 per channel, R then G then B) | trans [254:257]``.
* **Model frame** (BFM): x to the subject's left = image right, y up, z towards the camera. The un-posed
  shape is ``S = (meanshape - mean over vertices of meanshape) + idBase @ id + exBase @ exp``, (B,N,3),
  with the (3N,k) bases in vertex-major xyz order.
* **Rotation**: ``R = Rz(az) @ Ry(ay) @ Rx(ax)`` with the right-handed column-vector matrices
  (``Rx = [[1,0,0],[0,c,-s],[0,s,c]]``, ``Ry = [[c,0,s],[0,1,0],[-s,0,c]]``, ``Rz = [[c,-s,0],[s,c,0],[0,0,1]]``);
  posed vertices (rows) ``V = S @ R^T + t`` (D3DFR writes this as ``S @ rot`` with ``rot = R^T``).
  A positive ay turns the nose towards image right.
* **Camera**: pinhole at (0, 0, 10) looking down -z, focal 1015, principal point 112 in a 224 frame:
  ``d = 10 - Z``, ``u = 1015 X / d + 112``, ``v = 224 - (1015 Y / d + 112)`` (pixel coordinates with the
  origin top-left and v growing downwards; the flip is an isometry, so it does not change the landmark MSE).
* **Shading**: SH irradiance ``sum_k gamma'_{c,k} Y_k(n)`` with ``gamma' = gamma + 0.8`` on each channel's DC
  coefficient, ``Y = [a0 c0, -a1 c1 ny, a1 c1 nz, -a1 c1 nx, a2 c2 nx ny, -a2 c2 ny nz,
  a2 c2 (3 nz^2 - 1) / (2 sqrt 3), -a2 c2 nx nz, a2 c2 (nx^2 - ny^2) / 2]`` with ``a = (pi, 2 pi / sqrt 3,
  2 pi / sqrt 8)``, ``c = (1 / sqrt(4 pi), sqrt 3 / sqrt(4 pi), 3 sqrt 5 / sqrt(12 pi))``, on the rotated
  unit vertex normals (each the normalised sum of the unit normals of the triangles in ``point_buf``;
  triangle normal ``(v1 - v2) x (v2 - v3)``). G2Face's loss uses it without multiplying by the albedo.
* **angles_degrees**: the project's ``[yaw, pitch, roll]`` in the mediapipe prior's frame (x right, y down,
  z away), i.e. ``(-ay, ax, -az)`` in degrees, so both backends report pose the same way;
  ``angles_xyz_degrees`` gives the raw D3DFR ``(ax, ay, az)``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..zoo import WeightError

N_ID, N_EXP, N_TEX, N_ANGLE, N_GAMMA, N_TXY, N_TZ = 80, 64, 80, 3, 27, 2, 1
HEADS = (N_ID, N_EXP, N_TEX, N_ANGLE, N_GAMMA, N_TXY, N_TZ)
N_COEF = sum(HEADS)  # 257
ID = slice(0, 80)
EXP = slice(80, 144)
TEX = slice(144, 224)
ANGLES = slice(224, 227)
GAMMA = slice(227, 254)
TRANS = slice(254, 257)
N_COND = N_ID + N_EXP + N_ANGLE  # 147

FOCAL, CENTER, CAMERA_D, FRAME = 1015.0, 112.0, 10.0, 224.0
INIT_LIT_DC = 0.8
N_LANDMARKS = 68

_SH_A = (math.pi, 2 * math.pi / math.sqrt(3.0), 2 * math.pi / math.sqrt(8.0))
_SH_C = (1 / math.sqrt(4 * math.pi), math.sqrt(3.0) / math.sqrt(4 * math.pi),
         3 * math.sqrt(5.0) / math.sqrt(12 * math.pi))


class D3DFRFileError(WeightError, ValueError):
    """A user file (epoch_20.pth / BFM_model_front.mat) exists but does not have the expected content."""


# ----------------------------------------------------------------------------------------------- geometry
def rotation_matrix(angles: torch.Tensor) -> torch.Tensor:
    """(B,3) (ax, ay, az) radians -> (B,3,3) ``R = Rz(az) Ry(ay) Rx(ax)`` (column-vector convention)."""
    ax, ay, az = angles.unbind(-1)
    o, z = torch.ones_like(ax), torch.zeros_like(ax)
    cx, sx, cy, sy, cz, sz = ax.cos(), ax.sin(), ay.cos(), ay.sin(), az.cos(), az.sin()
    rx = torch.stack([o, z, z, z, cx, -sx, z, sx, cx], -1).view(-1, 3, 3)
    ry = torch.stack([cy, z, sy, z, o, z, -sy, z, cy], -1).view(-1, 3, 3)
    rz = torch.stack([cz, -sz, z, sz, cz, z, z, z, o], -1).view(-1, 3, 3)
    return rz @ ry @ rx


def project(v: torch.Tensor) -> torch.Tensor:
    """Posed model-frame points (B,P,3) -> (B,P,2) pixel coordinates of the 224 frame (see module doc)."""
    d = CAMERA_D - v[..., 2]
    u = FOCAL * v[..., 0] / d + CENTER
    w = FRAME - (FOCAL * v[..., 1] / d + CENTER)
    return torch.stack([u, w], -1)


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """(..., 3) unit normals -> (..., 9) SH basis values (constants folded in, see module doc)."""
    nx, ny, nz = normals.unbind(-1)
    a0, a1, a2 = _SH_A
    c0, c1, c2 = _SH_C
    k1, k2 = a1 * c1, a2 * c2
    return torch.stack([
        torch.full_like(nx, a0 * c0), -k1 * ny, k1 * nz, -k1 * nx, k2 * nx * ny, -k2 * ny * nz,
        0.5 * k2 / math.sqrt(3.0) * (3 * nz * nz - 1), -k2 * nx * nz, 0.5 * k2 * (nx * nx - ny * ny),
    ], -1)


def sh_shading(normals: torch.Tensor, gamma: torch.Tensor, init_lit: float = INIT_LIT_DC) -> torch.Tensor:
    """(B,N,3) unit normals, (B,27) gamma -> (B,N,3) RGB irradiance; ``init_lit`` added to each DC term."""
    g = gamma.reshape(-1, 3, 9)
    g = g + g.new_tensor([init_lit] + [0.0] * 8)
    return sh_basis(normals) @ g.transpose(1, 2)


# ------------------------------------------------------------------------------------------------- BFM
BFM_KEYS = ("meanshape", "idBase", "exBase", "meantex", "texBase", "point_buf", "tri", "keypoints")


class BFM(nn.Module):
    """BFM 'front' model (Deep3DFaceRecon's BFM_model_front.mat). Buffers are non-persistent: the prior's
    state dict is the network's only; the model always comes from the .mat."""

    def __init__(self, mean_shape: torch.Tensor, id_base: torch.Tensor, exp_base: torch.Tensor,
                 mean_tex: torch.Tensor, tex_base: torch.Tensor, tri: torch.Tensor, point_buf: torch.Tensor,
                 keypoints: torch.Tensor):
        super().__init__()
        n = mean_shape.shape[0]
        self.n_vertices, self.n_faces = n, tri.shape[0]
        self.register_buffer("mean_shape", mean_shape.float(), persistent=False)  # (N,3), recentred
        self.register_buffer("id_base", id_base.float(), persistent=False)  # (3N,80)
        self.register_buffer("exp_base", exp_base.float(), persistent=False)  # (3N,64)
        self.register_buffer("mean_tex", mean_tex.float(), persistent=False)  # (N,3)
        self.register_buffer("tex_base", tex_base.float(), persistent=False)  # (3N,80)
        self.register_buffer("tri", tri.long(), persistent=False)  # (F,3) 0-based
        self.register_buffer("point_buf", point_buf.long(), persistent=False)  # (N,K) 0-based, F = no face
        self.register_buffer("keypoints", keypoints.long(), persistent=False)  # (68,) 0-based

    @classmethod
    def from_mat(cls, path: str | Path) -> BFM:
        """Load and validate BFM_model_front.mat (1-based tri / point_buf / keypoints become 0-based)."""
        from scipy.io import loadmat

        path = Path(path)
        try:
            m = loadmat(str(path))
        except Exception as e:  # scipy raises ValueError / MatReadError / OSError on non-.mat content
            raise D3DFRFileError(f"{path}: cannot read as a MATLAB .mat file ({type(e).__name__}: {e})") from e
        return cls.from_arrays({k: v for k, v in m.items() if not k.startswith("__")}, source=str(path))

    @classmethod
    def from_arrays(cls, m: dict, source: str = "BFM") -> BFM:
        def bad(msg: str) -> D3DFRFileError:
            return D3DFRFileError(f"{source}: not a valid Deep3DFaceRecon BFM_model_front.mat: {msg}")

        missing = [k for k in BFM_KEYS if k not in m]
        if missing:
            raise bad(f"missing keys {missing} (has {sorted(m)})")
        a = {k: np.asarray(m[k]) for k in BFM_KEYS}
        mean = a["meanshape"]
        if mean.ndim != 2 or min(mean.shape) != 1 or mean.size % 3 or mean.size == 0:
            raise bad(f"meanshape must be (1, 3N), got {mean.shape}")
        p = mean.size
        n = p // 3
        for k, cols in (("idBase", N_ID), ("exBase", N_EXP), ("texBase", N_TEX)):
            if a[k].shape != (p, cols):
                raise bad(f"{k} must be ({p}, {cols}) for N={n} vertices, got {a[k].shape}")
        if a["meantex"].size != p:
            raise bad(f"meantex must be (1, {p}), got {a['meantex'].shape}")
        ints = {}
        for k in ("tri", "point_buf", "keypoints"):
            v = a[k]
            if v.size == 0 or not np.issubdtype(v.dtype, np.number) or not np.all(np.equal(np.mod(v, 1), 0)):
                raise bad(f"{k} must hold integer (1-based) indices, got dtype {v.dtype} shape {v.shape}")
            ints[k] = v.astype(np.int64)
        tri = ints["tri"]
        if tri.ndim != 2 or tri.shape[1] != 3:
            raise bad(f"tri must be (F, 3), got {tri.shape}")
        if tri.min() < 1 or tri.max() > n:
            raise bad(f"tri indices must be 1-based vertex indices in [1, {n}], got [{tri.min()}, {tri.max()}]")
        n_faces = tri.shape[0]
        pb = ints["point_buf"]
        if pb.ndim != 2 or pb.shape[0] != n:
            raise bad(f"point_buf must be (N={n}, K), got {pb.shape}")
        kp = ints["keypoints"].reshape(-1)
        if kp.size != N_LANDMARKS:
            raise bad(f"keypoints must hold {N_LANDMARKS} vertex indices, got {ints['keypoints'].shape}")
        if kp.min() < 1 or kp.max() > n:
            raise bad(f"keypoints must be 1-based vertex indices in [1, {n}], got [{kp.min()}, {kp.max()}]")
        pb = pb - 1
        pb[(pb < 0) | (pb >= n_faces)] = n_faces  # padding entries -> the zero dummy face
        mean_shape = torch.from_numpy(mean.reshape(n, 3).astype(np.float64))
        mean_shape = mean_shape - mean_shape.mean(0, keepdim=True)
        return cls(mean_shape, torch.from_numpy(a["idBase"].astype(np.float32)),
                   torch.from_numpy(a["exBase"].astype(np.float32)),
                   torch.from_numpy(a["meantex"].reshape(n, 3).astype(np.float32)),
                   torch.from_numpy(a["texBase"].astype(np.float32)), torch.from_numpy(tri - 1),
                   torch.from_numpy(pb), torch.from_numpy(kp - 1))

    # ---- model
    def shape(self, coeffs: torch.Tensor) -> torch.Tensor:
        """Un-posed shape (B,N,3) from (B,257) coefficients."""
        s = coeffs[:, ID] @ self.id_base.T + coeffs[:, EXP] @ self.exp_base.T
        return s.view(coeffs.shape[0], -1, 3) + self.mean_shape

    def albedo(self, coeffs: torch.Tensor) -> torch.Tensor:
        """(B,N,3) albedo in the file's units (D3DFR's file: 0..255; divide by 255 for [0,1])."""
        t = coeffs[:, TEX] @ self.tex_base.T
        return t.view(coeffs.shape[0], -1, 3) + self.mean_tex

    def normals(self, shape: torch.Tensor) -> torch.Tensor:
        """(B,N,3) unit vertex normals of a (B,N,3) shape."""
        v1, v2, v3 = (shape[:, self.tri[:, i]] for i in range(3))
        fn = F.normalize(torch.linalg.cross(v1 - v2, v2 - v3, dim=-1), dim=-1)
        fn = torch.cat([fn, fn.new_zeros(fn.shape[0], 1, 3)], 1)  # dummy face for point_buf padding
        return F.normalize(fn[:, self.point_buf].sum(2), dim=-1)

    @staticmethod
    def pose(shape: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
        r = rotation_matrix(coeffs[:, ANGLES])
        return shape @ r.transpose(1, 2) + coeffs[:, None, TRANS]


# --------------------------------------------------------------------------------------------- network
class ReconNet(nn.Module):
    """ResNet-50 trunk (torchvision layout, no fc) + seven 1x1 conv heads -> (B,257). State-dict names equal
    Deep3DFaceRecon's ``ReconNetWrapper('resnet50', use_last_fc=False)``: ``backbone.*``, ``final_layers.0-6``."""

    def __init__(self):
        super().__init__()
        from torchvision.models import resnet50

        self.backbone = resnet50(weights=None)
        self.backbone.fc = nn.Identity()  # no parameters -> no backbone.fc.* entries
        self.final_layers = nn.ModuleList(nn.Conv2d(2048, n, 1, bias=True) for n in HEADS)
        for layer in self.final_layers:  # untrained heads predict the mean face, frontal, neutral light
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        h = self.backbone(x01)[:, :, None, None]  # (B,2048,1,1) after the global average pool
        return torch.cat([layer(h) for layer in self.final_layers], 1).flatten(1)


def load_net_state(path: str | Path) -> dict[str, torch.Tensor]:
    """``epoch_20.pth`` -> its ``net_recon`` state dict (``torch.load(weights_only=True)``, DDP prefix stripped)."""
    path = Path(path)
    try:
        ck = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise D3DFRFileError(f"{path}: cannot load as a torch checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ck, dict) or "net_recon" not in ck:
        keys = sorted(ck)[:10] if isinstance(ck, dict) else type(ck).__name__
        raise D3DFRFileError(f"{path}: not a Deep3DFaceRecon checkpoint: no 'net_recon' key (has {keys})")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in ck["net_recon"].items()}


# ------------------------------------------------------------------------------------------ public API
class D3DFRPrior(nn.Module):
    """Deep3DFaceRecon + BFM geometry prior (frozen in use). ``coefficients(images_m11) -> (B,257)``."""

    backend = "d3dfr"
    n_coef = N_COEF
    n_cond = N_COND

    def __init__(self, bfm: BFM, net: ReconNet | None = None):
        super().__init__()
        self.net_recon = net if net is not None else ReconNet()
        self.bfm = bfm

    @classmethod
    def from_files(cls, weights: str | Path, bfm: str | Path) -> D3DFRPrior:
        prior = cls(BFM.from_mat(bfm))
        sd = load_net_state(weights)
        try:
            prior.net_recon.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise D3DFRFileError(f"{weights}: 'net_recon' does not match ReconNetWrapper('resnet50', "
                                 f"use_last_fc=False): {e}") from e
        return prior.eval()

    # ---- network
    def coefficients(self, images_m11: torch.Tensor) -> torch.Tensor:
        return self.net_recon((images_m11 + 1) * 0.5)

    forward = coefficients

    # ---- condition / pose
    @staticmethod
    def style_condition(coeffs: torch.Tensor) -> torch.Tensor:
        """(B,147) = coeffs[:, 0:144] ++ coeffs[:, 224:227], as the official style-MLP input."""
        return torch.cat([coeffs[:, :144], coeffs[:, ANGLES]], 1)

    @staticmethod
    def angles_xyz_degrees(coeffs: torch.Tensor) -> torch.Tensor:
        return coeffs[:, ANGLES] * (180.0 / math.pi)

    @staticmethod
    def angles_degrees(coeffs: torch.Tensor) -> torch.Tensor:
        """[yaw, pitch, roll] degrees in the project's (mediapipe prior's) frame: (-ay, ax, -az)."""
        a = coeffs[:, ANGLES] * (180.0 / math.pi)
        return torch.stack([-a[:, 1], a[:, 0], -a[:, 2]], 1)

    # ---- geometry
    def vertices(self, coeffs: torch.Tensor, posed: bool = False) -> torch.Tensor:
        """(B,N,3) un-posed BFM shape, or posed (rotated + translated, model frame) when ``posed``."""
        s = self.bfm.shape(coeffs)
        return self.bfm.pose(s, coeffs) if posed else s

    shape = vertices

    def landmarks68(self, coeffs: torch.Tensor, shape: torch.Tensor | None = None) -> torch.Tensor:
        """(B,68,2) projected landmarks, pixels of the 224 frame (v downwards)."""
        s = self.bfm.shape(coeffs) if shape is None else shape
        return project(self.bfm.pose(s[:, self.bfm.keypoints], coeffs))

    def shading(self, coeffs: torch.Tensor, shape: torch.Tensor | None = None) -> torch.Tensor:
        """(B,N,3) SH irradiance on the rotated vertex normals (not multiplied by the albedo)."""
        s = self.bfm.shape(coeffs) if shape is None else shape
        n = self.bfm.normals(s) @ rotation_matrix(coeffs[:, ANGLES]).transpose(1, 2)
        return sh_shading(n, coeffs[:, GAMMA])

    def albedo(self, coeffs: torch.Tensor) -> torch.Tensor:
        return self.bfm.albedo(coeffs)

    def geometry_loss(self, c_pred: torch.Tensor, c_ref: torch.Tensor, w_shape: float = 1.0,
                      w_landmark: float = 0.01, w_shading: float = 1.0) -> torch.Tensor:
        """G2Face's geometry loss: w_shape * MSE(un-posed shapes) + w_landmark * MSE(68 projected landmarks,
        pixels) + w_shading * MSE(SH shading). Terms with weight 0 are skipped."""
        sp, sr = self.bfm.shape(c_pred), self.bfm.shape(c_ref)
        loss = c_pred.new_zeros(())
        if w_shape:
            loss = loss + w_shape * F.mse_loss(sp, sr)
        if w_landmark:
            loss = loss + w_landmark * F.mse_loss(self.landmarks68(c_pred, sp), self.landmarks68(c_ref, sr))
        if w_shading:
            loss = loss + w_shading * F.mse_loss(self.shading(c_pred, sp), self.shading(c_ref, sr))
        return loss


def load_d3dfr_prior(map_location: str | torch.device = "cpu") -> D3DFRPrior:
    """Both user files through the zoo (sha256 verified when on record; ``WeightMissingError`` names the file
    and folder when absent)."""
    from .. import zoo

    weights, bfm = zoo.path("d3dfr_epoch20"), zoo.path("bfm_front")
    return D3DFRPrior.from_files(weights, bfm).to(map_location)
