"""``g2face-eval train``: train G2Face (default) or pre-train the project's StyleGAN2
(``--pretrain-stylegan``). The learned baselines train with ``g2face-eval train-baseline`` instead.

One CPU/GPU process:   g2face-eval train --preset cpu-small --steps 2000 --out results/train/small
Several GPUs:          torchrun --nproc_per_node 4 -m g2face_eval train [args]   (nccl; gloo on CPU)
Resume:                add ``--resume auto`` (``<out>/last``) or ``--resume <checkpoint dir>``
Decoder init:          g2face-eval train --pretrain-stylegan --preset cpu-small --out results/train/sg
                       g2face-eval train --preset cpu-small --init-generator results/train/sg/last

Defaults reproduce the official configuration (256 px, official widths, batch 8 per GPU, 100k iterations,
lr 1e-3 / 1e-4 (pretrained synthesis) / D 1e-3, Adam betas (0, 0.999), 10 warm-up epochs then x0.95 per
epoch, R1 5 every 16 steps, loss weights of the official train.py). An epoch of the lr schedule is the
official one, 70,000 FFHQ images, i.e. ceil(70000 / global batch) steps (2,188 on 4 GPUs x 8), not a pass over
our 3,500-image train split (the data is reshuffled after every such pass; ``--steps-per-epoch`` sets the
schedule's epoch in steps). The perceptual loss is LPIPS-VGG when the zoo's ``lpips_vgg`` user file is
present, otherwise the offline EfficientNet-lite0 feature substitute (logged by name). Deliberate
deviations: the hidden training bits are uniform (``--payload keyed``, the statistics of the keyed payload the
shipped model hides at inference) instead of the official float2bit(randn) (``--payload official``); on CUDA the
default ``--amp auto`` trains in bf16 autocast (the official code trains in fp32: ``--amp off``). Not a default
that can be reproduced offline: the official code initialises the synthesis network from StyleGAN2-FFHQ-256
(``--init-generator zoo:stylegan2_ffhq256``, a user file); without ``--init-generator`` it starts from random
weights (said at start-up). The start-up log states the resolved schedule (steps per epoch, lr factor at the
final step) and amp dtype. A folder that already holds a checkpoint is refused without ``--resume``; checkpoints
are sha256-recorded and verified when loaded. Errors in the settings, data or weights: one line, exit 2; Ctrl-C /
SIGTERM: the last checkpoint is kept, resume with ``--resume auto``.
"""

from __future__ import annotations

import argparse

from g2face_eval import settings
from g2face_eval.training.loop import TrainConfig, run

