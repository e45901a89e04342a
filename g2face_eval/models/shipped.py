"""The project's shipped G2Face checkpoint: export from a training run, zoo entry, and the ``g2face`` method.

The shipped network is a small G2Face (``G2FaceConfig.tiny``) trained by ``g2face-eval train`` on the
celebahq256 train split with the offline priors (SFace identity, the project's landmark geometry prior); see
``g2face_eval/checkpoints/g2face_shipped.md`` for data, steps, time, hardware and the harness's numbers.

It works at ``cfg.size`` pixels; the harness hands every method 256x256 faces, so ``ResizedG2Face`` area-
downsamples the input to the network's size and bicubic-upsamples the result back (for both anonymize and
recover). Everything else (keyed payload, fail-closed recovery, keyed noise) is ``G2FaceAnonymizer``.

Export:  python -m g2face_eval.models.shipped export <training checkpoint dir> [--out FILE]
"""

from __future__ import annotations

import argparse
import inspect
import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from g2face_eval import atomic, zoo
from g2face_eval.anonymizer import Anonymizer, Key, Output, check_options
from g2face_eval.models.anonymizer import G2FaceAnonymizer
from g2face_eval.models.g2face import G2Face, G2FaceConfig

WEIGHT_NAME = "g2face_shipped"
FILENAME = "g2face_shipped.safetensors"
CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
# sha256 on record for the committed file (updated by `export`, verified by the zoo before every load)
KEEP_PREFIXES = ("anonymous_net.", "style_mlp.", "map_2_id.", "hiding_extractor.")


def _recorded_sha256() -> str | None:
    return zoo.recorded_sha256(CHECKPOINT_DIR / FILENAME)


def _load(path: Path) -> tuple[G2FaceConfig, dict, dict[str, torch.Tensor]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata() or {})
    return _config_of(meta), meta, load_file(str(path))


def _config_of(meta: dict) -> G2FaceConfig:
    """The G2FaceConfig recorded in a checkpoint's metadata (``g2face_config``; JSON lists back to tuples)."""
    return G2FaceConfig(**{k: tuple(v) if isinstance(v, list) else v
                           for k, v in json.loads(meta["g2face_config"]).items()})


zoo.register_project_checkpoint(
    WEIGHT_NAME,
    FILENAME,
    sha256=_recorded_sha256(),
    input=zoo.InputSpec(size=None, value_range=(-1.0, 1.0), mean=None, std=None, channel_order="RGB"),
    description="G2Face (small config) trained by this project on celebahq256 train; offline priors "
                "(SFace identity, landmark geometry prior). Model card: checkpoints/g2face_shipped.md",
    instructions="shipped in the repository (g2face_eval/checkpoints/); re-create with `g2face-eval train` "
                 "and `python -m g2face_eval.models.shipped export`",
    loader=_load,
)


