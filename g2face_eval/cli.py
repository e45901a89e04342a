"""``g2face-eval <command> [args]``: each command is owned by one module exposing ``cli(argv) -> int``."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "weights": ("g2face_eval.zoo", "model zoo: `weights list` shows every weight file, available or missing"),
    "validate": ("g2face_eval.oracles.validation", "validate face oracles on LFW View 2 (published numbers)"),
    "evaluate": ("g2face_eval.harness.evaluate", "evaluate methods x datasets, log to MLflow"),
    "report": ("g2face_eval.reports.build", "build figures, tables and the HTML report from an evaluation"),
    "train": ("g2face_eval.training.train", "train G2Face or pre-train its StyleGAN2 (torchrun-compatible)"),
    "train-baseline": ("baselines.learned.train", "train or export a learned baseline: fit | inpaint | riddle"),
    "bench": ("g2face_eval.bench", "latency / throughput / memory benchmark"),
    "cache": ("g2face_eval.harness.cache", "size of the shared cache; --prune-older-than DAYS deletes old entries"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: g2face-eval <command> [args]\n\ncommands:")
        width = max(map(len, COMMANDS))
        for name, (_, doc) in COMMANDS.items():
            print(f"  {name:<{width}}  {doc}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"g2face-eval: unknown command {name!r}; known: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    from .allocator import tune_malloc

    tune_malloc()  # large short-lived CPU tensors: fewer page faults (allocator.py; G2FACE_MALLOC_TUNING=0 opts out)
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.cli(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