PRESETS = {
    "official": {},
    "cpu-small": {"size": 64, "tiny_width": 32, "batch": 8, "steps": 20000, "warmup_epochs": 1,
                  "ckpt_every": 500, "sample_every": 500, "log_every": 20},
    "tiny": {"size": 32, "tiny_width": 8, "batch": 4, "steps": 50, "warmup_epochs": 0, "ckpt_every": 25,
             "sample_every": 25, "log_every": 5, "limit": 64},
}


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    ap = argparse.ArgumentParser(prog="g2face-eval train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="official")
    ap.add_argument("--pretrain-stylegan", action="store_true",
                    help="pre-train the project's StyleGAN2 instead")
    ap.add_argument("--size", type=int)
    ap.add_argument("--tiny", dest="tiny_width", type=int,
                    help="G2FaceConfig.tiny width (default: official widths)")
    ap.add_argument("--batch", type=int, help=f"per-rank batch (default {d.batch})")
    ap.add_argument("--accum", type=int, help="micro-batches per rank and step")
    ap.add_argument("--steps", type=int, help=f"total iterations (default {d.steps})")
    ap.add_argument("--steps-per-epoch", type=int,
                    help="steps per epoch of the lr schedule (default: the official epoch, ceil(70000 / global "
                         "batch)); the data is reshuffled after each pass over the train split regardless")
    ap.add_argument("--lr", type=float)
    ap.add_argument("--lr-pretrained", type=float)
    ap.add_argument("--lr-d", type=float)
    ap.add_argument("--warmup-epochs", type=int)
    ap.add_argument("--gamma", type=float)
    ap.add_argument("--seed", type=int,
                    help=f"random seed (default {settings.DEFAULTS['seed']}, settings.DEFAULTS['seed'])")
    ap.add_argument("--identity", choices=["auto", "arcface", "sface"])
    ap.add_argument("--geometry", choices=["mediapipe_lmm", "d3dfr", "none"])
    ap.add_argument("--perceptual", choices=["auto", "lpips_vgg", "effnet", "none"])
    ap.add_argument("--payload", choices=["keyed", "official"],
                    help=f"training payload bits: keyed = uniform (default {d.payload!r}, as the shipped model "
                         "hides at inference) | official = float2bit(randn)")
    ap.add_argument("--init-generator",
                    help="stylegan pre-train checkpoint dir, safetensors or zoo:stylegan2_ffhq256")
    ap.add_argument("--data-root", help="datasets root holding celebahq256/ (default $G2FACE_DATASETS, else "
                    "../shared/datasets beside the repository)")
    ap.add_argument("--limit", type=int, help="use only the first N training images")
    ap.add_argument("--fixed-batch", action="store_true", help="always train on the first global batch")
    ap.add_argument("--out", help="checkpoint folder (default <results dir>/train/g2face, or .../train/stylegan2 "
                    "with --pretrain-stylegan; the results dir is $G2FACE_RESULTS_DIR, else ./results, where the "
                    "training's MLflow store mlflow.db goes too)")
    ap.add_argument("--resume", help="'auto' (<out>/last if present) or a checkpoint dir")
    ap.add_argument("--ckpt-every", type=int)
    ap.add_argument("--keep-every", type=int,
                    help="also keep the checkpoint of every multiple of this step as <out>/step_<N> (default 0: "
                         "only <out>/last); e.g. to pick a release step on held-out faces afterwards")
    ap.add_argument("--log-every", type=int)
    ap.add_argument("--sample-every", type=int)
    ap.add_argument("--no-mlflow", dest="mlflow", action="store_false", default=None)
    ap.add_argument("--mlflow-uri")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"],
                    help=f"training device (default {settings.DEFAULTS['train_device']}: cuda when available, else "
                    "cpu; settings.DEFAULTS['train_device'])")
    ap.add_argument("--amp", choices=["auto", "bf16", "off"],
                    help="autocast: auto = bf16 on CUDA, off on CPU (the official code trains in fp32: off)")
    return ap


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    kw = dict(PRESETS[args.preset])
    for k, v in vars(args).items():
        if k in ("preset", "pretrain_stylegan", "resume") or v is None or v is False and k == "fixed_batch":
            continue
        kw[k] = v
    if args.pretrain_stylegan:
        kw["mode"] = "stylegan"
    # the default checkpoint folder follows $G2FACE_RESULTS_DIR, like the training's MLflow store
    kw.setdefault("out", str(settings.results_dir() / "train" / ("stylegan2" if args.pretrain_stylegan else "g2face")))
    return TrainConfig(**kw)


def run_cli(prog: str, make_cfg, resume: str | None, **kw) -> int:
    """Run a training for a CLI: a bad setting, missing data or weights, a refused resume or a checkpoint in the
    way is one line and exit 2; Ctrl-C (exit 130) and SIGTERM (exit 143) say how to resume."""
    import sys

    from g2face_eval.interrupts import say_how_to_resume, sigterm_exits
    from g2face_eval.training.loop import TrainSetupError

    try:
        cfg = make_cfg()
    except ValueError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    hint = f"the last checkpoint written (if any) is in {cfg.out}/last: rerun with --resume auto to continue"
    try:
        with say_how_to_resume(prog, hint), sigterm_exits():  # SIGTERM: the MLflow run ends as KILLED
            run(cfg, resume=resume, log=lambda m: print(m, flush=True), **kw)
    except TrainSetupError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # said by say_how_to_resume
        return 130
    return 0


def export_cli(prog: str, do_export) -> int:
    """An export for a CLI: prints what ``do_export()`` returns; a missing or wrong checkpoint, a refused target
    or a failed verification is one line and exit 2."""
    import sys

    from g2face_eval.zoo import WeightError

    try:
        print(do_export())
    except (ValueError, OSError, WeightError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    return 0


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli("g2face-eval train", lambda: config_from_args(args), args.resume)


if __name__ == "__main__":
    raise SystemExit(cli())
