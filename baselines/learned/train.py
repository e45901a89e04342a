"""``g2face-eval train-baseline <fit|inpaint|riddle>``: train a learned baseline with G2Face's machinery
(``baselines/learned/base.py``), and export its checkpoint.

One CPU/GPU process:  g2face-eval train-baseline fit --steps 300 --out /tmp/fit
Several processes:    torchrun --nproc_per_node 2 -m baselines.learned.train fit --steps 300 --out /tmp/fit
Resume:               add ``--resume auto`` (``<out>/last``) or ``--resume <checkpoint dir>``
Export:               python -m baselines.learned.train export /tmp/fit/last   (-> g2face_eval/checkpoints/)

Defaults are the shipped G2Face's budget (celebahq256 train split at 64 px, batch 8, 300 steps, flips).
Model options: ``--model key=value`` (JSON values), e.g. ``--model width=24 --model weights='{"id": 2}'``.
"""

from __future__ import annotations

import argparse
import json

from baselines.learned import MODULES
from baselines.learned.base import BaselineConfig, export, run


def build_parser() -> argparse.ArgumentParser:
    d = BaselineConfig()
    ap = argparse.ArgumentParser(prog="g2face-eval train-baseline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=[*MODULES, "export"], help="baseline to train, or 'export'")
    ap.add_argument("train_dir", nargs="?", help="export: the training checkpoint dir (<out>/last)")
    ap.add_argument("--export-to", help="export: output file (default g2face_eval/checkpoints/<name>.safetensors)")
    ap.add_argument("--size", type=int, help=f"network resolution (default {d.size})")
    ap.add_argument("--batch", type=int, help=f"per-rank batch (default {d.batch})")
    ap.add_argument("--accum", type=int)
    ap.add_argument("--steps", type=int, help=f"total iterations (default {d.steps})")
    ap.add_argument("--steps-per-epoch", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--lr-d", type=float)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--identity", choices=["auto", "arcface", "sface"])
    ap.add_argument("--perceptual", choices=["auto", "lpips_vgg", "effnet", "none"])
    ap.add_argument("--data-root", help="datasets root holding celebahq256/ (default $G2FACE_DATASETS)")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--fixed-batch", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--resume")
    ap.add_argument("--ckpt-every", type=int)
    ap.add_argument("--log-every", type=int)
    ap.add_argument("--sample-every", type=int)
    ap.add_argument("--no-mlflow", dest="mlflow", action="store_false", default=None)
    ap.add_argument("--mlflow-uri")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--model", action="append", default=[], metavar="KEY=VALUE")
    return ap


def config_from_args(args: argparse.Namespace) -> BaselineConfig:
    from baselines.learned.base import import_module

    kw = {"mode": args.mode, "out": f"results/train/{args.mode}",
          **getattr(import_module(args.mode), "TRAIN_DEFAULTS", {})}
    for k, v in vars(args).items():
        if k in ("mode", "train_dir", "export_to", "resume", "model") or v is None:
            continue
        if k == "fixed_batch" and not v:
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
    args = build_parser().parse_args(argv)
    if args.mode == "export":
        if not args.train_dir:
            raise SystemExit("export needs the training checkpoint dir")
        print(export(args.train_dir, args.export_to))
        return 0
    run(config_from_args(args), resume=args.resume, log=lambda m: print(m, flush=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
