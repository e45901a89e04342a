"""G2Face training loop (and the StyleGAN2 pre-training used to initialise G2Face's decoder).

One step (official train.py, see the reference manifest's ``forward_facts``):

  anonymisation:  c_x = geo(x), id_x = ID(x) (frozen priors), rand_id = Map2ID(z), bits_a = random payload bits
                  (``TrainConfig.payload``: "keyed" uniform bits, the default, or the official float2bit(randn)),
                  y = G(x, style_mlp(rand_id, [c_x id, exp, angles]), bits_a), logits_a = E(y + 0.01 n)
  recovery:       x_rec = G(y.detach(), style_mlp(id_x, cond(geo(y))), bits_r), logits_r = E(x_rec + 0.01 n)
  G losses:       L1 + perceptual (y vs x, x_rec vs x); id: cos(rand_id, ID(y), +1), cos(id_x, ID(x_rec), +1),
                  cos(id_x, ID(y), -1) (CosineEmbeddingLoss margin 0); diversity(rand_id); geometry
                  (y vs x and x_rec vs x); hiding BCE x10 (both phases); non-saturating adversarial
  D:              logistic loss on x vs (x_rec.detach() on even steps, y.detach() on odd steps);
                  R1 x5 on every 16th step (step % 16 == 0), no lazy scaling
  optimisers:     Adam betas (0, 0.999); G groups lr 1e-3 (new parts) / 1e-4 (StyleGAN synthesis part);
                  D lr 1e-3 constant; G lr x (e+1)/warmup in 0-based epoch e <= warmup-1, then
                  x 0.95^(e+1-warmup) (``lr_factor``), where an epoch of the *schedule* is the official epoch
                  length, ceil(70,000 FFHQ images / global batch) steps (``OFFICIAL_EPOCH_IMAGES``), unless
                  ``steps_per_epoch`` is given; the data loader's own epoch (reshuffle) is one pass over our
                  (much smaller) train split and is independent of it

All randomness of a step (z, payload bits, StyledConv noise maps, extractor noise, flips) is drawn from
generators seeded by (seed, step, shard), so resuming is exact and W ranks x A micro-batches equal one process
with W*A micro-batches (same samples, same draws, gradients averaged).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from g2face_eval import atomic, settings
from g2face_eval.training import ddp
from g2face_eval.training.data import ShardedBatches, generator, load_train_images
from g2face_eval.training.losses import (
    LossWeights,
    d_logistic,
    g_nonsaturating,
    hiding_bce,
    id_cosine,
    id_diversity,
    make_perceptual,
    r1_penalty,
)

SYNTHESIS_PREFIXES = ("input.", "conv1.", "to_rgb1.", "convs.", "to_rgbs.")


MLFLOW_RUN_FILE = "mlflow_run.json"  # <out>/: the MLflow run id of this training folder (resume continues it)

# Length of one epoch of the official LR schedule, in images. The official G2Face trains on FFHQ, 70,000 images
# (reference manifest ``hyperparameters.data.train``: "FFHQ (sorted listing)"), and steps its warm-up /
# exponential scheduler once per pass over it. Our train split (celebahq256, 3,500 images) is 20x smaller, so
# an epoch of *our* data would decay the lr 20x faster per iteration; the schedule therefore counts official
# epochs: ceil(OFFICIAL_EPOCH_IMAGES / global batch) steps each (the manifest does not record the training
# loader's drop_last; floor instead of ceil would differ by one step per epoch).
OFFICIAL_EPOCH_IMAGES = 70_000

PAYLOADS = ("keyed", "official")

# TrainConfig fields a resume may change (run length, cadence, output, logging, the machine; ``init_generator``
# only initialises weights that the checkpoint replaces). Every other field defines the run - its data order,
# random draws, model, losses or optimiser - and must match the checkpoint (``Trainer.load``).
RESUME_MAY_CHANGE = frozenset({"steps", "ckpt_every", "keep_every", "log_every", "sample_every", "out", "mlflow",
                               "mlflow_uri", "experiment", "device", "data_root", "init_generator"})
# G2Face-mode fields added after checkpoints were written, with the value those checkpoints trained with
LEGACY_G2FACE_DEFAULTS = {"payload": "official"}


@dataclass
class TrainConfig:
    mode: str = "g2face"  # "g2face" | "stylegan" (pre-training of the project's StyleGAN2)
    size: int = 256
    tiny_width: int | None = None  # None: official widths; else G2FaceConfig.tiny(size, width)
    batch: int = 8  # per rank and step (official batch_size_per_gpu 8)
    accum: int = 1  # micro-batches per rank and step
    steps: int = 100000  # official num_iter
    # steps per epoch of the LR schedule (not the data loader's epoch, which is always one pass over the train
    # split); None: the official epoch, ceil(OFFICIAL_EPOCH_IMAGES / global batch)
    steps_per_epoch: int | None = None
    lr: float = 1e-3
    lr_pretrained: float = 1e-4
    lr_d: float = 1e-3
    betas: tuple[float, float] = (0.0, 0.999)
    warmup_epochs: int = 10
    gamma: float = 0.95
    seed: int = settings.DEFAULTS["seed"]
    identity: str = "auto"  # "arcface" (user weights via the zoo) | "sface" (offline) | "auto"
    geometry: str = "mediapipe_lmm"  # | "d3dfr" (user files) | "none"
    perceptual: str = "auto"  # "lpips_vgg" | "effnet" | "auto" | "none"
    init_generator: str | None = None  # stylegan pre-train dir / safetensors / "zoo:stylegan2_ffhq256"
    extractor_noise: float = 0.01
    # random payload bits hidden in training. "keyed" (default): uniform i.i.d. bits, the statistics of the keyed
    # payload (ciphertext + RS parity) that the shipped g2face hides at inference (models/shipped.build and
    # G2FaceAnonymizer default to payload="keyed"; the tiny shipped config cannot even carry the official
    # 32-bit floats of its identity), so the extractor learns the bits it will have to read. "official":
    # float2bit(randn) as the official train.py, whose sign/exponent columns are nearly constant - training on
    # them leaves the extractor biased on exactly those columns of a keyed payload.
    payload: str = "keyed"
    weights: LossWeights = field(default_factory=LossWeights)
    data_root: str | None = None
    limit: int | None = None  # use only the first N train images
    fixed_batch: bool = False  # always the same global batch (overfitting checks)
    flip: bool = True
    out: str = "results/train/g2face"
    ckpt_every: int = 1000
    keep_every: int = 0  # also keep the checkpoint of every multiple of this step as <out>/step_<N> (0: none)
    log_every: int = 50
    sample_every: int = 1000
    mlflow: bool = True
    mlflow_uri: str | None = None
    experiment: str = "g2face-train"
    device: str = settings.DEFAULTS["train_device"]
    amp: str = "auto"  # "bf16" on CUDA when auto, "off" on CPU
    # stylegan pre-training
    sg_style_dim: int | None = None
    sg_n_mlp: int = 8
    sg_lr: float = 2e-3
    sg_r1: float = 10.0

    def __post_init__(self):
        """Reject settings no run can train with (clear errors at construction instead of mid-run ones)."""
        bad = []
        for name in ("batch", "accum", "log_every"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                bad.append(f"{name}={getattr(self, name)!r} (must be an integer >= 1)")
        if self.steps_per_epoch is not None and not (isinstance(self.steps_per_epoch, int)
                                                     and self.steps_per_epoch >= 1):
            bad.append(f"steps_per_epoch={self.steps_per_epoch!r} (must be None or an integer >= 1)")
        for name in ("steps", "ckpt_every", "keep_every"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 0):
                bad.append(f"{name}={getattr(self, name)!r} (must be an integer >= 0)")
        if self.payload not in PAYLOADS:
            bad.append(f"payload={self.payload!r} (must be one of {', '.join(PAYLOADS)})")
        for name in ("limit", "tiny_width"):
            v = getattr(self, name, None)
            if v is not None and not (isinstance(v, int) and v >= 1):
                bad.append(f"{name}={v!r} (must be None or an integer >= 1)")
        for name in ("lr", "lr_pretrained", "lr_d", "gamma"):
            v = getattr(self, name, None)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                bad.append(f"{name}={v!r} (must be > 0)")
        if not (isinstance(self.warmup_epochs, int) and self.warmup_epochs >= 0):
            bad.append(f"warmup_epochs={self.warmup_epochs!r} (must be an integer >= 0)")
        if bad:
            raise ValueError("invalid training config: " + "; ".join(bad))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Rebuild a recorded config; fields a checkpoint predates get the value it trained with."""
        d = dict(d)
        if d.get("mode", "g2face") == "g2face":
            d = {**LEGACY_G2FACE_DEFAULTS, **d}
        d["weights"] = LossWeights(**d.get("weights", {}))
        d["betas"] = tuple(d.get("betas", (0.0, 0.999)))
        return cls(**d)


