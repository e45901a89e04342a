"""``g2face-eval train-baseline <fit|inpaint|riddle>``: train a learned baseline with G2Face's machinery
(``baselines/learned/base.py``), and export its checkpoint.

One CPU/GPU process:  g2face-eval train-baseline fit --steps 300 --out /tmp/fit
Several processes:    torchrun --nproc_per_node 2 -m baselines.learned.train fit --steps 300 --out /tmp/fit
Resume:               add ``--resume auto`` (``<out>/last``) or ``--resume <checkpoint dir>``
Export:               python -m baselines.learned.train export /tmp/fit/last --export-to /tmp/fit.safetensors
                      (the shipped file, g2face_eval/checkpoints/fit.safetensors, is replaced only when named)

Defaults are the first shipped G2Face's budget (celebahq256 train split at 64 px, batch 8, 300 steps, flips).
Model options: ``--model key=value`` (JSON values), e.g. ``--model width=24 --model weights='{"id": 2}'``.
"""

from __future__ import annotations

import argparse
import json

from baselines.learned import MODULES
from baselines.learned.base import BaselineConfig, BaselineTrainer, export
from g2face_eval import settings
from g2face_eval.training.train import export_cli, run_cli

G2FACE_ONLY = ("preset", "pretrain_stylegan", "tiny_width", "init_generator", "geometry", "payload")


def build_parser() -> argparse.ArgumentParser:
    """``g2face-eval train``'s parser (data, optimiser, checkpoints, logging, device options are shared), plus
    the baseline name, ``--model`` and export."""
    from g2face_eval.training.train import build_parser as g2face_parser

    ap = g2face_parser()
    ap.prog, ap.description = "g2face-eval train-baseline", __doc__
    ap.add_argument("mode", choices=[*MODULES, "export"], help="baseline to train, or 'export'")
    ap.add_argument("train_dir", nargs="?", help="export: the training checkpoint dir (<out>/last)")
    ap.add_argument("--export-to", help="export (required): output file, ending in .safetensors; its sha256 record "
                    "goes beside it (the shipped one is g2face_eval/checkpoints/<name>.safetensors)")
    ap.add_argument("--model", action="append", default=[], metavar="KEY=VALUE",
                    help="baseline model option (JSON value), repeatable")
    _baseline_help(ap)
    return ap


def _baseline_help(ap: argparse.ArgumentParser) -> None:
    """The shared flags' help with the baselines' defaults (``BaselineConfig`` and each baseline's
    ``TRAIN_DEFAULTS``), not G2Face's; G2Face-only flags hidden (``config_from_args`` refuses them)."""
    from dataclasses import fields

    from baselines.learned.base import import_module
    from g2face_eval.training.loop import TrainConfig

    d, g = BaselineConfig(), TrainConfig()
    per = {m: getattr(import_module(m), "TRAIN_DEFAULTS", {}) for m in MODULES}
    names = {f.name for f in fields(BaselineConfig)}
    for a in ap._actions:
        if a.dest in G2FACE_ONLY:
            a.help = argparse.SUPPRESS
        elif a.dest == "out":
            a.help = "checkpoint folder (default <results dir>/train/<baseline>; $G2FACE_RESULTS_DIR, else ./results)"
        elif a.dest in names and a.option_strings:
            value, help_ = getattr(d, a.dest), a.help or ""
            if value is None or isinstance(value, (bool, dict)):
                continue  # flags, and options whose absence is their default
            over = ", ".join(f"{m} {t[a.dest]}" for m, t in per.items() if a.dest in t)
            if "(default" in help_ and value == getattr(g, a.dest) and not over:
                continue  # same default as G2Face's, already shown
            base = help_.split(" (default")[0] if help_.endswith(")") else help_
            a.help = f"{base} (default {value}{'; ' + over if over else ''})".strip()


def config_from_args(args: argparse.Namespace) -> BaselineConfig:
    from baselines.learned.base import import_module

    d = build_parser().parse_args([args.mode])
    bad = [k for k in G2FACE_ONLY if getattr(args, k) != getattr(d, k)]
    if bad:
        raise SystemExit(f"train-baseline: G2Face-only option(s) {', '.join(bad)}")
    kw = {"mode": args.mode, "out": str(settings.results_dir() / "train" / args.mode),
          **getattr(import_module(args.mode), "TRAIN_DEFAULTS", {})}
    skip = {"mode", "train_dir", "export_to", "resume", "model", *G2FACE_ONLY}
    for k, v in vars(args).items():
        if k in skip or v is None or (k == "fixed_batch" and not v):
            continue
        kw[k] = v
    model = {}
    for item in args.model:
        k, _, v = item.partition("=")
        try:
            model[k] = json.loads(v)
        except json.JSONDecodeError:
            model[k] = v
    model.setdefault("size", kw.get("size", BaselineConfig.size))
    kw["model"] = model
    return BaselineConfig(**kw)


def cli(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.mode == "export":
        if not args.train_dir or not args.export_to:     # exit 2; the shipped checkpoint is never a default target
            ap.error("export needs the training checkpoint dir and --export-to FILE.safetensors")
        return export_cli("g2face-eval train-baseline export", lambda: export(args.train_dir, args.export_to))
    return run_cli("g2face-eval train-baseline", lambda: config_from_args(args), args.resume,
                   trainer_cls=BaselineTrainer)


if __name__ == "__main__":
    raise SystemExit(cli())
