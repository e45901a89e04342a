"""Peak-RSS benchmark of ``evaluate`` at two dataset sizes (not a timed test).

    python scripts/mem_bench.py --sizes 1000,20000 [--method pixelate_8] [--out bench_mem.json]

Each size runs in a fresh subprocess (so peak RSS = that evaluation's own peak, from getrusage) on the
embedded faces repeated under distinct ids (dataset option ``repeat``, ids ``<face>#r<k>``) up to N images.
Cheapest configuration: one baseline method, the SFace recognizer only, no extra detectors, no bootstrap
resampling beyond 10, no latency repeats; EfficientNet-lite0 Fréchet features on unless ``--no-features``;
``--no-mesh`` skips the face mesh. Prints and writes {size: {peak_rss_mb, wall_s}} and the growth.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def child(n: int, method: str, tmp: str, mesh: bool, features: bool) -> None:
    from g2face_eval.data.datasets import EmbeddedDataset
    from g2face_eval.harness import evaluate as E

    repeat = -(-n // len(EmbeddedDataset().ids()))

    t0 = time.perf_counter()
    E.evaluate(
        {
            "methods": [method],
            "datasets": ["embedded"],
            "dataset_options": {"embedded": {"repeat": repeat, "limit": n}},
            "recognizers": ["sface"],
            "detectors": [],
            "face_mesh": mesh,
            "feature_extractors": None if features else [],
            "batch_size": 32,
            "bootstrap_samples": 10,
            "latency_repeats": 1,
            "samples_per_grid": 1,
            "results_dir": f"{tmp}/results",
            "cache_dir": f"{tmp}/cache",
            "reports_dir": f"{tmp}/reports",
        },
        progress=False,
        quiet=True,
    )
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"n": n, "peak_rss_mb": round(peak_mb, 1), "wall_s": round(wall, 1)}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,20000")
    ap.add_argument("--method", default="pixelate_8")
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-mesh", action="store_true", help="skip the face-mesh attribute metrics (faster)")
    ap.add_argument("--no-features", action="store_true", help="skip the Fréchet feature extractor (faster)")
    ap.add_argument("--_child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_tmp", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child is not None:
        child(a._child, a.method, a._tmp, not a.no_mesh, not a.no_features)
        return 0
    res = {}
    for n in [int(s) for s in a.sizes.split(",")]:
        with tempfile.TemporaryDirectory(prefix="g2face_membench_") as tmp:
            env = {
                **os.environ,
                "PYTHONPATH": str(REPO),
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            }
            p = subprocess.run(
                [sys.executable, __file__, "--_child", str(n), "--method", a.method, "--_tmp", tmp,
                 *(["--no-mesh"] if a.no_mesh else []), *(["--no-features"] if a.no_features else [])],
                env=env,
                capture_output=True,
                text=True,
            )
            if p.returncode != 0:
                print(p.stderr[-3000:], file=sys.stderr)
                return 1
            r = json.loads(p.stdout.strip().splitlines()[-1])
            res[n] = r
            print(r, flush=True)
    sizes = sorted(res)
    if len(sizes) >= 2:
        lo, hi = res[sizes[0]]["peak_rss_mb"], res[sizes[-1]]["peak_rss_mb"]
        print(f"peak RSS growth {sizes[0]} -> {sizes[-1]} images: {100 * (hi - lo) / lo:+.1f}%")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
