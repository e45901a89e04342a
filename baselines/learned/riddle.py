"""RiDDLE-style latent encryptor baseline (method ``riddle``; Li et al., CVPR 2023, "RiDDLE: Reversible and
Diversified De-identification with Latent Encryptor"), our own small reimplementation for this benchmark.

Pipeline (64 px network, used at any square size by area-down / bicubic-up like ``ResizedG2Face``):

  anonymize:  w = E(x)                      CNN encoder inverts the face into W+ of the project's StyleGAN2
              w_enc = Enc(w, password)      password-conditioned lightweight transformer ("latent encryptor")
              y = G(w_enc)                  the frozen StyleGAN2 synthesis (the generative prior), noise-free
  recover:    w' = E(y)                     re-invert the released image
              x_rec = G(Enc^-1(w', password))

Password: ``PASSWORD_BITS`` bits straight from each image's key (``anonymizer.key_bits``, purpose "riddle"), so
the output of an image never depends on the rest of the batch.

Deviation from RiDDLE, stated once: RiDDLE's encryptor learns decryption through a latent reconstruction loss
(the same transformer run again with the password). Here the encryptor is a stack of password-conditioned
affine coupling layers whose conditioning networks are small transformers over the W+ tokens and password
tokens; decryption is the *same network run in reverse* with the same password, so
``decrypt(encrypt(w, p), p) == w`` holds structurally (up to float rounding, ~1e-6), not approximately. What is
still learned is (a) the inversion, incl. re-inverting released faces (latent cycle loss) and (b) that
encryption changes identity, differently for different passwords, and that a wrong password does not bring
the identity back. The recovered face is therefore only as good as the encoder's inversion.

Losses (images in [-1,1]; ID = frozen SFace prior, cos-based hinge as CosineEmbeddingLoss(margin 0)):
  inversion   L1(G(w), x) + perceptual(G(w), x)     (identity enters through the recovery term below)
  anonymity   max(0, cos(ID(y1), ID(x))) + max(0, cos(ID(y2), ID(x)))       y_i = G(Enc(w, p_i))
  diversity   max(0, cos(ID(y1), ID(y2)))                                    two passwords, two identities
  layout      L1(avgpool16(y_i), avgpool16(x))  (pose/background/colour layout kept; identity details free)
  cycle       |E(y1) - w_enc1|^2                (the encoder must re-invert released faces)
  recovery    L1(x_rec, x) + (1 - cos(ID(x_rec), ID(x))) + |Enc^-1(E(y1), p1) - w|^2
  wrong pwd   max(0, cos(ID(G(Enc^-1(E(y1), p3))), ID(x)))
  latent      mean(max(0, |w_enc| - 3)^2)          (encrypted codes stay in the prior's range)
Stability (a first run at lr 5e-4 diverged at step ~35: latents, images and the cycle loss blew up, ToRGB
being linear in the style): the encoder output is soft-bounded (|u| < 3 W std, tanh), each coupling's
log-scale by 0.5 and shift by 2 (tanh), plus the latent-range term above.
The SFace prior costs ~0.17 s per image (forward+backward) on one CPU thread, so the anonymity, diversity and
wrong-password identity terms use the first half of each batch (y2 is only rendered for that half); the
recovery identity term uses the whole batch (20 identity images with gradients per step of 8).

Training and export use the shared learned-baseline scaffold (``baselines/learned/base.py``: the G2Face
trainer's data = celebahq256 train split at 64 px with flips, DDP, checkpoints, MLflow; frozen SFace and
perceptual priors). The StyleGAN2 prior (``prior=<pre-training dir>``) is loaded when the trainer binds the
priors; it stays frozen. No discriminator: realism comes from the frozen generator.

  g2face-eval train-baseline riddle --steps 300 --lr 4e-4 --model prior=/work/train_runs/sg/last \
      --out /work/train_runs/riddle      (Adam betas (0.5, 0.999) = the scaffold's default; no discriminator)
  g2face-eval train-baseline export /work/train_runs/riddle/last --export-to g2face_eval/checkpoints/riddle.safetensors

The exported ``g2face_eval/checkpoints/riddle.safetensors`` holds the encoder, the encryptor, the frozen
synthesis network and the W statistics (self-contained); zoo entry ``learned_riddle``, sha256 in
``riddle.sha256``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from baselines.learned.base import (
    Batch,
    LearnedBaseline,
    ModelAnonymizer,
    builder,
    register_method,
)
from g2face_eval.anonymizer import Key, Output, key_bits
from g2face_eval.training.losses import id_cosine

PASSWORD_BITS = 64
LATENT_BOUND = 3.0  # encoder output |u| < 3 (u = normalised W+: (w - w_avg) / w_std)
SHIFT_BOUND = 2.0  # |shift| of each coupling
# training settings applied by `g2face-eval train-baseline riddle` before its own flags (base.TRAIN_DEFAULTS)
TRAIN_DEFAULTS = {"lr": 4e-4}
# loss weights (see the module docstring)
WEIGHTS = {"l1": 1.0, "perc": 1.0, "id": 1.0, "anon": 1.0, "div": 0.5, "layout": 1.0, "cycle": 1.0,
           "rec": 1.0, "wrong": 1.0, "latent": 1.0}


# ------------------------------------------------------------------------------------------------ config
@dataclass
class RiddleConfig:
    size: int = 64  # network resolution (= the StyleGAN2 prior's)
    style_dim: int = 32  # W dim of the prior
    sg_channel_base: int = 32  # StyleGAN2 channel_base of the prior
    enc_width: int = 32  # encoder base width
    d_model: int = 64  # encryptor transformer width
    n_heads: int = 4
    n_couplings: int = 4
    pw_bits: int = PASSWORD_BITS
    pw_tokens: int = 4
    scale_clamp: float = 0.5  # |log-scale| bound of each coupling

    @property
    def n_latent(self) -> int:
        return int(math.log2(self.size)) * 2 - 2

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ password
def password_bits(keys: Sequence[Key], n_bits: int = PASSWORD_BITS) -> torch.Tensor:
    """(B, n_bits) float in {-1, +1}, one row per key, straight from the key (``anonymizer.key_bits``, purpose
    "riddle"): all ``n_bits`` bits of entropy, and an image's password never depends on the rest of the batch."""
    return key_bits(keys, n_bits, "riddle") * 2 - 1


