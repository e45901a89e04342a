"""LFW View 2 validation of the face oracles (``g2face-eval validate``).

Protocol (standard "unrestricted, labeled outside data" verification):
  * pairs from ``lfw/pairs.txt`` (10 folds x (300 same + 300 different) pairs), deep-funneled images;
  * every image: our own YuNet detection (the face nearest the image centre, weighted by score) and our own
    5-point alignment; when YuNet finds nothing, a fixed centre crop is used (the average LFW-deepfunneled
    landmark positions) and counted as ``fallback_centre_crop``;
  * cosine similarity of L2-normalised embeddings; 10-fold accuracy: for each fold the threshold maximising
    accuracy on the other 9 folds (searched over the midpoints of their sorted similarities; ties: the middle
    of the best candidates) is applied to the held-out fold; mean and std over folds are reported (a subset
    with fewer than 10 official folds is split into 10 balanced sub-folds);
  * threshold at FAR 1e-3: over all negative pairs (3000 on the full set), t is the (floor(FAR * N) + 1)-th
    largest negative similarity, so "same person iff similarity > t" accepts at most floor(FAR * N)
    negatives (3 of 3000); the recorded threshold is the smallest multiple of 1e-6 above t
    (``operating_threshold``), because the metrics count "similarity >= threshold" as the same person (ties go
    to the attacker); FAR and TAR are reported at the recorded threshold with that rule.
The full run writes ``oracles/thresholds.json`` which ``Recognizer.threshold`` reads.
Embeddings and detections are cached under ``settings.cache_dir()/lfw`` (keyed by image path, size, mtime).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import atomic, settings

CACHE_VERSION = "v1"
PUBLISHED = {"sface": 99.40, "dlib": 99.38}
FAR = 1e-3
# mean landmark positions of the face in a 250x250 LFW deep-funneled image (centre-crop fallback)
_LFW_CENTRE_LANDMARKS_250 = np.array(
    [[103.5, 112.0], [146.5, 112.0], [125.0, 136.0], [107.5, 157.0], [142.5, 157.0]], dtype=np.float32
)


@dataclass
class Pair:
    a: str  # relative image path
    b: str
    same: bool
    fold: int


def lfw_root(datasets_root: str | os.PathLike | None = None) -> Path:
    root = Path(datasets_root) if datasets_root else settings.datasets_root()
    if root is None:
        raise FileNotFoundError("no datasets root: set G2FACE_DATASETS or pass --datasets-root")
    lfw = Path(root) / "lfw"
    if not (lfw / "pairs.txt").is_file():
        raise FileNotFoundError(f"LFW not found: expected {lfw / 'pairs.txt'} and {lfw / 'lfw-deepfunneled'}")
    return lfw


def read_pairs(lfw: Path) -> list[Pair]:
    """The View 2 pairs of ``lfw/pairs.txt`` (parsed and checked by ``datasets.parse_lfw_pairs``), as image paths
    relative to ``lfw``; ValueError on a malformed file."""
    from g2face_eval.data.datasets import parse_lfw_pairs

    def rel(p: Path) -> str:
        return p.relative_to(lfw).as_posix()

    return [Pair(rel(q.path1), rel(q.path2), q.same, q.fold)
            for q in parse_lfw_pairs(lfw / "pairs.txt", lfw / "lfw-deepfunneled")]


# ---------------------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------------------
def best_threshold(sims: np.ndarray, same: np.ndarray) -> float:
    """Threshold maximising accuracy of the rule "sim > t" on (sims, same): candidates are the midpoints of
    the sorted unique similarities; among equally good candidates the middle one of the best run is taken."""
    sims, same = np.asarray(sims, dtype=np.float64), np.asarray(same, dtype=bool)
    s = np.unique(sims)
    cands = np.concatenate([[s[0] - 1e-6], (s[1:] + s[:-1]) / 2, [s[-1] + 1e-6]])
    acc = _acc_fast(sims, same, cands)
    best = np.flatnonzero(acc >= acc.max() - 1e-12)
    return float(cands[best[len(best) // 2]])


def _acc_fast(sims: np.ndarray, same: np.ndarray, cands: np.ndarray) -> np.ndarray:
    order = np.argsort(sims)
    s, y = sims[order], same[order].astype(np.int64)
    k = np.searchsorted(s, cands, side="right")  # number predicted negative
    neg_below = np.concatenate([[0], np.cumsum(1 - y)])[k]
    pos_above = y.sum() - np.concatenate([[0], np.cumsum(y)])[k]
    return (neg_below + pos_above) / len(s)


def kfold_accuracy(sims: np.ndarray, same: np.ndarray, folds: np.ndarray) -> tuple[float, float, list[float]]:
    accs, ths = [], []
    for f in np.unique(folds):
        test = folds == f
        t = best_threshold(sims[~test], same[~test])
        ths.append(t)
        accs.append(float(((sims[test] > t) == same[test]).mean()))
    return float(np.mean(accs)), float(np.std(accs)), ths


def threshold_at_far(neg_sims: np.ndarray, far: float = FAR) -> float:
    """Threshold t such that at most floor(far*N) negatives satisfy sim > t (see module doc)."""
    s = np.sort(np.asarray(neg_sims))[::-1]
    k = int(np.floor(far * len(s)))
    return float(s[min(k, len(s) - 1)])


def operating_threshold(t: float) -> float:
    """The recorded operating threshold for ``t`` from ``threshold_at_far``: the smallest multiple of 1e-6
    strictly above t. The metrics count a similarity equal to the threshold as the same person (ties go to
    the attacker, ``metrics.identity``), so the recorded value must lie above the (floor(far*N)+1)-th negative
    itself; rounding t to 6 digits could land on or below it and accept one negative more than ``far``."""
    return (np.floor(t * 1e6) + 1) / 1e6


# ---------------------------------------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------------------------------------
def pick_subject_face(faces, shape):
    """The subject among the detected ``faces`` of an image of ``shape``: the highest score minus the distance
    of the box centre from the image centre in units of the image's longer side (None if no face). One rule
    for the LFW validation and the harness's preparation of unaligned datasets (``harness.prepare``): on
    CelebA ``celeb_187/044157.jpg`` a blurry background face in a corner scores 0.911 against the subject's
    0.909, and the highest score alone would crop the bystander under the subject's label."""
    h, w = shape[:2]
    c = np.array([w / 2, h / 2])
    best, best_s = None, -np.inf
    for f in faces:
        centre = f.box[:2] + f.box[2:] / 2
        s = f.score - np.linalg.norm(centre - c) / max(h, w)
        if s > best_s:
            best, best_s = f, s
    return best



