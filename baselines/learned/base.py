"""Shared scaffold of the learned baselines (FIT-style, inpainting, RiDDLE-style): contract, trainer, export.

Contract (what a baseline module ``baselines/learned/<name>.py`` provides)
-------------------------------------------------------------------------
1. A ``LearnedBaseline`` subclass (an ``nn.Module``) with

   * ``name`` (class attribute, = the method name and the training ``mode``) and ``reversible``;
   * ``__init__(**model_config)`` taking only JSON-serialisable keyword arguments; ``model_config()`` returns
     them (stored in every checkpoint's metadata, used to rebuild the module at load time);
   * ``self.generator: nn.Module`` — every trainable generator parameter (this is what gets exported);
   * ``self.discriminator: nn.Module | None`` — trained with the logistic loss + R1 by the trainer; the
     discriminator is called through ``discriminate(images_m11, batch)`` (override it for a conditional D);
   * ``training_losses(batch: Batch, step) -> dict[str, Tensor]``: generator losses, already weighted, with a
     ``"total"`` key (the one that is back-propagated; the others are logged). It may stash detached tensors
     on ``batch`` for the discriminator phase (``batch.fakes``: list of generated [-1,1] images) and for the
     sample grids (``batch.samples = (x, y, x_rec)``, all [-1,1]);
   * ``discriminator_losses(batch, step) -> dict[str, Tensor]`` (default: logistic loss of ``discriminate``
     on ``batch.x`` vs ``batch.fakes[step % len(fakes)]``; "total" key) — R1 (``training/losses.r1_penalty``,
     weight ``cfg.weights.r1`` every ``cfg.weights.r1_every`` steps) is added by the trainer;
   * ``anonymizer(device="cpu") -> Anonymizer`` at the network's own size (``input_size = cfg size``); the
     method registered for the harness wraps it in ``Resized`` (area down / bicubic up, 256 px in the harness).

   Images are [-1,1] RGB inside training (the G2Face convention); the frozen priors are attached with
   ``bind(priors)`` and reached as ``self.priors.identity`` (SFace in torch, ``training.loop.make_identity``),
   ``self.priors.perceptual`` (``training.losses.make_perceptual``) and ``self.priors.geometry``
   (``training.loop.make_geometry``), each built on first use and never saved in checkpoints. All randomness
   of a training step comes from ``batch.gen`` (a ``torch.Generator`` seeded by (seed, step, shard)), so
   resuming is exact and W ranks x A micro-batches equal one process with W*A micro-batches.

2. A module-level ``register_methods(methods)`` that adds the method: ``register_method(methods, name,
   wrapper=Resized)`` registers the zoo checkpoint (``zoo_entry(name)``) and a factory that loads it and wraps
   ``anonymizer()`` in ``wrapper`` (subclass ``Resized`` to change the full-size path, e.g. ``ResizedInpaint``).

3. An entry in ``BUILDERS`` via ``@builder(name)`` on the class, and optionally module-level default training
   settings ``TRAIN_DEFAULTS`` (a dict of ``BaselineConfig`` overrides, e.g. ``{"lr": 2e-4}``) that the CLI
   applies before its own flags.

Training, checkpoints, export
-----------------------------
``g2face-eval train-baseline <name> --steps N --out DIR [--resume auto]`` (``baselines/learned/train.py``)
runs ``BaselineTrainer`` — a subclass of the G2Face ``training.loop.Trainer`` that reuses its data
(``ShardedBatches`` over ``load_train_images``: celebahq256 *train* split only), DDP plumbing (torchrun, gloo
on CPU; one plain process otherwise), learning-rate schedule, atomic checkpoint directories
(``<out>/last``: model.safetensors with ``generator.*``/``discriminator.*`` + train_state.pt), exact resume and
MLflow logging (experiment ``baseline-train``); several processes: ``torchrun --nproc_per_node N -m
baselines.learned.train <name> ...``. ``export(train_dir, out)`` (CLI: ``python -m baselines.learned.train
export <dir>/last --export-to FILE.safetensors``; the shipped file is ``g2face_eval/checkpoints/<name>.safetensors``
and is replaced only when named) writes the generator weights to ``out`` (+ its ``.sha256`` beside it; the full
model config and training provenance in the metadata) atomically;
``load_exported`` verifies the sha256 before loading; the zoo entry is ``learned_<name>``
(``zoo.register_project_checkpoint``).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from g2face_eval import atomic, zoo
from g2face_eval.anonymizer import Anonymizer, Key, Output, check_options, key_seed
from g2face_eval.models.shipped import ResizedG2Face
from g2face_eval.training import ddp
from g2face_eval.training.data import generator
from g2face_eval.training.loop import TrainConfig, Trainer, lr_factor, make_geometry, make_identity
from g2face_eval.training.losses import d_logistic, make_perceptual, r1_penalty

CHECKPOINT_DIR = Path(zoo.__file__).resolve().parent / "checkpoints"
BUILDERS: dict[str, type[LearnedBaseline]] = {}


def builder(name: str):
    """Class decorator: ``BUILDERS[name] = cls`` (the training mode / method name)."""

    def deco(cls):
        cls.name = name
        BUILDERS[name] = cls
        return cls

    return deco


# --------------------------------------------------------------------------------------------- priors
class Priors:
    """Frozen priors, built lazily on first use (identity: SFace in torch; perceptual: LPIPS-VGG when its user
    file exists, else the EfficientNet-lite0 substitute; geometry: the project's landmark prior)."""

    def __init__(self, identity: str = "sface", perceptual: str = "auto", geometry: str = "mediapipe_lmm",
                 device: torch.device | str = "cpu"):
        self.names = {"identity": identity, "perceptual": perceptual, "geometry": geometry}
        self.device = torch.device(device)
        self._built: dict[str, nn.Module] = {}

    def _get(self, key: str, make: Callable[[str], nn.Module]) -> nn.Module:
        if key not in self._built:
            self._built[key] = make(self.names[key]).to(self.device).eval().requires_grad_(False)
        return self._built[key]

    def to(self, device: torch.device | str) -> Priors:
        """Move the priors built so far (later ones are built on ``device``)."""
        self.device = torch.device(device)
        for m in self._built.values():
            m.to(self.device)
        return self

    @property
    def identity(self) -> nn.Module:
        return self._get("identity", make_identity)

    @property
    def perceptual(self) -> nn.Module:
        return self._get("perceptual", make_perceptual)

    @property
    def geometry(self) -> nn.Module:
        return self._get("geometry", make_geometry)


@dataclass
class Batch:
    """One micro-batch: ``x`` [-1,1] (B,3,H,W), ``gen`` seeded by (seed, step, shard); filled by the model:
    ``fakes`` (detached generated images for D), ``samples`` (x, y, x_rec) for the logged grids, ``extra``."""

    x: torch.Tensor
    gen: torch.Generator
    fakes: list[torch.Tensor] = field(default_factory=list)
    samples: tuple | None = None
    extra: dict = field(default_factory=dict)

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen).to(self.x.device)

    def bits(self, *shape: int) -> torch.Tensor:
        return (torch.rand(*shape, generator=self.gen) < 0.5).float().to(self.x.device)