# ------------------------------------------------------------------------------------------------ networks
class Encoder(nn.Module):
    """x in [-1,1] (B,3,S,S) -> normalised W+ codes u (B, n_latent, style_dim); w = w_avg + w_std * u.
    No normalisation layers across the batch (outputs do not depend on batch composition)."""

    def __init__(self, cfg: RiddleConfig):
        super().__init__()
        c = cfg.enc_width
        chans = [c, 2 * c, 4 * c, 4 * c, 4 * c]
        layers: list[nn.Module] = [nn.Conv2d(3, chans[0], 3, 1, 1), nn.LeakyReLU(0.2)]
        res, cin = cfg.size, chans[0]
        i = 1
        while res > 4:
            cout = chans[min(i, len(chans) - 1)]
            layers += [nn.Conv2d(cin, cout, 3, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(cout, cout, 3, 1, 1),
                       nn.LeakyReLU(0.2)]
            cin, res, i = cout, res // 2, i + 1
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin * 16, cfg.n_latent * cfg.style_dim)
        nn.init.normal_(self.head.weight, std=0.1 / math.sqrt(cin * 16))
        nn.init.zeros_(self.head.bias)
        self.n_latent, self.style_dim = cfg.n_latent, cfg.style_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).flatten(1)
        raw = self.head(h).view(-1, self.n_latent, self.style_dim)
        return LATENT_BOUND * torch.tanh(raw / LATENT_BOUND)  # soft bound: |u| < 3 W standard deviations