class ResizedG2Face(Anonymizer):
    """Runs a G2Face at its own size on faces of any square size (area down, bicubic up; a non-square input is
    refused with a ValueError). The network sees float32 whatever float dtype the caller passes; the output has
    the caller's dtype, as for the classic baselines."""

    reversible = True

    def __init__(self, inner: G2FaceAnonymizer, name: str = "g2face"):
        self.inner = inner
        self.name = name
        self.size = inner.cfg.size

    def config(self) -> dict:
        return {**self.inner.config(), "name": self.name, "weights": WEIGHT_NAME,
                "weights_sha256": _recorded_sha256(), "resize": "area-down/bicubic-up"}

    def to(self, device) -> ResizedG2Face:
        """Move the inner G2Face (networks, priors, device constants): the harness's ``method.to(device)``."""
        self.inner.to(device)
        return self

    def _check(self, images: torch.Tensor, keys: Sequence[Key], face_masks: torch.Tensor | None) -> None:
        super()._check(images, keys, face_masks)
        h, w = images.shape[-2:]
        if h != w:
            raise ValueError(f"{self.name} needs square faces (it resizes them to its {self.size}x{self.size} "
                             f"network and back; a {h}x{w} input would be squashed and stretched): crop or pad "
                             "to a square first")

    def _down(self, x: torch.Tensor) -> torch.Tensor:
        """To the network: float32 (whatever float dtype the caller passed) at the network's size."""
        x = x.float()
        return x if tuple(x.shape[-2:]) == (self.size, self.size) else F.interpolate(
            x, size=(self.size, self.size), mode="area")

    @staticmethod
    def _up(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Back to the caller: ``like``'s size and dtype (the shared contract: output dtype = input dtype)."""
        if y.shape[-2:] != like.shape[-2:]:
            y = F.interpolate(y.float(), size=like.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)
        return y.to(like.dtype)

    def _anonymize(self, images: torch.Tensor, keys: Sequence[Key], face_masks: torch.Tensor | None
                   ) -> Output:
        images = images.to(self.inner.device)
        out = self.inner.anonymize(self._down(images), keys)
        return Output(self._up(out.images, images), ok=out.ok, bits=out.bits, info=out.info)

    def _recover(self, images: torch.Tensor, keys: Sequence[Key]) -> Output:
        images = images.to(self.inner.device)
        out = self.inner.recover(self._down(images), keys)
        rec = self._up(out.images, images)
        if out.ok is not None:  # fail closed at full size too: unauthenticated -> the input, bit for bit
            rec = torch.where(out.ok.to(rec.device)[:, None, None, None], rec, images.to(rec.device))
        return Output(rec, ok=out.ok, bits=out.bits, info=out.info)


def build(device: str = "cpu", payload: str = "keyed", **kw) -> ResizedG2Face:
    """The ``g2face`` method: shipped weights (sha256-verified) + offline priors."""
    from g2face_eval.models.geometry import load_geometry_prior
    from g2face_eval.models.identity import get_identity_prior

    fixed = {"self", "model", "identity", "geometry", "cfg", "name"}  # set here from the checkpoint / registry
    check_options("g2face", kw, {"device", "payload"} | (
        set(inspect.signature(G2FaceAnonymizer.__init__).parameters) - fixed))
    cfg, meta, sd = zoo.load(WEIGHT_NAME)
    model = G2Face(cfg, with_discriminator=False)
    model.load_state_dict(sd, strict=True)
    identity = get_identity_prior(meta.get("identity", "sface"))
    geometry = load_geometry_prior(meta.get("geometry", "mediapipe_lmm"))
    inner = G2FaceAnonymizer(model, identity=identity, geometry=geometry, payload=payload, device=device,
                             **kw)
    return ResizedG2Face(inner)


def register_methods(methods) -> None:
    if "g2face" not in methods:
        methods.add("g2face", build)


def export(train_dir: str | Path, out: str | Path = CHECKPOINT_DIR / FILENAME) -> str:
    """Training checkpoint dir (model.safetensors with metadata) -> shipped inference weights (no
    discriminator), with the G2Face config, priors and training provenance in the safetensors metadata.
    Writes the file atomically and its sha256 record beside it (``zoo.record_path``: for the default ``out``, the
    shipped record); returns the digest."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    zoo.record_path(out)  # refuses a target without .safetensors before anything is written
    src = Path(train_dir) / "model.safetensors"
    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata() or {})
    if meta.get("mode") != "g2face" or "g2face_config" not in meta:
        raise ValueError(f"{src} is not a G2Face training checkpoint (metadata mode={meta.get('mode')!r})")
    train_cfg = json.loads(meta["config"])
    gcfg = _config_of(meta)
    from g2face_eval.models.payload import make_payload

    try:  # what ``build`` will hide: refused now, not when the exported file is first used
        make_payload("keyed", gcfg.n_bits, gcfg.id_dim)
    except ValueError as e:
        raise ValueError(f"{src}: this G2Face cannot carry the keyed payload the g2face method hides ({e})") from e
    sd = {k: v for k, v in load_file(str(src)).items() if k.startswith(KEEP_PREFIXES)}
    identity = train_cfg.get("identity", "auto")
    trained_with = json.loads(meta.get("run", "{}")).get("identity_net")   # "auto" as training resolved it
    if identity == "auto":
        identity = trained_with if trained_with in ("arcface", "sface") else (
            "arcface" if zoo.available("arcface_iresnet50") else "sface")    # older checkpoints: resolved now
    out_meta = {
        "g2face_config": meta["g2face_config"],
        "identity": identity,
        "geometry": train_cfg.get("geometry", "mediapipe_lmm"),
        "train_step": meta.get("step", ""),
        "train_config": meta["config"],
    }
    out = atomic.write_via(out, lambda t: save_file(sd, t, metadata=out_meta))
    return zoo.write_record(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("train_dir")
    e.add_argument("--out", required=True,
                   help=f"target .safetensors (the project's shipped checkpoint is {CHECKPOINT_DIR / FILENAME}: "
                        "name it to replace it)")
    args = ap.parse_args(argv)
    from g2face_eval.training.train import export_cli

    return export_cli("g2face export", lambda: export(args.train_dir, args.out))


if __name__ == "__main__":
    raise SystemExit(main())
