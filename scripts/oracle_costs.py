"""Per-image cost of each evaluation oracle on real faces (not a timed test; numbers depend on the machine).

    python scripts/oracle_costs.py [N] --datasets-root ../shared/datasets   (or $G2FACE_DATASETS)

Loads the first N (default 32) celebahq256 test faces, blurs them (sigma 4) as a stand-in anonymized output,
and prints ms per image (best of 3 passes after a warm-up) for: alignment + embedding per recognizer, each
default detector (``detect``, and ``finds``: the detection-rate decision at the subject's face, the harness's
call), the face mesh of the subject, each Fréchet feature extractor, PSNR and SSIM -- the work the
harness does per output image (with the CLI's malloc settings, ``allocator.tune_malloc``).
"""

from __future__ import annotations

import argparse
import tempfile

import cv2
import torch

from g2face_eval import bench
from g2face_eval.allocator import tune_malloc
from g2face_eval.harness import config as C
from g2face_eval.harness.evaluate import Oracles, _features, _psnr, _ssim
from g2face_eval.harness.prepare import DatasetSource, Preparer, load_prepare
from g2face_eval.harness.records import ArrayCache


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("n", nargs="?", type=int, default=32)
    ap.add_argument("--datasets-root", default=None)
    a = ap.parse_args()
    tune_malloc()  # as the CLI does for an evaluation: the same allocator behaviour as the harness
    cfg = C.defaults()
    if a.datasets_root:
        cfg["datasets_root"] = a.datasets_root
    src = DatasetSource("celebahq256", {**cfg, "dataset_options": {"celebahq256": {"split": "test"}}})
    items, _ = load_prepare(src, Preparer(int(cfg["image_size"])), src.ids[: a.n])
    imgs, faces = [it.image for it in items], [it.face for it in items]
    anon = [cv2.GaussianBlur(im, (0, 0), 4) for im in imgs]
    O = Oracles(cfg, ArrayCache(tempfile.mkdtemp()))  # noqa: E741

    def tm(name, fn):  # one warm-up pass (lazy model set-up), then the best of 3
        best = min(bench.time_fn(fn, torch.device("cpu"), warmup=1, repeats=3)["times_ms"])
        print(f"{name:22s} {best / len(imgs):8.2f} ms/img", flush=True)

    for r, rec in O.recognizers.items():
        tm(f"align_{r}", lambda rec=rec: [rec.align(x, f) for x, f in zip(anon, faces, strict=True)])
        tm(f"embed_{r}", lambda rec=rec: rec.embed(anon, faces))
    for d, det in O.detectors.items():
        tm(f"detect_{d}", lambda det=det: [det.detect(x) for x in anon])
        tm(f"finds_{d}", lambda det=det: [det.finds(x, f.box) for x, f in zip(anon, faces, strict=True)])
    tm("mesh", lambda: [O.mesh_of(x, subject=f) for x, f in zip(anon, faces, strict=True)])
    for n, ext in O.extractors.items():
        tm(f"features_{n}", lambda ext=ext: _features(ext, anon))
    tm("psnr", lambda: _psnr(anon, imgs))
    tm("ssim", lambda: _ssim(anon, imgs))
    print(f"threads: torch {torch.get_num_threads()}, cv2 {cv2.getNumThreads()}; {len(imgs)} faces")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