class CouplingNet(nn.Module):
    """(a: (B,L,D/2), password (B,P)) -> (log-scale, shift) for the other half: one pre-norm transformer layer
    over L latent tokens + ``pw_tokens`` password tokens."""

    def __init__(self, cfg: RiddleConfig):
        super().__init__()
        half, d = cfg.style_dim // 2, cfg.d_model
        self.inp = nn.Linear(half, d)
        self.pos = nn.Parameter(torch.randn(1, cfg.n_latent, d) * 0.02)
        self.pw = nn.Linear(cfg.pw_bits, cfg.pw_tokens * d)
        self.pw_tokens, self.d = cfg.pw_tokens, d
        self.block = nn.TransformerEncoderLayer(d, cfg.n_heads, dim_feedforward=2 * d, dropout=0.0,
                                                activation="gelu", batch_first=True, norm_first=True)
        self.out = nn.Linear(d, 2 * (cfg.style_dim - half))
        nn.init.normal_(self.out.weight, std=0.05)
        nn.init.zeros_(self.out.bias)
        self.clamp = cfg.scale_clamp

    def forward(self, a: torch.Tensor, pw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = a.shape[1]
        tok = torch.cat([self.inp(a) + self.pos, self.pw(pw).view(-1, self.pw_tokens, self.d)], 1)
        h = self.block(tok)[:, :n]
        s, t = self.out(h).chunk(2, -1)
        return self.clamp * torch.tanh(s / self.clamp), SHIFT_BOUND * torch.tanh(t / SHIFT_BOUND)


class LatentEncryptor(nn.Module):
    """Password-conditioned invertible map on normalised W+ (affine couplings, halves alternating).
    ``forward(u, pw)`` encrypts; ``forward(u, pw, decrypt=True)`` runs the same layers in reverse."""

    def __init__(self, cfg: RiddleConfig):
        super().__init__()
        self.half = cfg.style_dim // 2
        self.layers = nn.ModuleList(CouplingNet(cfg) for _ in range(cfg.n_couplings))

    def forward(self, u: torch.Tensor, pw: torch.Tensor, decrypt: bool = False) -> torch.Tensor:
        a, b = u[..., :self.half], u[..., self.half:]
        order = range(len(self.layers))
        if not decrypt:
            for i in order:
                if i % 2:
                    a, b = b, a
                s, t = self.layers[i](a, pw)
                b = b * torch.exp(s) + t
                if i % 2:
                    a, b = b, a
        else:
            for i in reversed(order):
                if i % 2:
                    a, b = b, a
                s, t = self.layers[i](a, pw)
                b = (b - t) * torch.exp(-s)
                if i % 2:
                    a, b = b, a
        return torch.cat([a, b], -1)


class RiddleModel(nn.Module):
    """Encoder + encryptor (trained) + the frozen StyleGAN2 synthesis network and W statistics (the prior)."""

    def __init__(self, cfg: RiddleConfig):
        super().__init__()
        from g2face_eval.models.stylegan2 import SynthesisNetwork, default_channels

        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.encryptor = LatentEncryptor(cfg)
        self.synthesis = SynthesisNetwork(cfg.size, cfg.style_dim,
                                          default_channels(2, cfg.sg_channel_base, cfg.size))
        self.synthesis.requires_grad_(False)
        self.register_buffer("w_avg", torch.zeros(cfg.style_dim))
        self.register_buffer("w_std", torch.ones(cfg.style_dim))

    def load_prior(self, src: str | Path, n: int = 4096, seed: int = 0) -> None:
        """Synthesis weights from a StyleGAN2 pre-training checkpoint; W mean/std from its mapping network."""
        from g2face_eval.models.stylegan2 import Generator
        from g2face_eval.training.loop import load_generator_state

        sd = load_generator_state(str(src))
        gen = Generator(self.cfg.size, self.cfg.style_dim, channel_base=self.cfg.sg_channel_base)
        gen.load_state_dict(sd, strict=True)
        self.synthesis.load_state_dict({k: v for k, v in sd.items() if not k.startswith("style.")}, strict=True)
        with torch.no_grad():
            w = gen.style(torch.randn(n, self.cfg.style_dim, generator=torch.Generator().manual_seed(seed)))
        self.w_avg.copy_(w.mean(0))
        self.w_std.copy_(w.std(0).clamp_min(1e-3))
        self.synthesis.requires_grad_(False)

    def invert(self, x_m11: torch.Tensor) -> torch.Tensor:
        """normalised W+ codes u (B, n_latent, style_dim)."""
        return self.encoder(x_m11)

    def synth(self, u: torch.Tensor) -> torch.Tensor:
        """normalised W+ -> image in [-1,1] (unclamped), noise-free (deterministic per image)."""
        w = self.w_avg + self.w_std * u
        zeros = [w.new_zeros(w.shape[0], 1, h, h2) for h, h2 in self.synthesis.noise_shapes()]
        return self.synthesis(w, zeros)

    def encrypt(self, u: torch.Tensor, pw: torch.Tensor) -> torch.Tensor:
        return self.encryptor(u, pw)

    def decrypt(self, u: torch.Tensor, pw: torch.Tensor) -> torch.Tensor:
        return self.encryptor(u, pw, decrypt=True)

    def train(self, mode: bool = True):
        super().train(mode)
        self.synthesis.eval()
        return self


# ------------------------------------------------------------------------------------------------ baseline
def _differ(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """max(0, cos(a, b)) (CosineEmbeddingLoss, target -1, margin 0)."""
    return id_cosine(a, b, -1)


def _same(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cos(a, b)."""
    return id_cosine(a, b, 1)


@builder("riddle")
class Riddle(LearnedBaseline):
    """The scaffold's ``LearnedBaseline``: ``generator`` = ``RiddleModel`` (encoder + encryptor trained; the
    StyleGAN2 synthesis frozen, exported with it); no discriminator."""

    reversible = True

    def __init__(self, size: int = 64, style_dim: int = 32, sg_channel_base: int = 32, enc_width: int = 32,
                 d_model: int = 64, n_heads: int = 4, n_couplings: int = 4, pw_bits: int = PASSWORD_BITS,
                 pw_tokens: int = 4, scale_clamp: float = 0.5, prior: str | None = None,
                 weights: dict | None = None):
        w = {**WEIGHTS, **(weights or {})}
        mc = RiddleConfig(size, style_dim, sg_channel_base, enc_width, d_model, n_heads, n_couplings, pw_bits,
                          pw_tokens, scale_clamp)
        super().__init__(**mc.to_dict(), prior=prior, weights=w)
        self.cfg, self.prior, self.w, self.size = mc, prior, w, size
        self.generator = RiddleModel(mc)
        self.discriminator = None

    def bind(self, priors) -> Riddle:
        """Training only: attach the frozen priors and load the StyleGAN2 prior (synthesis + W statistics)."""
        super().bind(priors)
        if self.prior:
            self.generator.load_prior(self.prior)
        return self

    def training_losses(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        w, m, idp, x = self.w, self.generator, self.priors.identity, batch.x
        b = x.shape[0]
        # the SFace prior dominates CPU time (~0.17 s per image forward+backward on one thread): the identity
        # terms of the encrypted faces and of the wrong-password decryption use the first half of the batch
        h = max(1, b // 2)
        p1, p2, p3 = ((batch.bits(b, self.cfg.pw_bits) * 2 - 1) for _ in range(3))
        u = m.invert(x)
        e1, e2 = m.encrypt(u, p1), m.encrypt(u[:h], p2[:h])
        g_w, y1, y2 = m.synth(torch.cat([u, e1, e2])).split([b, b, h])
        with torch.no_grad():
            id_x = idp(x)
        id_y1, id_y2 = idp(torch.cat([y1[:h], y2])).split(h)
        p: dict[str, torch.Tensor] = {}
        p["inv_l1"] = w["l1"] * (g_w - x).abs().mean()
        if w["perc"]:
            p["inv_perc"] = w["perc"] * self.priors.perceptual(g_w, x)
        p["anon"] = w["anon"] * (_differ(id_y1, id_x[:h]) + _differ(id_y2, id_x[:h]))
        p["diversity"] = w["div"] * _differ(id_y1, id_y2)
        # encrypted codes stay where the prior generates faces (|e| beyond 3 W standard deviations is penalised)
        p["latent"] = w["latent"] * 0.5 * ((e1.abs() - LATENT_BOUND).clamp_min(0).pow(2).mean()
                                           + (e2.abs() - LATENT_BOUND).clamp_min(0).pow(2).mean())
        pool_x = F.adaptive_avg_pool2d(x, 16)
        p["layout"] = w["layout"] * 0.5 * ((F.adaptive_avg_pool2d(y1, 16) - pool_x).abs().mean()
                                           + (F.adaptive_avg_pool2d(y2, 16) - pool_x[:h]).abs().mean())
        # recovery from the released image: re-invert it, decrypt with the right / a wrong password
        r1 = m.invert(y1.detach().clamp(-1, 1))
        p["cycle"] = w["cycle"] * (r1 - e1.detach()).pow(2).mean()
        d_ok, d_wrong = m.decrypt(r1, p1), m.decrypt(r1[:h], p3[:h])
        x_rec, x_wrong = m.synth(torch.cat([d_ok, d_wrong])).split([b, h])
        id_rec, id_wrong = idp(torch.cat([x_rec, x_wrong])).split([b, h])
        p["rec"] = w["rec"] * ((x_rec - x).abs().mean() + w["id"] * _same(id_rec, id_x)
                               + (d_ok - u.detach()).pow(2).mean())
        p["wrong"] = w["wrong"] * _differ(id_wrong, id_x[:h])
        total = sum(p.values())
        with torch.no_grad():  # logged diagnostics (not optimised)
            p["cos_y_x"] = F.cosine_similarity(id_y1, id_x[:h]).mean()
            p["cos_y1_y2"] = F.cosine_similarity(id_y1, id_y2).mean()
            p["cos_rec_x"] = F.cosine_similarity(id_rec, id_x).mean()
            p["cos_wrong_x"] = F.cosine_similarity(id_wrong, id_x[:h]).mean()
        p["total"] = total
        batch.samples = (x.detach(), y1.detach(), x_rec.detach())
        return p

    def anonymizer(self, device: str = "cpu") -> RiddleAnonymizer:
        return RiddleAnonymizer(self, device=device)


# ------------------------------------------------------------------------------------------------ anonymizer
class RiddleAnonymizer(ModelAnonymizer):
    """The RiDDLE-style model as an ``Anonymizer`` at its own size (the registered ``riddle`` method wraps it in
    ``base.Resized``: area down, bicubic up). ``recover`` has no authentication (``ok`` is None): a wrong
    password decrypts to another face."""

    name = "riddle"
    reversible = True

    def config(self) -> dict:
        c = self.model.model_config()
        return {"name": self.name, "family": "learned_riddle", "size": c["size"], "pw_bits": c["pw_bits"],
                "encryptor": f"{c['n_couplings']} password-conditioned affine couplings (transformer nets)",
                "password": "key_bits(key, purpose 'riddle'); recovery: the encryptor run in reverse with the same "
                            "bits"}

    @torch.no_grad()
    def _run(self, images: torch.Tensor, keys: Sequence[Key], decrypt: bool) -> torch.Tensor:
        g = self.model.generator
        x = self.to_model(images)
        pw = password_bits(keys, g.cfg.pw_bits).to(self.device)
        u = g.invert(x)
        u = g.decrypt(u, pw) if decrypt else g.encrypt(u, pw)
        return self.from_model(g.synth(u), images)

    def _anonymize(self, images: torch.Tensor, keys: Sequence[Key], face_masks: torch.Tensor | None
                   ) -> Output:
        return Output(self._run(images, keys, decrypt=False))

    def _recover(self, images: torch.Tensor, keys: Sequence[Key]) -> Output:
        return Output(self._run(images, keys, decrypt=True))


def register_methods(methods) -> None:
    """``riddle``: the exported checkpoint (zoo entry ``learned_riddle``, sha256-verified) at 256 px via
    ``base.Resized``."""
    register_method(methods, "riddle")