def centre_face(shape) -> object:
    from .detectors import Face

    h, w = shape[:2]
    lm = _LFW_CENTRE_LANDMARKS_250 * np.array([w / 250.0, h / 250.0], dtype=np.float32)
    return Face(box=np.array([w * 0.3, h * 0.25, w * 0.4, h * 0.5], np.float32), landmarks5=lm, score=0.0)


def _cache_path(lfw: Path, what: str) -> Path:
    return settings.cache_dir() / "lfw" / f"{what}_{CACHE_VERSION}.npz"


def _load_cache(p: Path) -> dict:
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError):
        return {}


def _save_cache(p: Path, d: dict) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **d)

    atomic.write_via(p, write)


def _key(lfw: Path, rel: str) -> str:
    st = (lfw / rel).stat()
    return f"{rel}|{st.st_size}|{st.st_mtime_ns}"


def _worker_init(names, pool_worker: bool = False):
    global _W
    if pool_worker:  # a forked worker must die on the pool's SIGTERM, whatever handler its parent installed
        import signal

        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        import torch

        torch.set_num_threads(1)  # one process per core; the torch recognizers must not oversubscribe
    from .detectors import get_detector
    from .recognizers import get_recognizer

    _W = (get_detector("yunet"), {n: get_recognizer(n) for n in names})


def _process(path: str, names: list[str]):
    import cv2

    det, recs = _W
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"cannot read {path}")
    img = np.ascontiguousarray(bgr[:, :, ::-1])
    face = pick_subject_face(det.detect(img), img.shape)
    fallback = face is None
    if fallback:
        face = centre_face(img.shape)
    out = {n: recs[n].embed([img], [face])[0] for n in names}
    return path, fallback, face.landmarks5, out


def _cache_names(names: list[str]) -> dict[str, str]:
    """The cache file stem of each recognizer: its fingerprint (name, code version, weight files) and the
    detector's weights, so that other weights or code never reuse the embeddings of these."""
    from .. import zoo
    from .recognizers import fingerprint

    det = zoo.digest(zoo.path("yunet"))[:12]
    return {n: f"yunet-{det}_{fingerprint(n)}" for n in names}


