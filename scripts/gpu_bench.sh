#!/usr/bin/env bash
# One-call GPU latency sweep for a lent H200/H100 (see docs/BENCH.md). Writes bench.json, bench_latency.png and
# bench.log into the folder given as $1 (on the device machine: "$OUT"). Designed to finish in < 8 minutes
# (budget 330 s of cells + a compile cell only with >= 100 s of budget left + start-up):
# cells are skipped (status "skipped", reason recorded) once --time-budget is spent, and bench.json is
# rewritten atomically after every cell, so a killed run still returns everything measured so far.
#
#   run(command="bash scripts/gpu_bench.sh $OUT", timeout_s=540)          # on the device machine
#   bash scripts/gpu_bench.sh /tmp/gpu_dry --device cpu                    # CPU dry run (tiny sweep)
#
# Extra arguments after the folder are passed to `g2face-eval bench` and override the defaults below.
# Then, here: `g2face-eval bench --ingest <files_at>/bench.json` logs the results to MLflow and redraws the
# figure (the device image has no mlflow).
set -euo pipefail
OUT_DIR="${1:?usage: scripts/gpu_bench.sh OUT_DIR [bench args...]}"
shift
cd "$(dirname "$0")/.."
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
if [ -x .venv/bin/python ] && ! "$PY" -c "import torch" 2>/dev/null; then PY=.venv/bin/python; fi

DEVICE=cuda
for a in "$@"; do case "$a" in cpu|--device=cpu) DEVICE=cpu ;; esac; done

if [ "$DEVICE" = cuda ]; then
  # what the GPU is and whether anything else is on it (the log is the first thing to read)
  nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.sm,clocks.max.sm \
    --format=csv 2>&1 | tee "$OUT_DIR/bench.log" || true
  DEFAULTS=(--device cuda --configs official,shipped,tiny --batches 1,8,32,64,128
            --variants fp32,bf16,bf16_cl,fp16_cl,fp32_graph,bf16_graph,bf16_cl_graph,bf16_cl_compile,bf16_cl_compile_graph
            --compile-batches 32,64 --compile-ops anonymize --compile-reserve 100 --compile-timeout 150
            --warmup 3 --repeats 10 --time-budget 330)
else
  # dry run: same code path, smallest sweep (the graph/compile variants are recorded as skipped on CPU)
  DEFAULTS=(--device cpu --configs tiny --batches 1 --variants fp32,bf16_cl_graph,bf16_cl_compile
            --methods identity,pixelate_16 --warmup 0 --repeats 1 --time-budget 300)
fi

set -o pipefail
"$PY" -m g2face_eval bench "${DEFAULTS[@]}" --out "$OUT_DIR" --no-mlflow "$@" 2>&1 | tee -a "$OUT_DIR/bench.log"
ls -la "$OUT_DIR"