def schedule_steps_per_epoch(cfg: TrainConfig, world: int = 1) -> int:
    """Steps per epoch of the LR schedule: ``cfg.steps_per_epoch`` when given, else the official epoch,
    ceil(OFFICIAL_EPOCH_IMAGES / global batch) with global batch = batch x accum x world."""
    if cfg.steps_per_epoch is not None:
        return cfg.steps_per_epoch
    return math.ceil(OFFICIAL_EPOCH_IMAGES / (cfg.batch * cfg.accum * world))


def lr_factor_at(step: int, steps_per_epoch: int, warmup: int, gamma: float) -> float:
    """G learning-rate factor of the 0-based ``step`` (``lr_factor`` of schedule epoch step // steps_per_epoch)."""
    return lr_factor(step // steps_per_epoch, warmup, gamma)


def g2face_config(cfg: TrainConfig, id_dim: int):
    from g2face_eval.models.g2face import G2FaceConfig

    if cfg.tiny_width:
        return G2FaceConfig.tiny(cfg.size, cfg.tiny_width, id_dim=id_dim)
    return G2FaceConfig(size=cfg.size, id_dim=id_dim)


def make_identity(name: str) -> nn.Module:
    from g2face_eval.models.identity import get_identity_prior

    if name == "auto":
        try:
            from g2face_eval import zoo

            name = "arcface" if zoo.available("arcface_iresnet50") else "sface"
        except ImportError:
            name = "sface"
    if name == "arcface":
        from g2face_eval import zoo

        return get_identity_prior("arcface", state_dict=zoo.load("arcface_iresnet50"))
    return get_identity_prior(name)


class _NoGeometry(nn.Module):
    """Geometry disabled (ablation/tests): zero coefficients and zero loss."""

    n_cond = 147

    def coefficients(self, x):
        return x.new_zeros(x.shape[0], 150)

    def style_condition(self, c):
        return c[:, :147]

    def geometry_loss(self, a, b, **kw):
        return a.new_zeros(())


def make_geometry(name: str) -> nn.Module:
    if name == "none":
        return _NoGeometry()
    from g2face_eval.models.geometry import load_geometry_prior

    return load_geometry_prior(name)


def lr_factor(epoch: int, warmup: int, gamma: float) -> float:
    """G learning-rate factor of the 0-based training epoch ``epoch``: the official
    GradualWarmupScheduler(multiplier=1, total_epoch=warmup) then ExponentialLR(gamma).

    The official scheduler leaves lr 0 after construction and is stepped once at the start of every epoch, so
    the first training epoch already runs at official epoch 1: training epoch e uses official epoch e + 1, i.e.
    (e + 1) / warmup while e + 1 <= warmup, then gamma ** (e + 1 - warmup) (warm-up 10: 0.1, 0.2, ..., 1.0 for
    epochs 0..9, then 0.95, 0.95^2, ...). No training epoch runs at lr 0. (The reference manifest simulated this
    under torch 2.13 and notes that the original torch 2.1.2 may differ by one epoch at the hand-off.)

    ``warmup <= 0`` (no warm-up): gamma ** e, i.e. full lr in the first epoch and x gamma per epoch after it
    (the schedule the shipped checkpoint was trained with, ``--warmup-epochs 0``)."""
    if warmup <= 0:
        return gamma ** epoch
    e = epoch + 1
    if e <= warmup:
        return e / warmup
    return gamma ** (e - warmup)


# ----------------------------------------------------------------------------------------------- trainer
class Trainer:
    def __init__(self, cfg: TrainConfig, info: ddp.DistInfo | None = None, images: torch.Tensor | None = None,
                 log=print):
        self.cfg, self.log = cfg, log
        self.info = info or ddp.DistInfo()
        self.dev = self.info.device
        torch.manual_seed(cfg.seed)  # parameter init (then broadcast from rank 0)
        self.amp = (cfg.amp == "bf16") or (cfg.amp == "auto" and self.dev.type == "cuda")
        imgs = images if images is not None else load_train_images(cfg.size, cfg.data_root, cfg.limit,
                                                                    log=log)
        self.global_batch = cfg.batch * cfg.accum * self.info.world
        self.data = ShardedBatches(imgs, self.global_batch, cfg.seed, flip=cfg.flip, fixed=cfg.fixed_batch)
        # two separate epochs: the data loader's (one pass over the train split, then reshuffle; ``_data_pos``)
        # and the LR schedule's (the official epoch length unless cfg.steps_per_epoch; ``_set_epoch_lr``)
        self.data_spe = self.data.steps_per_epoch
        self.sched_spe = schedule_steps_per_epoch(cfg, self.info.world)
        self.step = 0
        if cfg.mode == "g2face":
            self._build_g2face()
        elif cfg.mode == "stylegan":
            self._build_stylegan()
        else:
            raise ValueError(f"unknown mode {cfg.mode!r}")
        for m in self.trainable_modules():
            ddp.broadcast_module(m, self.info)
        self._mlflow = None

    def resolved(self) -> dict:
        """How this run resolved its settings (recorded in checkpoints and MLflow params, checked on resume)."""
        # a subclass with its own __init__ (baselines/learned/base.py) walks data and schedule by one ``spe``
        coupled = getattr(self, "spe", None)
        sched = getattr(self, "sched_spe", coupled)
        nets = ({"identity_net": getattr(self.idp, "name", type(self.idp).__name__), "id_dim": int(self.idp.dim),
                 "perceptual_net": self.perc_name} if hasattr(self, "idp") else {})   # "auto" as resolved
        return {**nets, "world_size": self.info.world, "global_batch": self.global_batch,
                "n_train_images": len(self.data.images), "data_steps_per_epoch": getattr(self, "data_spe", coupled),
                "sched_steps_per_epoch": sched, "amp_dtype": "bfloat16" if self.amp else "float32",
                "lr_factor_final": (lr_factor_at(max(self.cfg.steps - 1, 0), sched, self.cfg.warmup_epochs,
                                                 self.cfg.gamma) if self.cfg.mode != "stylegan" else 1.0)}

    def _data_pos(self, step: int) -> tuple[int, int]:
        """(data epoch, step in it) of a global step: the loader reshuffles after each full pass."""
        return divmod(step, self.data_spe)

    # ---------------------------------------------------------------- build
    def _build_g2face(self):
        from g2face_eval.models.g2face import G2Face

        cfg = self.cfg
        self.idp = make_identity(cfg.identity).to(self.dev).eval().requires_grad_(False)
        self.geo = make_geometry(cfg.geometry).to(self.dev).eval().requires_grad_(False)
        self.perc = make_perceptual(cfg.perceptual).to(self.dev)
        self.perc_name = getattr(self.perc, "name", type(self.perc).__name__)
        self.gcfg = g2face_config(cfg, int(self.idp.dim))
        self.model = G2Face(self.gcfg).to(self.dev)
        if cfg.init_generator:
            self._init_generator(cfg.init_generator)
        else:
            self.log("[train] note: the synthesis network starts from random weights (no --init-generator); the "
                     "official code fine-tunes StyleGAN2-FFHQ-256 (--init-generator zoo:stylegan2_ffhq256, a user "
                     "file) at the pretrained lr, or use a --pretrain-stylegan run of this project")
        net = self.model.anonymous_net
        pre, new = [], []
        for n, p in net.named_parameters():
            (pre if n.startswith(SYNTHESIS_PREFIXES) else new).append(p)
        new += list(self.model.style_mlp.parameters()) + list(self.model.map_2_id.parameters())
        new += list(self.model.hiding_extractor.parameters())
        self.g_params = new + pre
        self.opt_g = torch.optim.Adam([{"params": new, "lr": cfg.lr},
                                       {"params": pre, "lr": cfg.lr_pretrained}], betas=cfg.betas)
        self.d_params = list(self.model.discriminator.parameters())
        self.opt_d = torch.optim.Adam(self.d_params, lr=cfg.lr_d, betas=cfg.betas)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt_g, lambda e: lr_factor(e, cfg.warmup_epochs, cfg.gamma))
        if self.info.is_main:
            r = self.resolved()
            src = ("--steps-per-epoch" if cfg.steps_per_epoch is not None
                   else f"official epoch: ceil({OFFICIAL_EPOCH_IMAGES} / {self.global_batch})")
            self.log(f"[train] g2face {self.gcfg.to_dict()}; identity={type(self.idp).__name__} "
                     f"geometry={type(self.geo).__name__} perceptual={self.perc_name} payload={cfg.payload}; "
                     f"global batch {self.global_batch} ({self.info.world} rank(s) x {cfg.accum} x {cfg.batch}), "
                     f"device {self.dev}, amp={r['amp_dtype']}")
            self.log(f"[train] lr schedule: {self.sched_spe} steps/epoch ({src}), warm-up {cfg.warmup_epochs} "
                     f"epoch(s), gamma {cfg.gamma}: G lr factor {r['lr_factor_final']:.4g} at the final step "
                     f"{cfg.steps}; data: {r['n_train_images']} images, reshuffled every {self.data_spe} steps")

    def _build_stylegan(self):
        from g2face_eval.models.stylegan2 import Discriminator, Generator

        cfg = self.cfg
        width = cfg.tiny_width or 512
        style_dim = cfg.sg_style_dim or (32 if cfg.tiny_width else 512)
        self.gen = Generator(cfg.size, style_dim, n_mlp=cfg.sg_n_mlp, channel_base=width).to(self.dev)
        self.disc = Discriminator(cfg.size, 2, width).to(self.dev)
        self.g_params = list(self.gen.parameters())
        self.d_params = list(self.disc.parameters())
        self.opt_g = torch.optim.Adam(self.g_params, lr=cfg.sg_lr, betas=(0.0, 0.99))
        self.opt_d = torch.optim.Adam(self.d_params, lr=cfg.sg_lr, betas=(0.0, 0.99))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt_g, lambda e: 1.0)
        self.perc_name = "none"
        if self.info.is_main:
            self.log(f"[train] stylegan2 pre-training: size {cfg.size}, channel_base {width}, style_dim "
                     f"{style_dim}, global batch {self.global_batch}, constant lr, data reshuffled every "
                     f"{self.data_spe} steps, device {self.dev}, amp={self.resolved()['amp_dtype']}")

    def trainable_modules(self) -> list[nn.Module]:
        return [self.model] if self.cfg.mode == "g2face" else [self.gen, self.disc]

    def _init_generator(self, src: str):
        """Copy StyleGAN2 synthesis weights (input, conv1, to_rgb1, convs, to_rgbs) into anonymous_net."""
        sd = load_generator_state(src)
        net = self.model.anonymous_net
        own = net.state_dict()
        take = {k: v for k, v in sd.items() if k.startswith(SYNTHESIS_PREFIXES)}
        bad = [k for k, v in take.items() if k not in own or own[k].shape != v.shape]
        if bad or not take:
            raise ValueError(f"--init-generator {src}: {len(bad)} synthesis tensors do not match the G2Face "
                             f"config (e.g. {bad[:3]}); pre-train with the same --size/--tiny")
        own.update(take)
        net.load_state_dict(own)
        if self.info.is_main:
            self.log(f"[train] initialised {len(take)} synthesis tensors of anonymous_net from {src}")

    # ---------------------------------------------------------------- randomness
    def _payload_bits(self, b: int, g: torch.Generator) -> torch.Tensor:
        """(b, n_bits/32, 32) random payload bits of ``cfg.payload`` from the step's generator ``g``."""
        from g2face_eval.models.payload import float2bit, uniform_bits

        gc = self.gcfg
        if self.cfg.payload == "keyed":
            return uniform_bits(b, gc.n_bits, generator=g).reshape(b, *gc.bits_shape)
        return float2bit(torch.randn(b, gc.n_bits // 32, generator=g))

    def _draws(self, step: int, shard: int, b: int) -> dict:
        g = generator(self.cfg.seed, 21, step, shard)
        d: dict = {}
        if self.cfg.mode == "g2face":
            gc = self.gcfg
            d["z"] = torch.randn(b, gc.z_dim, generator=g)
            d["bits_a"] = self._payload_bits(b, g)
            d["bits_r"] = self._payload_bits(b, g)
            shapes = self.model.noise_shapes()
            d["noise_a"] = [torch.randn(b, 1, h, w, generator=g) for h, w in shapes]
            d["noise_r"] = [torch.randn(b, 1, h, w, generator=g) for h, w in shapes]
            d["ext_noise"] = torch.randn(b, 3, gc.size, gc.size, generator=g) * self.cfg.extractor_noise
        else:
            d["z"] = torch.randn(b, self.gen.style_dim, generator=g)
            d["noise"] = [torch.randn(b, 1, h, w, generator=g) for h, w in self.gen.noise_shapes()]
        return {k: ([t.to(self.dev) for t in v] if isinstance(v, list) else v.to(self.dev))
                for k, v in d.items()}

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext()

    # ---------------------------------------------------------------- one step
    def train_step(self) -> dict[str, float]:
        step = self.step
        self._set_epoch_lr(step // self.sched_spe)
        data_epoch, data_step = self._data_pos(step)
        shards = self.info.world * self.cfg.accum
        if self.cfg.mode == "g2face":
            logs = self._g2face_step(step, data_epoch, data_step, shards)
        else:
            logs = self._stylegan_step(step, data_epoch, data_step, shards)
        self.step += 1
        logs["lr_g"] = self.opt_g.param_groups[0]["lr"]
        return ddp.all_mean(logs, self.info)

    def _set_epoch_lr(self, epoch: int):
        if self.sched.last_epoch != epoch:
            for g, base in zip(self.opt_g.param_groups, self.sched.base_lrs, strict=True):
                g["lr"] = base * self.sched.lr_lambdas[0](epoch)
            self.sched.last_epoch = epoch

    def _g2face_step(self, step, data_epoch, data_step, shards) -> dict[str, float]:
        cfg, w, m = self.cfg, self.cfg.weights, self.model
        acc = cfg.accum
        m.discriminator.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        logs: dict[str, float] = {}
        keep = []
        for a in range(acc):
            shard = self.info.rank * acc + a
            x = self.data.batch(data_epoch, data_step, shard, shards).to(self.dev)
            r = self._draws(step, shard, x.shape[0])
            with self._autocast():
                parts, y, x_rec = self._g2face_losses(x, r)
                total = sum(parts.values())
            (total / acc).backward()
            for k, v in parts.items():
                logs[k] = logs.get(k, 0.0) + float(v.detach()) / acc
            for k, v in self._bit_acc.items():
                logs[k] = logs.get(k, 0.0) + v / acc
            logs["g_total"] = logs.get("g_total", 0.0) + float(total.detach()) / acc
            keep.append((x, y.detach(), x_rec.detach()))
        ddp.average_gradients(self.g_params, self.info)
        self.opt_g.step()
        # discriminator
        m.discriminator.requires_grad_(True)
        self.opt_d.zero_grad(set_to_none=True)
        for x, y, x_rec in keep:
            fake = x_rec if step % 2 == 0 else y
            with self._autocast():
                dl = d_logistic(m.discriminator(x), m.discriminator(fake))
            (dl / acc).backward()
            logs["d_loss"] = logs.get("d_loss", 0.0) + float(dl.detach()) / acc
            if w.r1 > 0 and step % w.r1_every == 0:
                r1 = r1_penalty(m.discriminator, x)
                (w.r1 * r1 / acc).backward()
                logs["r1"] = logs.get("r1", 0.0) + float(r1.detach()) / acc
        ddp.average_gradients(self.d_params, self.info)
        self.opt_d.step()
        self._last = keep[0]
        return logs

    def _g2face_losses(self, x, r):
        w, m, geo, idp = self.cfg.weights, self.model, self.geo, self.idp
        with torch.no_grad():
            c_x = geo.coefficients(x)
            id_x = idp(x)
        rand_id = m.map_2_id(r["z"])
        y = m.anonymous_net(x, m.style_mlp(rand_id, geo.style_condition(c_x)), r["bits_a"], r["noise_a"])
        logits_a = m.hiding_extractor(y + r["ext_noise"])
        id_y = idp(y)
        c_y = geo.coefficients(y)
        x_rec = m.anonymous_net(y.detach(), m.style_mlp(id_x, geo.style_condition(c_y.detach())), r["bits_r"],
                                r["noise_r"])
        logits_r = m.hiding_extractor(x_rec + r["ext_noise"])
        id_rec = idp(x_rec)
        c_rec = geo.coefficients(x_rec)
        p: dict[str, torch.Tensor] = {}
        p["l1"] = w.l1 * ((y.float() - x).abs().mean() + (x_rec.float() - x).abs().mean())
        if w.perceptual:
            p["perceptual"] = w.perceptual * (self.perc(y, x) + self.perc(x_rec, x))
        p["id"] = w.id * (id_cosine(rand_id, id_y, 1) + id_cosine(id_x, id_rec, 1)
                          + id_cosine(id_x, id_y, -1))
        p["id_diversity"] = w.id_diversity * id_diversity(rand_id)
        p["geometry"] = (geo.geometry_loss(c_y.float(), c_x.float(), w_shape=w.geometry_shape,
                                           w_landmark=w.geometry_landmark)
                         + geo.geometry_loss(c_rec.float(), c_x.float(), w_shape=w.geometry_shape,
                                             w_landmark=w.geometry_landmark))
        p["hiding"] = w.hiding * (hiding_bce(logits_a, r["bits_a"]) + hiding_bce(logits_r, r["bits_r"]))
        p["adv"] = w.adversarial * (g_nonsaturating(m.discriminator(y))
                                    + g_nonsaturating(m.discriminator(x_rec)))
        with torch.no_grad():  # hard-decision bit accuracy of the extractor on y (anonymised) and x_rec (recovery)
            self._bit_acc = {"bit_acc": float(((logits_a.float() > 0).float() == r["bits_a"]).float().mean()),
                             "bit_acc_rec": float(((logits_r.float() > 0).float() == r["bits_r"]).float().mean())}
        return p, y, x_rec

    def _stylegan_step(self, step, data_epoch, data_step, shards) -> dict[str, float]:
        cfg, acc = self.cfg, self.cfg.accum
        logs: dict[str, float] = {}
        keep = []
        self.disc.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        for a in range(acc):
            shard = self.info.rank * acc + a
            x = self.data.batch(data_epoch, data_step, shard, shards).to(self.dev)
            r = self._draws(step, shard, x.shape[0])
            with self._autocast():
                fake = self.gen(r["z"], noise=r["noise"])
                gl = g_nonsaturating(self.disc(fake))
            (gl / acc).backward()
            logs["g_adv"] = logs.get("g_adv", 0.0) + float(gl.detach()) / acc
            keep.append((x, fake.detach()))
        ddp.average_gradients(self.g_params, self.info)
        self.opt_g.step()
        self.disc.requires_grad_(True)
        self.opt_d.zero_grad(set_to_none=True)
        for x, fake in keep:
            with self._autocast():
                dl = d_logistic(self.disc(x), self.disc(fake))
            (dl / acc).backward()
            logs["d_loss"] = logs.get("d_loss", 0.0) + float(dl.detach()) / acc
            if cfg.sg_r1 > 0 and step % 16 == 0:  # lazy R1 (rosinality: r1/2 * interval)
                r1 = r1_penalty(self.disc, x)
                (cfg.sg_r1 / 2 * 16 * r1 / acc).backward()
                logs["r1"] = logs.get("r1", 0.0) + float(r1.detach()) / acc
        ddp.average_gradients(self.d_params, self.info)
        self.opt_d.step()
        self._last = (keep[0][0], keep[0][1], keep[0][1])
        return logs

    # ---------------------------------------------------------------- checkpoints
    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.cfg.mode == "g2face":
            sd = self.model.state_dict()
        else:
            sd = {f"generator.{k}": v for k, v in self.gen.state_dict().items()}
            sd.update({f"discriminator.{k}": v for k, v in self.disc.state_dict().items()})
        return {k: v.detach().contiguous().cpu() for k, v in sd.items()}

    def save(self, path: str | Path) -> Path:
        """Checkpoint dir: model.safetensors (all weights; metadata: step, mode, config, ``run`` = ``resolved()``,
        payload) + train_state.pt (optimisers, scheduler, step, RNG states, config; load with weights_only=True)
        + config.json. Written atomically (tmp dir + rename)."""
        from safetensors.torch import save_file

        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        resolved = self.resolved()
        meta = {"step": str(self.step), "mode": self.cfg.mode, "config": json.dumps(self.cfg.to_dict()),
                "run": json.dumps(resolved)}
        if self.cfg.mode == "g2face":
            meta["g2face_config"] = json.dumps(self.gcfg.to_dict())
            meta["payload"] = self.cfg.payload  # the training payload bits (TrainConfig.payload)
        np_state = np.random.get_state()
        state = {
            "step": self.step,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "sched": self.sched.state_dict(),
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "rng_numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                          *map(float, np_state[2:])],
            "rng_python": json.dumps(random.getstate()),
            "config": json.dumps(self.cfg.to_dict()),
        }
        torch.save(state, tmp / "train_state.pt")
        from g2face_eval import zoo

        meta["train_state_sha256"] = zoo.sha256_file(tmp / "train_state.pt")  # verified by ``load``
        meta["environment"] = json.dumps(self._provenance())
        save_file(self.state_tensors(), str(tmp / "model.safetensors"), metadata=meta)
        zoo.write_record(tmp / "model.safetensors")                              # sha256 record beside it
        (tmp / "config.json").write_text(json.dumps({"step": self.step, **self.cfg.to_dict(), "resolved": resolved},
                                                    indent=1))
        for f in tmp.iterdir():  # durable before the swap: a checkpoint marks work as done
            os.chmod(f, 0o644)
            atomic.fsync_file(f)
        # swap without a window where no complete checkpoint exists: old -> <name>.old, tmp -> name, drop old
        old = path.with_name(path.name + ".old")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
        from g2face_eval import crashpoints

        crashpoints.hit("ckpt_swap")
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
        atomic.fsync_dir(path.parent)  # the rename itself
        return path

    def _provenance(self) -> dict:
        """Code and software of this run (recorded in checkpoints and MLflow tags), as the harness records them."""
        from g2face_eval.harness.tracking import environment_info, software

        env = environment_info()
        sw = software(env)
        return {"git_hash": env.get("git_hash"), "git_dirty": env.get("git_dirty"), "torch": sw["torch"],
                "python": sw["python"], "device": str(self.dev),
                "device_name": torch.cuda.get_device_name(self.dev) if self.dev.type == "cuda" else None}

    def check_resumable(self, path: str | Path) -> None:
        """Raise ValueError when the checkpoint at ``path`` was trained with other run-defining settings than
        this trainer's (every TrainConfig field but ``RESUME_MAY_CHANGE``; the schedule's resolved steps per
        epoch; the number of training images; world size x accum, whose split may change since W ranks x A
        micro-batches equal one process with W*A micro-batches). Checkpoints written before a field existed
        count as trained with its legacy value (``LEGACY_G2FACE_DEFAULTS``)."""
        from safetensors import safe_open

        with safe_open(str(Path(path) / "model.safetensors"), "pt") as f:
            meta = dict(f.metadata() or {})
        saved = json.loads(meta.get("config", "{}"))
        run = json.loads(meta.get("run", "{}"))  # absent: written before run facts were recorded
        now, cur = json.loads(json.dumps(self.cfg.to_dict())), self.resolved()  # JSON types, as saved
        legacy = LEGACY_G2FACE_DEFAULTS if saved.get("mode", "g2face") == "g2face" else {}
        diffs = []
        for k, v in now.items():
            if k in RESUME_MAY_CHANGE or k in ("steps_per_epoch", "accum"):
                continue
            old = saved.get(k, legacy.get(k, v))
            if old != v:
                note = "" if k in saved else ", the checkpoint predates this option"
                diffs.append(f"{k} ({old!r} in the checkpoint, {v!r} now{note})")
        old_accum = saved.get("accum", now["accum"])
        if "world_size" in run:
            if run["world_size"] * old_accum != self.info.world * now["accum"]:
                diffs.append(f"world_size x accum ({run['world_size']} x {old_accum} in the checkpoint, "
                             f"{self.info.world} x {now['accum']} now)")
        elif old_accum != now["accum"]:
            diffs.append(f"accum ({old_accum!r} in the checkpoint, {now['accum']!r} now)")
        for k in ("identity_net", "id_dim", "perceptual_net"):   # an "auto" that resolves otherwise now (a user
            if k in run and k in cur and run[k] != cur[k]:       # file added or removed since)
                diffs.append(f"{k} ({run[k]!r} in the checkpoint, {cur[k]!r} now: 'auto' resolves differently; "
                             "name it explicitly)")
        if "n_train_images" in run and run["n_train_images"] != cur["n_train_images"]:
            diffs.append(f"training images ({run['n_train_images']} in the checkpoint, {cur['n_train_images']} "
                         "now)")
        if now["mode"] != "stylegan":  # the stylegan pre-training's lr is constant
            old_sched = run.get("sched_steps_per_epoch")
            if old_sched is None:  # legacy checkpoint: steps_per_epoch or one pass over the train split
                old_sched = saved.get("steps_per_epoch") or cur["n_train_images"] // cur["global_batch"]
            if old_sched != cur["sched_steps_per_epoch"]:
                diffs.append(f"steps_per_epoch of the lr schedule ({old_sched} in the checkpoint, "
                             f"{cur['sched_steps_per_epoch']} now; pass --steps-per-epoch {old_sched} to continue "
                             "its schedule)")
        if diffs:
            raise ValueError(f"cannot resume from {path}: it was trained with other run-defining settings: "
                             f"{'; '.join(diffs)}. Resume with the checkpoint's settings (only "
                             f"{', '.join(sorted(RESUME_MAY_CHANGE))} may change) or start a new run.")
        if self.info.is_main:
            old_data = run.get("data_steps_per_epoch") or saved.get("steps_per_epoch") or cur["data_steps_per_epoch"]
            if hasattr(self, "data_spe") and old_data != self.data_spe:  # legacy: data epoch = schedule epoch
                self.log(f"[train] note: {path} predates the separate data epoch (its data was reshuffled every "
                         f"{old_data} steps); from here on every {self.data_spe} steps, full passes over the "
                         "train split: the data order differs from what the old code would have drawn")
            if run.get("amp_dtype", cur["amp_dtype"]) != cur["amp_dtype"]:
                self.log(f"[train] note: {path} trained in {run['amp_dtype']}, continuing in {cur['amp_dtype']}")

    def load(self, path: str | Path) -> None:
        """Resume from a ``save`` dir (after ``check_resumable``): weights, optimisers, scheduler, step, RNGs."""
        from safetensors.torch import load_file

        path = Path(path)
        verify_checkpoint(path, self.log)
        self.check_resumable(path)
        sd = load_file(str(path / "model.safetensors"), device=str(self.dev))
        if self.cfg.mode == "g2face":
            self.model.load_state_dict(sd)
        else:
            self.gen.load_state_dict({k[10:]: v for k, v in sd.items() if k.startswith("generator.")})
            self.disc.load_state_dict({k[14:]: v for k, v in sd.items() if k.startswith("discriminator.")})
        st = torch.load(path / "train_state.pt", map_location="cpu", weights_only=True)
        self.opt_g.load_state_dict(st["opt_g"])
        self.opt_d.load_state_dict(st["opt_d"])
        self.sched.load_state_dict(st["sched"])
        self.step = int(st["step"])
        torch.set_rng_state(st["rng_torch"])
        if torch.cuda.is_available() and st["rng_cuda"]:
            torch.cuda.set_rng_state_all(st["rng_cuda"])
        n = st["rng_numpy"]
        np.random.set_state((n[0], n[1].numpy().astype(np.uint32), int(n[2]), int(n[3]), float(n[4])))
        py = json.loads(st["rng_python"])
        random.setstate((py[0], tuple(py[1]), py[2]))

    # ---------------------------------------------------------------- logging
    def _mlflow_start(self):
        if not (self.cfg.mlflow and self.info.is_main) or self._mlflow is not None:
            return
        import mlflow

        from g2face_eval import settings

        uri = self.cfg.mlflow_uri or f"sqlite:///{(settings.results_dir() / 'mlflow.db').resolve()}"
        if uri.startswith("sqlite:///"):  # same layout as the harness: artifacts in <db dir>/mlartifacts
            db = Path(uri[len("sqlite:///"):])
            db.parent.mkdir(parents=True, exist_ok=True)
            art = (db.parent / "mlartifacts").resolve()
        else:
            art = None
        mlflow.set_tracking_uri(uri)
        if mlflow.get_experiment_by_name(self.cfg.experiment) is None:
            mlflow.create_experiment(self.cfg.experiment, artifact_location=art.as_uri() if art else None)
        exp = mlflow.set_experiment(self.cfg.experiment)
        # continue an unfinished MLflow run only when the training resumed from a checkpoint: a run started again
        # from step 0 would log its steps a second time into it
        run_id = self._mlflow_run_to_resume(mlflow, exp.experiment_id) if self.step > 0 else None
        if run_id is not None:  # a killed or preempted run of this output folder: continue it, same run
            run = mlflow.start_run(run_id=run_id)
        else:
            prov = self._provenance()
            tags = {"g2face.train_out": self._out_tag(), **{f"g2face.{k}": str(v) for k, v in prov.items()}}
            if prov.get("git_hash"):
                tags["mlflow.source.git.commit"] = prov["git_hash"]
            run = mlflow.start_run(run_name=f"{self.cfg.mode}-{self.cfg.size}px-step{self.step}", tags=tags)
            atomic.write_json(Path(self.cfg.out) / MLFLOW_RUN_FILE, {"run_id": run.info.run_id, "uri": uri})
            flat = {k: v for k, v in self.cfg.to_dict().items() if k != "weights"}
            flat.update({f"w_{k}": v for k, v in self.cfg.weights.to_dict().items()})
            flat.update({"perceptual_loss": self.perc_name, **self.resolved()})
            mlflow.log_params({k: str(v)[:250] for k, v in flat.items()})
        self._mlflow = (mlflow, run)

    def _out_tag(self) -> str:
        return str(Path(self.cfg.out).expanduser().resolve())

    def _mlflow_run_to_resume(self, mlflow, experiment_id: str) -> str | None:
        """The MLflow run of an earlier, unfinished invocation with this output folder: the id recorded in
        ``<out>/mlflow_run.json``, or (killed between creating the run and recording it) a RUNNING run tagged
        with this folder. None when there is none or it already FINISHED."""
        client = mlflow.MlflowClient()
        f = Path(self.cfg.out) / MLFLOW_RUN_FILE
        if f.is_file():
            try:
                r = client.get_run(json.loads(f.read_text())["run_id"])
                if r.info.status != "FINISHED" and r.info.experiment_id == experiment_id:
                    return r.info.run_id
            except Exception:  # noqa: BLE001 - unreadable file or run deleted: start a new run
                pass
            return None
        tag = self._out_tag().replace("'", "\\'")
        query = f"tags.`g2face.train_out` = '{tag}' and attributes.status = 'RUNNING'"
        found = client.search_runs([experiment_id], query, max_results=1)
        return found[0].info.run_id if found else None

    def _mlflow_end(self, status: str) -> None:
        if self._mlflow is not None:
            self._mlflow[0].end_run(status=status)
            self._mlflow = None

    def _log_samples(self):
        if self._mlflow is None:
            return
        import torchvision

        x, y, x_rec = (t[:8].float().clamp(-1, 1).cpu() * 0.5 + 0.5 for t in self._last)
        grid = torchvision.utils.make_grid(torch.cat([x, y, x_rec]), nrow=len(x))
        arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        self._mlflow[0].log_image(arr, f"samples/step_{self.step:08d}.png")

    def fit(self, steps: int | None = None, ckpt_dir: str | Path | None = None) -> list[dict[str, float]]:
        """Train until ``self.step == steps`` (default cfg.steps); returns the per-step logs."""
        steps = self.cfg.steps if steps is None else steps
        coupled = getattr(self, "spe", None)  # a subclass that indexes the data by schedule epochs (see resolved)
        if coupled is not None and not self.cfg.fixed_batch and coupled > self.data.steps_per_epoch:
            raise ValueError(f"steps_per_epoch {coupled} > the {self.data.steps_per_epoch} global batches of "
                             f"{self.global_batch} in {len(self.data.images)} training images")
        ckpt_dir = Path(ckpt_dir or self.cfg.out)
        self._mlflow_start()
        history = []
        t0 = time.time()
        try:
            self._fit_loop(steps, ckpt_dir, history, t0)
        except (KeyboardInterrupt, SystemExit):  # SIGINT / SIGTERM (preemption): the run ends as KILLED
            self._mlflow_end("KILLED")
            raise
        except BaseException:
            self._mlflow_end("FAILED")
            raise
        self._mlflow_end("FINISHED")
        return history

    def _fit_loop(self, steps: int, ckpt_dir: Path, history: list, t0: float) -> None:
        from g2face_eval import crashpoints

        first = self.step
        while self.step < steps:
            logs = self.train_step()
            history.append(logs)
            crashpoints.hit("train_step")
            s = self.step
            if self.info.is_main:
                if s % self.cfg.log_every == 0 or s == steps or s == first + 1:   # the first step too: a sign of life
                    msg = " ".join(f"{k} {v:.4f}" for k, v in sorted(logs.items()))
                    el = time.time() - t0
                    rate = (s - first) / el if el > 0 else float("nan")
                    eta = (steps - s) / rate if rate > 0 else float("nan")
                    self.log(f"[train] step {s}/{steps} {msg} ({el:.1f}s, {rate * 60:.2f} steps/min, "
                             f"ETA {eta / 60:.1f} min)")
                    if self._mlflow:
                        self._mlflow[0].log_metrics({k: v for k, v in logs.items() if math.isfinite(v)},
                                                    step=s)
                if self._mlflow and (s % self.cfg.sample_every == 0 or s == steps):
                    self._log_samples()
            # every ckpt_every steps (0: never in between) and always at the last step of the run; a step that
            # is a multiple of keep_every is also kept as step_<N> (the hiding accuracy is not monotone in the
            # step, so a release is picked among kept snapshots on held-out faces: the shipped model card).
            # step_<N> is written before last: a run stopped in between resumes from the previous last and
            # writes step_<N> again when it gets there
            keep = bool(self.cfg.keep_every) and s % self.cfg.keep_every == 0
            if s == steps or keep or (self.cfg.ckpt_every and s % self.cfg.ckpt_every == 0):
                if self.info.is_main:
                    if keep:
                        self.save(ckpt_dir / f"step_{s}")
                    self.save(ckpt_dir / "last")
                ddp.barrier(self.info)


def _checkpoint_step(path: Path) -> int | None:
    try:
        return int(json.loads((path / "config.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class TrainSetupError(ValueError):
    """A training that cannot start: a bad setting, missing data or weights, a refused resume, a checkpoint in
    the way (the CLIs print it in one line and exit 2)."""


def verify_checkpoint(path: str | Path, log=print) -> None:
    """A training checkpoint dir against its sha256s: ``model.safetensors`` against its sibling record and
    ``train_state.pt`` against the digest in the weights' metadata (both written by ``Trainer.save``). A mismatch
    raises ``zoo.WeightIntegrityError``; a checkpoint written before checkpoints were recorded (no record) is
    loaded with a warning."""
    from safetensors import safe_open

    from g2face_eval import zoo

    path = Path(path)
    model = path / "model.safetensors"
    if zoo.recorded_sha256(model) is None:
        log(f"[train] WARNING: {model} has no sha256 record (a checkpoint from before records were written): "
            "it is loaded unverified")
        return
    zoo.verify_recorded(model, name=f"checkpoint {path}")
    with safe_open(str(model), "pt") as f:
        want = (f.metadata() or {}).get("train_state_sha256")
    state = path / "train_state.pt"
    if want and state.exists() and (got := zoo.sha256_file(state)) != want:
        raise zoo.WeightIntegrityError(f"checkpoint {path}", state, want, got)


def load_generator_state(src: str) -> dict[str, torch.Tensor]:
    """Synthesis weights from a stylegan pre-training checkpoint (dir or model.safetensors: ``generator.*``),
    a plain generator state dict, or ``zoo:stylegan2_ffhq256`` (rosinality checkpoint, ``g_ema``)."""
    if src.startswith("zoo:"):
        from g2face_eval import zoo

        sd = zoo.load(src[4:])
        sd = sd.get("g_ema", sd) if isinstance(sd, dict) else sd
        return {k: v for k, v in sd.items() if not k.startswith("noises.")}
    p = Path(src)
    verified = p.is_dir()
    if verified:
        verify_checkpoint(p)
        p = p / "model.safetensors"
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        from g2face_eval import zoo

        if not verified and zoo.recorded_sha256(p) is not None:
            zoo.verify_recorded(p)
        sd = load_file(str(p))
    else:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    if any(k.startswith("generator.") for k in sd):
        sd = {k[len("generator."):]: v for k, v in sd.items() if k.startswith("generator.")}
    return sd


def run(cfg: TrainConfig, resume: str | None = None, log=print, trainer_cls: type[Trainer] | None = None) -> Trainer:
    """Entry used by the CLIs (one process or a torchrun rank): build ``trainer_cls`` (default ``Trainer``; the
    learned baselines pass theirs), optionally resume (``auto`` = ``<out>/last``), train."""
    last = Path(cfg.out) / "last"
    kept = sorted(Path(cfg.out).glob("step_*")) if Path(cfg.out).is_dir() else []
    if not resume and (last.exists() or last.with_name("last.old").is_dir() or kept):
        raise TrainSetupError(f"{cfg.out} already holds a checkpoint ({last if not kept or last.exists() else kept[0]})"
                              ": pass --resume auto to continue it, or another --out for a new run (it would be "
                              "overwritten)")
    from g2face_eval.zoo import WeightError

    info = ddp.init(cfg.device)
    try:
        try:  # building the trainer and resuming: a bad setting, missing data or weights, a refused resume
            tr = (trainer_cls or Trainer)(cfg, info, log=log if info.is_main else (lambda *_: None))
            if resume:
                rp = last if resume == "auto" else Path(resume)
                if not rp.exists() and rp.with_name(rp.name + ".old").is_dir():
                    rp = rp.with_name(rp.name + ".old")  # killed mid-swap: the previous complete checkpoint
                if rp.exists():
                    tr.load(rp)
                    later = _checkpoint_step(last) if rp.resolve() != last.resolve() else None
                    if later is not None and later > tr.step:
                        raise ValueError(f"--resume {rp} (step {tr.step}) into {cfg.out}, whose last checkpoint is at "
                                         f"step {later}: continuing would overwrite it and the later kept steps; "
                                         "pass another --out")
                    if info.is_main:
                        log(f"[train] resumed from {rp} at step {tr.step}")
                elif resume != "auto":
                    raise FileNotFoundError(f"--resume {rp}: no checkpoint there")
                elif kept:  # auto would start from step 0 and rewrite the kept steps
                    raise FileNotFoundError(f"--resume auto: {cfg.out} has no last checkpoint but holds kept steps "
                                            f"({', '.join(p.name for p in kept)}): resume one of them with --resume "
                                            "<dir> into another --out")
        except (ValueError, OSError, WeightError) as e:
            raise TrainSetupError(str(e)) from e
        tr.fit()
        ddp.cleanup(sync=True)
        return tr
    finally:
        ddp.cleanup()


os.environ.setdefault("GLOG_minloglevel", "2")