def compute_embeddings(lfw: Path, rels: list[str], names: list[str], workers: int = 1, progress: bool = True):
    """{recognizer: {rel: embedding}}, fallbacks set, using and extending the on-disk cache."""
    stems = _cache_names(names)
    caches = {n: _load_cache(_cache_path(lfw, f"emb_{stems[n]}")) for n in names}
    fbs = {n: _load_cache(_cache_path(lfw, f"fallback_{stems[n]}")) for n in names}
    keys = {r: _key(lfw, r) for r in rels}
    todo = [r for r in rels if any(keys[r] not in caches[n] or keys[r] not in fbs[n] for n in names)]
    if todo:
        from tqdm import tqdm

        bar = tqdm(
            total=len(todo), desc=f"LFW embeddings ({'+'.join(names)})", disable=not progress, file=sys.stderr
        )
        last_save = time.time()

        def save():
            for n in names:
                _save_cache(_cache_path(lfw, f"emb_{stems[n]}"), caches[n])
                _save_cache(_cache_path(lfw, f"fallback_{stems[n]}"), fbs[n])

        args = [str(lfw / r) for r in todo]
        rel_of = {str(lfw / r): r for r in todo}
        def consume(results) -> None:
            nonlocal last_save
            for path, fb, _, out in results:
                r = rel_of[path]
                for n in names:
                    caches[n][keys[r]] = out[n]
                    fbs[n][keys[r]] = np.array(fb)
                bar.update(1)
                if time.time() - last_save > 60:
                    save()
                    last_save = time.time()

        if workers > 1:
            import multiprocessing as mp

            ctx = mp.get_context("fork")
            pool = ctx.Pool(workers, initializer=_worker_init, initargs=(names, True))
            try:
                consume(pool.imap_unordered(_star, [(a, names) for a in args], chunksize=8))
                pool.close()  # normal end: workers exit on their own
            except BaseException:
                pool.terminate()
                raise
            finally:
                pool.join()
        else:
            _worker_init(names)
            consume(_process(a, names) for a in args)
        bar.close()
        save()
    emb = {n: {r: caches[n][keys[r]] for r in rels} for n in names}
    fallbacks = {r for r in rels if any(bool(fbs[n][keys[r]]) for n in names)}
    return emb, fallbacks


def _star(a):
    return _process(*a)