class LearnedBaseline(nn.Module):
    """Base class of a trainable baseline (see the module docstring for the contract)."""

    name = "learned"
    reversible = False

    def __init__(self, **model_config):
        super().__init__()
        self._config = dict(model_config)
        self.generator: nn.Module = nn.Module()
        self.discriminator: nn.Module | None = None
        self.priors: Priors | None = None

    def model_config(self) -> dict:
        return dict(self._config)

    def bind(self, priors: Priors) -> LearnedBaseline:
        self.priors = priors
        return self

    def discriminate(self, images_m11: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.discriminator(images_m11)

    def training_losses(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def discriminator_losses(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        fake = batch.fakes[step % len(batch.fakes)]
        d = d_logistic(self.discriminate(batch.x, batch), self.discriminate(fake, batch))
        return {"total": d}

    def anonymizer(self, device: str = "cpu") -> Anonymizer:
        raise NotImplementedError


def per_key_normal(keys: Sequence[Key], n: int, purpose: str) -> torch.Tensor:
    """(B, n) standard normal draws per image from its key: G2Face's counter-based ``keyed_normal`` on the 63-bit
    ``key_seed(key, purpose)`` (a ``torch.Generator`` would keep only 32 bits of the seed, so two images' draws
    would coincide after ~2^16 images)."""
    from g2face_eval.models.g2face import keyed_normal

    seeds = torch.tensor([key_seed(k, purpose) for k in keys], dtype=torch.int64)
    return keyed_normal(seeds, (n,), 0)


# ------------------------------------------------------------------------------------- anonymizer base
class ModelAnonymizer(Anonymizer):
    """An ``Anonymizer`` around a trained ``LearnedBaseline`` at the model's own size: holds the model in eval
    mode on ``device`` and moves it with ``to`` (the harness calls ``method.to(device)`` through ``Resized``).
    The network computes in float32 (``to_model``); outputs have the caller's dtype (``from_model``)."""

    def __init__(self, model: LearnedBaseline, device: str | torch.device = "cpu"):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.input_size = model.size

    def to(self, device: str | torch.device) -> ModelAnonymizer:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def to_model(self, images: torch.Tensor) -> torch.Tensor:
        """[0,1] images of any float dtype -> the network's input: float32 [-1,1] on the model's device."""
        return images.to(self.device, torch.float32) * 2 - 1

    @staticmethod
    def from_model(y_m11: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The network's [-1,1] output -> [0,1] on ``like``'s device, in ``like``'s dtype (the caller's)."""
        return ((y_m11.float() + 1) / 2).clamp(0, 1).to(like.device, like.dtype)


# ------------------------------------------------------------------------------------------- 256 px wrapper
class Resized(ResizedG2Face):
    """Runs a learned baseline's anonymizer at its own size on faces of any square size: the shipped G2Face
    wrapper (area down, bicubic up; recovery fails closed when the inner method authenticates), generalised
    to any inner ``Anonymizer`` with ``input_size``. Face masks are area-downsampled (any coverage counts)."""

    def __init__(self, inner: Anonymizer, name: str, weights: str | None = None):
        self.inner, self.name, self.size, self.weights = inner, name, int(inner.input_size), weights
        self.reversible = inner.reversible
        self.uses_face_mask = inner.uses_face_mask

    def config(self) -> dict:
        sha = None
        if self.weights:
            p = sha256_path(self.weights)
            sha = p.read_text().split()[0] if p.exists() else None
        return {**self.inner.config(), "name": self.name, "weights": self.weights, "weights_sha256": sha,
                "resize": "area-down/bicubic-up"}

    def down_mask(self, face_masks: torch.Tensor | None) -> torch.Tensor | None:
        if face_masks is None or face_masks.shape[-1] == self.size:
            return face_masks
        return (F.interpolate(face_masks.float(), size=(self.size, self.size), mode="area") > 0).float()

    def _anonymize(self, images: torch.Tensor, keys: Sequence[Key], face_masks: torch.Tensor | None
                   ) -> Output:
        out = self.inner.anonymize(self._down(images), keys, face_masks=self.down_mask(face_masks))
        return Output(self._up(out.images, images), ok=out.ok, bits=out.bits, info=out.info)


# ------------------------------------------------------------------------------------------------ config
@dataclass
class BaselineConfig(TrainConfig):
    """``TrainConfig`` (data, optimiser, schedule, checkpoints, logging) + the baseline's ``model`` kwargs.
    Defaults = the first shipped G2Face's budget: 64 px, batch 8, 300 steps, flips, SFace identity, no warm-up."""

    mode: str = "fit"
    size: int = 64
    steps: int = 300
    warmup_epochs: int = 0
    identity: str = "sface"
    lr: float = 1e-3
    lr_d: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    amp: str = "off"  # the shipped checkpoints were trained in float32 (also on the GPU)
    experiment: str = "baseline-train"
    out: str = "results/train/baseline"
    ckpt_every: int = 50
    log_every: int = 10
    sample_every: int = 100
    model: dict = field(default_factory=dict)


def make_baseline(name: str, **model_config) -> LearnedBaseline:
    import_module(name)
    if name not in BUILDERS:
        raise KeyError(f"unknown learned baseline {name!r}; known: {', '.join(sorted(BUILDERS))}")
    return BUILDERS[name](**model_config)


def import_module(name: str):
    import importlib

    return importlib.import_module(f"baselines.learned.{name}")


# ----------------------------------------------------------------------------------------------- trainer
class BaselineTrainer(Trainer):
    """The G2Face ``Trainer`` driving a ``LearnedBaseline``: ``gen`` = its generator, ``disc`` = its
    discriminator (the checkpoint layout, save/load/resume, MLflow and ``fit`` are the parent's; only the
    model and the step are ours)."""

    def __init__(self, cfg: BaselineConfig, info: ddp.DistInfo | None = None, images: torch.Tensor | None = None,
                 log=print):
        self.cfg, self.log = cfg, log
        self.info = info or ddp.DistInfo()
        self.dev = self.info.device
        torch.manual_seed(cfg.seed)
        self.amp = (cfg.amp == "bf16") or (cfg.amp == "auto" and self.dev.type == "cuda")
        from g2face_eval.training.data import ShardedBatches, load_train_images

        imgs = images if images is not None else load_train_images(cfg.size, cfg.data_root, cfg.limit, log=log)
        self.global_batch = cfg.batch * cfg.accum * self.info.world
        self.data = ShardedBatches(imgs, self.global_batch, cfg.seed, flip=cfg.flip, fixed=cfg.fixed_batch)
        self.spe = cfg.steps_per_epoch or self.data.steps_per_epoch
        self.step = 0
        self.baseline = make_baseline(cfg.mode, **cfg.model).to(self.dev)
        self.priors = Priors(cfg.identity, cfg.perceptual, cfg.geometry, self.dev)
        self.baseline.bind(self.priors)
        self.perc_name = cfg.perceptual
        self.gen = self.baseline.generator
        self.disc = self.baseline.discriminator if self.baseline.discriminator is not None else nn.Module()
        self.g_params = list(self.gen.parameters())
        self.d_params = list(self.disc.parameters())
        self.opt_g = torch.optim.Adam(self.g_params, lr=cfg.lr, betas=cfg.betas)
        # a D-less baseline keeps a placeholder optimiser so the checkpoint layout stays the same
        self.opt_d = torch.optim.Adam(self.d_params or [nn.Parameter(torch.zeros(1))], lr=cfg.lr_d,
                                      betas=cfg.betas)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt_g, lambda e: lr_factor(e, cfg.warmup_epochs, cfg.gamma))
        for m in self.trainable_modules():
            ddp.broadcast_module(m, self.info)
        self._mlflow = None
        if self.info.is_main:
            n_g = sum(p.numel() for p in self.g_params)
            n_d = sum(p.numel() for p in self.d_params)
            self.log(f"[train] {cfg.mode}: {self.baseline.model_config()}; generator {n_g / 1e6:.2f}M params, "
                     f"discriminator {n_d / 1e6:.2f}M; global batch {self.global_batch} ({self.info.world} "
                     f"rank(s) x {cfg.accum} x {cfg.batch}), {self.spe} steps/epoch, device {self.dev}")

    def trainable_modules(self) -> list[nn.Module]:
        return [self.gen, self.disc]

    def train_step(self) -> dict[str, float]:
        step, cfg, bl = self.step, self.cfg, self.baseline
        epoch, sie = divmod(step, self.spe)
        self._set_epoch_lr(epoch)
        acc = cfg.accum
        shards = self.info.world * acc
        logs: dict[str, float] = {}

        def add(prefix: str, parts: dict[str, torch.Tensor]):
            for k, v in parts.items():
                name = f"{prefix}{k}"
                logs[name] = logs.get(name, 0.0) + float(v.detach()) / acc

        self.disc.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        keep: list[Batch] = []
        for a in range(acc):
            shard = self.info.rank * acc + a
            b = Batch(self.data.batch(epoch, sie, shard, shards).to(self.dev),
                      generator(cfg.seed, 21, step, shard))
            with self._autocast():
                parts = bl.training_losses(b, step)
            (parts["total"] / acc).backward()
            add("g_", parts)
            keep.append(b)
        ddp.average_gradients(self.g_params, self.info)
        self.opt_g.step()
        if bl.discriminator is not None:
            w = cfg.weights
            self.disc.requires_grad_(True)
            self.opt_d.zero_grad(set_to_none=True)
            for b in keep:
                with self._autocast():
                    parts = bl.discriminator_losses(b, step)
                total = parts["total"]
                if w.r1 > 0 and step % w.r1_every == 0:
                    r1 = r1_penalty(lambda r, b=b: bl.discriminate(r, b), b.x)
                    parts = {**parts, "r1": r1}
                    total = total + w.r1 * r1
                (total / acc).backward()
                add("d_", parts)
            ddp.average_gradients(self.d_params, self.info)
            self.opt_d.step()
        s = keep[0].samples
        self._last = s if s is not None else (keep[0].x, keep[0].x, keep[0].x)
        self.step += 1
        logs["lr_g"] = self.opt_g.param_groups[0]["lr"]
        return ddp.all_mean(logs, self.info)

    def save(self, path: str | Path) -> Path:
        out = super().save(path)
        atomic.write_json(out / "model_config.json", {"mode": self.cfg.mode, **self.baseline.model_config()})
        return out


def run(cfg: BaselineConfig, resume: str | None = None, log=print) -> BaselineTrainer:
    """One process or a torchrun rank: build, optionally resume (``auto`` = ``<out>/last``), train."""
    from g2face_eval.training import loop

    return loop.run(cfg, resume, log, trainer_cls=BaselineTrainer)


# ------------------------------------------------------------------------------------- export and loading
def weight_name(name: str) -> str:
    return f"learned_{name}"


def sha256_path(name_or_path: str | Path) -> Path:
    """The sha256 record of a shipped baseline (a bare method name such as ``"fit"``:
    ``CHECKPOINT_DIR/<name>.sha256``) or of an exported file (``record_path``)."""
    p = Path(name_or_path)
    if p.suffix == "" and len(p.parts) == 1:
        return CHECKPOINT_DIR / f"{p.name}.sha256"
    return zoo.record_path(p)


def export(train_dir: str | Path, out: str | Path) -> str:
    """Training checkpoint dir -> inference weights (generator only) with the model config and training
    provenance in the safetensors metadata; atomic write; the sha256 goes next to it (``<name>.sha256``).
    ``out`` must end in ``.safetensors`` (ValueError); there is no default, so the shipped checkpoint
    (``CHECKPOINT_DIR/<name>.safetensors``) is replaced only when named."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    src = Path(train_dir) / "model.safetensors"
    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata() or {})
    train_cfg = json.loads(meta["config"])
    name = meta.get("mode", "")
    if name not in BUILDERS and name not in _known_modules():
        raise ValueError(f"{src} is not a learned-baseline checkpoint (metadata mode={name!r})")
    sd = {k[len("generator."):]: v for k, v in load_file(str(src)).items() if k.startswith("generator.")}
    out = Path(out)
    zoo.record_path(out)  # refuses a target without .safetensors before anything is written
    out_meta = {
        "mode": name,
        "model_config": json.dumps(make_baseline(name, **train_cfg.get("model", {})).model_config()),
        "identity": train_cfg.get("identity", "sface"),
        "train_step": meta.get("step", ""),
        "train_config": meta["config"],
    }
    out = atomic.write_via(out, lambda t: save_file(sd, t, metadata=out_meta))
    return zoo.write_record(out)


# a digest that does not match the record, or no record (its subclass zoo.WeightUnrecordedError)
ChecksumError = zoo.WeightIntegrityError


def load_exported(path: str | Path) -> tuple[dict, dict, dict[str, torch.Tensor]]:
    """(model_config, metadata, generator state dict) of an exported file, after checking its sha256 against
    the sibling ``.sha256`` record (``zoo.verify_recorded``: ``ChecksumError`` on a mismatch or a missing record)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = zoo.verify_recorded(path)
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata() or {})
    return json.loads(meta.get("model_config", "{}")), meta, load_file(str(path))


def load_model(path: str | Path) -> LearnedBaseline:
    """Rebuild the baseline from an exported file (sha256-verified) with its generator weights."""
    cfg, meta, sd = load_exported(path)
    model = make_baseline(meta["mode"], **cfg)
    model.generator.load_state_dict(sd, strict=True)
    return model.eval()


def zoo_entry(name: str) -> str:
    """Register ``learned_<name>`` (g2face_eval/checkpoints/<name>.safetensors) in the zoo once; returns the
    weight name. The zoo verifies the recorded sha256 before every load."""
    wn = weight_name(name)
    if wn not in zoo.WEIGHTS.names():
        zoo.register_project_checkpoint(
            wn, f"{name}.safetensors",
            sha256=zoo.recorded_sha256(CHECKPOINT_DIR / f"{name}.safetensors"),
            input=zoo.InputSpec(size=None, value_range=(0.0, 1.0), mean=None, std=None, channel_order="RGB"),
            description=f"learned baseline '{name}' trained by this project on celebahq256 train "
                        f"(model card: checkpoints/{name}.md)",
            instructions=f"g2face-eval train-baseline {name} --out <dir>; python -m baselines.learned.train "
                         f"export <dir>/last --export-to g2face_eval/checkpoints/{name}.safetensors",
            loader=load_model,
        )
    return wn


def register_method(methods, name: str, wrapper: type[Resized] | None = None) -> None:
    """``methods[name] = factory(device="cpu") -> wrapper`` (default ``Resized``; loads the zoo checkpoint at
    build time)."""
    if name in methods:
        return
    wn = zoo_entry(name)

    def make(device: str = "cpu", **kw) -> Anonymizer:
        # the options the model's ``anonymizer(device, ...)`` takes; anything else is refused (ValueError)
        check_options(name, kw, [p for p in inspect.signature(BUILDERS[name].anonymizer).parameters
                                 if p not in ("self", "device")] + ["device"])
        model = zoo.load(wn).to(device)
        return (wrapper or Resized)(model.anonymizer(device=device, **kw), name=name, weights=name)

    make.__name__ = f"make_{name}"
    methods.add(name, make)


def _known_modules() -> tuple[str, ...]:
    from baselines.learned import MODULES

    return MODULES


# ------------------------------------------------------------------------------------------- small layers
def conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, k // 2)


class ConvAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(conv(cin, cout, 3, stride), nn.LeakyReLU(0.2, inplace=True))


class ModResBlock(nn.Module):
    """Residual block whose features are modulated (FiLM: scale, shift per channel) by a code vector."""

    def __init__(self, ch: int, code_dim: int):
        super().__init__()
        self.c1, self.c2 = conv(ch, ch), conv(ch, ch)
        self.film = nn.Linear(code_dim, 2 * ch)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, h: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        s, b = self.film(code)[:, :, None, None].chunk(2, 1)
        r = F.leaky_relu(self.c1(h), 0.2)
        r = r * (1 + s) + b
        return h + self.c2(r)


class UNet(nn.Module):
    """Small conditional U-Net: ``cin`` input channels at the network size, 3 levels down (stride 2),
    ``n_res`` code-modulated residual blocks at the bottom, skip connections, tanh RGB output in [-1,1].
    ``residual=True``: the output is ``tanh(atanh(x[:, :3]) + head)`` (the first 3 input channels are the [-1,1]
    image). The head keeps PyTorch's default (random) init: a zero head would start at the identity map, a
    stationary point of every cosine identity loss (the gradient of cos(a, b) vanishes at a = b)."""

    def __init__(self, cin: int, code_dim: int, width: int = 32, n_res: int = 2, residual: bool = False):
        super().__init__()
        self.residual = residual
        w1, w2, w3 = width, 2 * width, 4 * width
        self.inp = ConvAct(cin, w1)
        self.d1, self.d2, self.d3 = ConvAct(w1, w2, 2), ConvAct(w2, w3, 2), ConvAct(w3, w3, 2)
        self.res = nn.ModuleList(ModResBlock(w3, code_dim) for _ in range(n_res))
        self.u3, self.u2, self.u1 = ConvAct(2 * w3, w3), ConvAct(w3 + w2, w2), ConvAct(w2 + w1, w1)
        self.out = conv(w1, 3)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        h0 = self.inp(x)
        h1 = self.d1(h0)
        h2 = self.d2(h1)
        h = self.d3(h2)
        for blk in self.res:
            h = blk(h, code)

        def up(t):
            return F.interpolate(t, scale_factor=2.0, mode="nearest")

        h = self.u3(torch.cat([up(h), h2], 1))
        h = self.u2(torch.cat([up(h), h1], 1))
        h = self.u1(torch.cat([up(h), h0], 1))
        if self.residual:
            return torch.tanh(torch.atanh(x[:, :3].clamp(-0.999, 0.999)) + self.out(h))
        return torch.tanh(self.out(h))


class PatchDiscriminator(nn.Module):
    """Small PatchGAN-style discriminator (3 stride-2 convs); returns one logit per image (patch mean)."""

    def __init__(self, cin: int = 3, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(ConvAct(cin, width, 2), ConvAct(width, 2 * width, 2),
                                 ConvAct(2 * width, 4 * width, 2), conv(4 * width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean(dim=(1, 2, 3))