# ---------------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------------
def validate(
    datasets_root=None,
    recognizers=None,
    folds: list[int] | None = None,
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """Run the protocol on the given folds (default all 10) for ``recognizers`` (default
    ``recognizers.DEFAULT_RECOGNIZERS``). Returns a results dict."""
    t0 = time.time()
    if recognizers is None:
        from .recognizers import DEFAULT_RECOGNIZERS

        recognizers = DEFAULT_RECOGNIZERS
    lfw = lfw_root(datasets_root)
    pairs = read_pairs(lfw)
    if folds is not None:
        pairs = [p for p in pairs if p.fold in set(folds)]
    rels = list(dict.fromkeys(r for p in pairs for r in (p.a, p.b)))  # fold order: partial runs are usable
    emb, fallbacks = compute_embeddings(lfw, rels, list(recognizers), workers=workers, progress=progress)
    same = np.array([p.same for p in pairs])
    fold_ids = np.array([p.fold for p in pairs])
    if len(np.unique(fold_ids)) < 10:  # fewer than 10 official folds: split into 10 balanced sub-folds
        idx_pos, idx_neg = np.flatnonzero(same), np.flatnonzero(~same)
        fold_ids = np.zeros(len(pairs), int)
        fold_ids[idx_pos] = np.arange(len(idx_pos)) * 10 // len(idx_pos)
        fold_ids[idx_neg] = np.arange(len(idx_neg)) * 10 // len(idx_neg)
    results: dict = {
        "dataset": "LFW View 2 (pairs.txt), deep-funneled 250x250",
        "n_pairs": len(pairs),
        "n_images": len(rels),
        "folds": sorted({p.fold for p in pairs}),
        "detector": "yunet",
        "fallback_centre_crop": len(fallbacks),
        "protocol": (
            "10-fold verification: threshold maximising accuracy on 9 folds applied to the held-out fold "
            "(mean over folds); cosine similarity of L2-normalised embeddings, "
            "same iff similarity > threshold; "
            "threshold at FAR 1e-3 = the smallest multiple of 1e-6 above the (floor(FAR*N)+1)-th largest "
            "similarity of the N negative pairs; the metrics count similarity >= threshold as the same person"
        ),
        "recognizers": {},
    }
    from .recognizers import RECOGNIZERS, weights_sha256

    for n in recognizers:
        a = np.stack([emb[n][p.a] for p in pairs])
        b = np.stack([emb[n][p.b] for p in pairs])
        sims = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        mean, std, _ = kfold_accuracy(sims, same, fold_ids)
        t = operating_threshold(threshold_at_far(sims[~same], FAR))
        results["recognizers"][n] = {
            "accuracy": round(100 * mean, 3),
            "accuracy_std": round(100 * std, 3),
            "published_accuracy": PUBLISHED.get(n),
            "threshold": float(t),
            "far": FAR,
            # at the recorded threshold, with the metrics' rule (same iff similarity >= threshold)
            "far_measured": float((sims[~same] >= t).mean()),
            "tar_at_threshold": round(float((sims[same] >= t).mean()), 6),
            "n_negatives": int((~same).sum()),
            "n_pairs": len(pairs),
            "folds": results["folds"],
            "fallback_centre_crop": len(fallbacks),
            "n_images": len(rels),
            "weights_sha256": weights_sha256(RECOGNIZERS.get(n).weights),  # the threshold holds for these only
        }
    results["seconds"] = round(time.time() - t0, 1)
    return results


def write_thresholds(results: dict, path: Path | None = None) -> Path:
    from .recognizers import THRESHOLDS_FILE

    path = path or THRESHOLDS_FILE
    old = {}
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    recs = dict(old.get("recognizers", {}))
    recs.update(results["recognizers"])
    keep = ("dataset", "detector", "protocol")  # run-specific counts are recorded per recognizer
    out = {k: v for k, v in results.items() if k in keep}
    out["command"] = "g2face-eval validate --datasets-root <root> [--folds ...] [--workers N]"
    out["recognizers"] = recs
    atomic.write_text(path, json.dumps(out, indent=2) + "\n")  # a kill mid-write leaves the old file, never half
    return path


def cli(argv: list[str] | None = None) -> int:
    from .recognizers import DEFAULT_RECOGNIZERS

    ap = argparse.ArgumentParser(prog="g2face-eval validate", description=__doc__.split("\n")[0])
    ap.add_argument("--datasets-root", default=None, help="root holding lfw/ (default: $G2FACE_DATASETS)")
    ap.add_argument("--recognizers", default=",".join(DEFAULT_RECOGNIZERS),
                    help=f"comma-separated (default {','.join(DEFAULT_RECOGNIZERS)}, "
                    "oracles.recognizers.DEFAULT_RECOGNIZERS)")
    ap.add_argument("--folds", default=None, help="comma-separated fold indices 0-9 (default: all)")
    ap.add_argument("--workers", type=int, default=1, help="embedding processes (default 1)")
    ap.add_argument("--no-write", action="store_true", help="do not update oracles/thresholds.json")
    ap.add_argument(
        "--write-partial",
        action="store_true",
        help="also write thresholds.json from a subset of folds (recorded per recognizer)",
    )
    args = ap.parse_args(argv or [])
    folds = [int(x) for x in args.folds.split(",")] if args.folds else None
    try:
        res = validate(args.datasets_root, args.recognizers.split(","), folds, workers=args.workers)
    except (FileNotFoundError, ValueError) as e:  # no LFW here, a malformed pairs.txt
        print(f"g2face-eval validate: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=2))
    ok = True
    for n, r in res["recognizers"].items():
        pub = r.get("published_accuracy")
        if pub is not None and folds is None and abs(r["accuracy"] - pub) > 0.5:
            ok = False
            print(
                f"WARNING: {n} accuracy {r['accuracy']:.2f}% is > 0.5 points from published {pub}%",
                file=sys.stderr,
            )
    if not args.no_write and (folds is None or args.write_partial):
        few = {n: r["n_negatives"] for n, r in res["recognizers"].items() if r["n_negatives"] * FAR < 1}
        if few:  # FAR 1e-3 over fewer than 1,000 negatives is a threshold above every negative (FAR 0 measured)
            print(f"g2face-eval validate: not writing thresholds.json: FAR {FAR:g} needs at least {round(1 / FAR)} "
                  f"different-person pairs, these folds have {few} (4 or more folds have enough)", file=sys.stderr)
            return 2
        print(f"wrote {write_thresholds(res)}", file=sys.stderr)
    return 0 if ok else 1
