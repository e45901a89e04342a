"""``evaluate(config)``: every method x every dataset on the same faces, with per-image records, aggregate
table (95% CIs: Wilson for rates, bootstrap otherwise), MLflow logging and resume.

Pipeline per dataset: load -> prepare to ``image_size`` (aligned datasets: centre square crop + resize;
unaligned: FFHQ crop from the YuNet landmarks) -> detect the face on the prepared original (its landmarks are
where every anonymized/recovered image is embedded, so every face is scored even when a detector no longer
finds it). Images that fail to load or have no face become failure records; the run continues.

Per (method, dataset, batch): anonymize with the per-image key (and, for reversible methods, with a second key
for diversity, recover with the right key and with a wrong key); outputs are quantised to uint8 and cached on
disk; metrics are computed per image; the batch's records are persisted and skipped on rerun.

``python -m g2face_eval evaluate --help`` for the flags; see ``harness/config.py`` for the config file.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from g2face_eval.anonymizer import Anonymizer, derive_keys
from g2face_eval.harness import config as C
from g2face_eval.harness.prepare import (
    META_COLUMNS,
    Chunk,
    DatasetSource,
    EmptyDatasetError,
    Gallery,
    Item,
    Preparer,
    PrepStore,
    drop_images,
    load_images,
    prepare_chunk,
    prepare_gallery,
)
from g2face_eval.harness.prepare import resize as _resize
from g2face_eval.harness.records import (
    ArrayCache,
    BatchStore,
    CorruptRecordError,
    ImageCache,
    RunLockedError,
    acquire_run_lock,
    atomic_write_json,
    digest,
    release_run_lock,
    write_table,
)
from g2face_eval.harness.tracking import software
from g2face_eval.imaging import to_tensor, to_uint8
from g2face_eval.metrics.base import PSNR_CAP_DB  # noqa: F401 - re-exported: E.PSNR_CAP_DB

log = logging.getLogger("g2face_eval.evaluate")


class Interrupted(RuntimeError):
    """Raised by the test hook ``_interrupt_after`` to simulate a killed run."""


# Errors of the machine, not of a method on an image: a full disk or an unwritable cache folder (OSError:
# ENOSPC, ENOTDIR, EACCES, ...), exhausted host or GPU memory. Recorded as per-image "method errors" they would
# be persisted as done and never retried; instead the run stops (``RunAborted``) without persisting the batch,
# and rerunning the command resumes and computes it.
ENVIRONMENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    MemoryError,
    getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),
)


class ConfigurationError(ValueError):
    """A setting the run cannot use, found while setting it up (options a method refuses, no recognizer whose
    weights are here): the CLI prints it in one line and exits 2; nothing was computed."""


class RunAborted(RuntimeError):
    """An environment error (``ENVIRONMENT_ERRORS``) stopped the run; the batch it hit was not persisted, every
    batch persisted before is kept, and rerunning the same command resumes."""


# ----------------------------------------------------------------------------------------------------------
# oracles and metric engines
# ----------------------------------------------------------------------------------------------------------
class Oracles:
    """Recognizers, detectors, face mesh, LPIPS and Fréchet feature extractors, loaded once per evaluation."""

    def __init__(self, cfg: dict, cache: ArrayCache) -> None:
        from g2face_eval.oracles import detectors as Dt
        from g2face_eval.oracles import recognizers as R

        self.cfg = cfg
        self.cache = cache
        self.unavailable: dict[str, str] = {}
        names = cfg.get("recognizers")
        if not names:
            avail = set(getattr(R, "available_recognizers", lambda: R.DEFAULT_RECOGNIZERS)())
            names = [n for n in R.DEFAULT_RECOGNIZERS if n in avail]
        self.recognizers = {}
        self.thresholds: dict[str, float | None] = {}
        for n in names:
            try:
                r = R.get_recognizer(n)
                threshold = r.threshold  # snapshot: fixed for the whole run
            except Exception as e:  # noqa: BLE001 - missing weights: reported, not faked
                self.unavailable[f"recognizer_{n}"] = str(e)
            else:  # both or neither: a recognizer without its threshold entry would fail while scoring
                self.recognizers[n], self.thresholds[n] = r, threshold
        if not self.recognizers:
            missing = self.unavailable or {"recognizers": f"none of {', '.join(R.DEFAULT_RECOGNIZERS)} has its "
                                                          "weights here (g2face-eval weights list)"}
            raise ConfigurationError(f"no recognizer available: {missing}")
        # decided here, from the thresholds in force, not as a side effect of scoring a batch: a rerun that
        # finds every batch done reports the same unavailable metrics (unavailable.json, MLflow tag)
        for n, t in self.thresholds.items():
            if n in self.recognizers and t is None:
                self.unavailable[f"deid_success_rate_{n}"] = (
                    f"{n}: no FAR-1e-3 threshold validated with these weight files (run `g2face-eval validate`); "
                    "similarities only"
                )
        # the realism reference-feature cache lives in the run's cache folder (config key ``cache_dir``)
        self.cache_dir = C.cache_root(cfg)
        self.detectors = {}
        for n in cfg.get("detectors") or ():
            try:
                self.detectors[n] = Dt.get_detector(n)
            except Exception as e:  # noqa: BLE001
                self.unavailable[f"detection_rate_{n}"] = str(e)
        self.mesh = None
        if not cfg.get("face_mesh", True):
            self.unavailable["attributes"] = "disabled by the configuration (face_mesh = false)"
        else:
            try:
                from g2face_eval.oracles.geometry import get_face_mesh

                self.mesh = get_face_mesh()
            except Exception as e:  # noqa: BLE001
                self.unavailable["attributes"] = str(e)
        self.lpips = _lpips(self.unavailable)
        self.extractors = _feature_extractors(self.unavailable, str(cfg["device"]), cfg.get("feature_extractors"))

    def in_force(self) -> dict:
        """The oracles this run measures with (part of the run's configuration hash): which metrics a run's
        records can have depends on the weights installed, so adding one (LPIPS, Inception) between an
        interrupted run and its rerun starts a new run instead of mixing records with and without it."""
        return {
            "recognizers": dict(sorted(self.thresholds.items())),
            # the weight files (and embedding code version) of each recognizer: prepared embeddings of a run are
            # never resumed with other weights under the same recognizer name
            "recognizer_fingerprints": {n: r.fingerprint for n, r in sorted(self.recognizers.items())},
            "detectors": sorted(self.detectors),
            "face_mesh": self.mesh is not None,
            "lpips": ["alex"] if self.lpips is not None else [],
            "feature_extractors": sorted(self.extractors),
        }

    # embeddings of original images, cached on disk by content
    def embed(
        self,
        rec: str,
        images: list[np.ndarray],
        faces: list,
        ns: str | None = None,
        ids: list[str] | None = None,
    ) -> np.ndarray:
        r = self.recognizers[rec]
        out: list[np.ndarray | None] = [None] * len(images)
        keys = []
        if ns is not None and ids is not None:
            for i, (img, f) in enumerate(zip(images, faces, strict=False)):
                k = digest(r.fingerprint, ns, ids[i], img.tobytes(), np.asarray(f.landmarks5, np.float64).tobytes())
                keys.append(k)
                out[i] = self.cache.get(f"emb_{rec}", k)
        todo = [i for i, o in enumerate(out) if o is None]
        if todo:
            e = np.asarray(r.embed([images[i] for i in todo], [faces[i] for i in todo]), np.float32)
            for j, i in enumerate(todo):
                out[i] = e[j]
                if keys:
                    self.cache.put(f"emb_{rec}", keys[i], e[j])
        return np.stack(out).astype(np.float32)

    def mesh_of(self, img: np.ndarray, subject=None):
        """The face mesh of the subject's face (``subject``: the detectors.Face found on the original), or None (no
        mesh oracle, or that face not meshed); without ``subject``, of the first face the mesh's detector finds."""
        if self.mesh is None:
            return None
        try:
            return self.mesh.analyze(img, subject=subject)
        except Exception:  # noqa: BLE001 - a mesh failure is a per-image "not found"
            return None

    def threshold(self, rec: str) -> float | None:
        """The recognizer's FAR-1e-3 threshold, or None (reported unavailable when the oracles were loaded)."""
        t = self.thresholds[rec]
        return None if t is None else float(t)


def _lpips(unavailable: dict):
    """LPIPS('alex'), or None with the reason in ``unavailable["lpips_alex"]`` (its backbone is a user file)."""
    try:
        from g2face_eval.metrics.image import LPIPS

        return LPIPS("alex")
    except Exception as e:  # noqa: BLE001 - MetricUnavailable (backbone weights absent)
        unavailable["lpips_alex"] = getattr(e, "reason", str(e))
        return None


# the set metrics each feature extractor gives (reported unavailable together when it cannot run)
_EXTRACTOR_METRICS = {"effnet_lite0": ("fd_effnet_lite0", "kid_effnet_lite0"), "inception_fid": ("fid", "kid")}


def _feature_extractors(unavailable: dict, device: str = "cpu", names: list[str] | None = None) -> dict:
    """name -> metrics.realism FeatureExtractor (float batch -> (B,D) features), for the Fréchet metrics:
    "effnet_lite0" (offline, metrics fd_effnet_lite0 / kid_effnet_lite0) always; "inception_fid" (FID/KID) when
    its weights exist."""
    out = {}
    known = tuple(_EXTRACTOR_METRICS)
    if names is not None and set(names) - set(known):
        raise ValueError(f"feature_extractors: unknown {sorted(set(names) - set(known))}; known: {list(known)}")

    def unavailable_for(name: str, reason: str) -> None:
        for metric in _EXTRACTOR_METRICS[name]:
            unavailable[metric] = reason

    try:
        from g2face_eval.metrics import realism
    except Exception as e:  # noqa: BLE001
        for name in known:
            unavailable_for(name, f"metrics.realism not importable: {e}")
        return out
    for name in known:
        if names is not None and name not in names:
            unavailable_for(name, f"disabled by the configuration (feature_extractors = {list(names)})")
            continue
        try:
            out[name] = realism.get_extractor(name, device)
        except Exception as e:  # noqa: BLE001 - MetricUnavailable
            unavailable_for(name, getattr(e, "reason", str(e)))
    return out


def _array_digest(a: np.ndarray) -> str:
    """Content digest of an array, its dtype and shape included (fixed length, so it composes in ``digest``)."""
    a = np.ascontiguousarray(a)
    return f"{a.dtype.str}{a.shape}:" + hashlib.sha256(a.tobytes()).hexdigest()


def _features(ext, images: list[np.ndarray], chunk: int = 32) -> np.ndarray:
    parts = [
        np.asarray(ext(to_tensor(images[s : s + chunk])), np.float64) for s in range(0, len(images), chunk)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 1))


# ----------------------------------------------------------------------------------------------------------
# running a method (with the on-disk output cache)
# ----------------------------------------------------------------------------------------------------------
class MethodRunner:
    def __init__(
        self, name: str, method: Anonymizer, mhash: str, cache: ImageCache, arrays: ArrayCache, device: str
    ) -> None:
        self.name, self.method, self.mhash = name, method, mhash
        self.cache, self.arrays, self.device = cache, arrays, device

    def _ns(self, op: str) -> str:
        return f"{self.name}-{self.mhash}/{op}"

    def _run(
        self,
        op: str,
        dataset: str,
        ids: list[str],
        inputs: list[np.ndarray],
        keys: list[bytes],
        masks: list[np.ndarray | None] | None,
    ) -> tuple[list[np.ndarray], list[float | None], list[np.ndarray | None]]:
        ns = self._ns(op)
        # keyed by the input's pixels (and face mask): the cache is shared across runs, and the same image id
        # prepared under another configuration (image size, mask options) is another input
        ms = masks if masks is not None and self.method.uses_face_mask else [None] * len(inputs)
        ckeys = [
            digest(dataset, i, k, _array_digest(x), _array_digest(m) if m is not None else "no mask")
            for i, k, x, m in zip(ids, keys, inputs, ms, strict=True)
        ]
        # methods cheaper to recompute than to cache (``Anonymizer.cache_outputs``) neither read nor write it
        cached = self.method.cache_outputs
        imgs: list[np.ndarray | None] = [self.cache.get(ns, k) if cached else None for k in ckeys]
        side: list[np.ndarray | None] = [
            self.arrays.get(ns, k) if im is not None else None for im, k in zip(imgs, ckeys, strict=False)
        ]
        todo = [i for i, (im, s) in enumerate(zip(imgs, side, strict=False)) if im is None or s is None]
        if todo:
            # images with a face mask use it, the others the method's own face detection: one call each, so an
            # image's output never depends on whether its batch-mates have masks
            groups = [[i for i in todo if ms[i] is not None], [i for i in todo if ms[i] is None]]
            todo = [i for g in groups for i in g]
            outs = [self._call(op, g, inputs, keys, ms) for g in groups if g]
            u8 = np.concatenate([to_uint8(o.images) for o in outs])
            got_ok = [ok for o in outs for ok in (o.ok if o.ok is not None else [None] * len(o.images))]
            obits = [b for o in outs for b in (o.bits if o.bits is not None else [None] * len(o.images))]
            for j, i in enumerate(todo):
                ok = -1.0 if got_ok[j] is None else float(bool(got_ok[j]))
                bits = (
                    np.asarray(obits[j].detach().cpu().numpy(), np.float32)
                    if obits[j] is not None
                    else np.zeros(0, np.float32)
                )
                s = np.concatenate([[ok], bits]).astype(np.float32)
                if cached:
                    self.cache.put(ns, ckeys[i], u8[j])
                    self.arrays.put(ns, ckeys[i], s)
                imgs[i], side[i] = u8[j], s
        oks = [None if s[0] < 0 else bool(s[0]) for s in side]
        bits = [s[1:] if s.size > 1 else None for s in side]
        return imgs, oks, bits

    def _call(self, op: str, idx: list[int], inputs, keys, masks):
        x = to_tensor([inputs[i] for i in idx]).to(self.device)
        with torch.no_grad():
            if op == "recover":
                return self.method.recover(x, [keys[i] for i in idx])
            fm = None
            if masks[idx[0]] is not None:
                fm = torch.from_numpy(np.stack([masks[i] for i in idx]))[:, None].float().to(self.device)
            return self.method.anonymize(x, [keys[i] for i in idx], face_masks=fm)

    def anonymize(self, dataset, ids, images, keys, masks):
        return self._run("anonymize", dataset, ids, images, keys, masks)

    def recover(self, dataset, ids, images, keys):
        return self._run("recover", dataset, ids, images, keys, None)


# ----------------------------------------------------------------------------------------------------------
# per-batch metrics
# ----------------------------------------------------------------------------------------------------------
@dataclass
class BatchContext:
    """Reference data of one batch (aligned with its items) shared by all methods: the originals' embeddings
    and meshes, and the identification gallery."""

    dataset: str
    orig_emb: dict[str, np.ndarray]  # recognizer -> (n, d)
    mesh: list  # MeshResult | None per item
    gallery: Gallery | None = None

    @classmethod
    def build(cls, chunk: Chunk, arrays: dict[str, np.ndarray], gallery: Gallery | None) -> BatchContext:
        from g2face_eval.oracles.geometry import result_from_landmarks

        lm = arrays.get("mesh_landmarks")
        mesh = [None if lm is None or not np.isfinite(lm[j]).all() else result_from_landmarks(lm[j])
                for j in range(len(chunk.items))]
        return cls(chunk.dataset, chunk.embeddings, mesh, gallery)

    def select(self, idx: list[int]) -> BatchContext:
        """The context of the items at positions ``idx`` (in that order)."""
        return BatchContext(self.dataset, {r: e[idx] for r, e in self.orig_emb.items()},
                            [self.mesh[j] for j in idx], self.gallery)


def _to_batch(imgs: list[np.ndarray]) -> torch.Tensor:
    return to_tensor(imgs)


def _psnr(a: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
    """PSNR of the uint8 images as they are (range 255, exact integer MSE), capped at PSNR_CAP_DB."""
    from g2face_eval.metrics.image import psnr

    u8 = lambda imgs: torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2)  # noqa: E731 - (B,3,H,W) views
    v = psnr(u8(a), u8(b), 255.0).double().numpy()
    return np.minimum(np.nan_to_num(v, posinf=PSNR_CAP_DB), PSNR_CAP_DB)


def _ssim(a: list[np.ndarray] | torch.Tensor, b: list[np.ndarray] | torch.Tensor) -> np.ndarray:
    """SSIM of uint8 images (lists) or of their ``_to_batch`` tensors (converted once, shared by several calls)."""
    from g2face_eval.metrics.image import ssim

    a, b = (x if isinstance(x, torch.Tensor) else _to_batch(x) for x in (a, b))
    return ssim(a, b, 1.0).double().numpy()


def batch_metrics(
    items: list[Item],
    anon: list[np.ndarray],
    ctx: BatchContext,
    oracles: Oracles,
    reversible: bool,
    rec: list[np.ndarray] | None = None,
    rec_wrong: list | None = None,
    anon2: list | None = None,
    extra: dict | None = None,
    rec_ok: list[bool | None] | None = None,
) -> pd.DataFrame:
    """The per-image metric columns of one batch of a method's outputs. ``rec_ok``: per image, whether the
    right-key recovery authenticated (None: the method has no authentication). A recovery that failed closed
    returned its input, not a recovered face: its recovery PSNR/SSIM/LPIPS are NaN (those means are over the
    authenticated recoveries; ``recovery_ok_rate`` says how many) and its identity counts as not recovered."""
    from g2face_eval.metrics import attributes as A
    from g2face_eval.metrics import identity as I

    n = len(items)
    rec_failed = np.array([o is False for o in rec_ok] if rec_ok is not None else [False] * n)
    orig = [it.image for it in items]
    faces = [it.face for it in items]
    cols: dict[str, Any] = {"id": [it.id for it in items], **meta_columns([it.meta for it in items])}
    orig_f, anon_f = _to_batch(orig), _to_batch(anon)  # float batches, each converted once
    cols["psnr"] = _psnr(anon, orig)
    cols["ssim"] = _ssim(anon_f, orig_f)
    if oracles.lpips is not None:
        cols["lpips_alex"] = oracles.lpips(anon_f, orig_f, 1.0).numpy()
    ids = [it.id for it in items]
    ns = ctx.dataset  # embeddings are cached by content (image bytes + landmarks), so any output may share it
    for r in oracles.recognizers:
        eo = ctx.orig_emb[r]
        ea = oracles.embed(r, anon, faces, ns, ids)  # the anonymized image at the ORIGINAL face's landmarks
        sim = I.cosine_similarity(ea, eo)
        thr = oracles.threshold(r)
        cols[f"deid_mean_similarity_{r}"] = sim
        if thr is not None:
            cols[f"deid_success_rate_{r}"] = I.protection_success(sim, thr)
        if ctx.gallery is not None:
            gal, gl = ctx.gallery.embeddings[r], ctx.gallery.labels
            labels = [it.meta["identity"] for it in items]
            ha = I.identification_hits(ea, labels, gal, gl, ks=(1, 5))
            ho = I.identification_hits(eo, labels, gal, gl, ks=(1, 5))
            cols[f"id_rank1_{r}"], cols[f"id_rank5_{r}"] = ha[1], ha[5]
            cols[f"id_rank1_original_{r}"], cols[f"id_rank5_original_{r}"] = ho[1], ho[5]
        if reversible and rec is not None:
            er = oracles.embed(r, rec, faces, ns, ids)
            ew = oracles.embed(r, rec_wrong, faces, ns, ids)
            e2 = oracles.embed(r, anon2, faces, ns, ids)
            if thr is not None:
                ok = I.recovered_success(I.cosine_similarity(er, eo), thr)
                cols[f"recovered_id_success_{r}"] = np.where(rec_failed, 0.0, np.asarray(ok, float))
            cols[f"wrongkey_similarity_{r}"] = I.cosine_similarity(ew, eo)
            cols[f"diversity_similarity_{r}"] = I.cosine_similarity(e2, ea)
    # detection and mesh are taken at the subject's place (the face found on the original): a bystander or a
    # background detection elsewhere in the output is not the subject's face. A detector is told whether an earlier
    # one found the face (``likely``): that may change its cost (dlib-HOG's exact negative), never its decision
    found_before = [False] * n
    for i, (d, det) in enumerate(oracles.detectors.items()):
        found = [det.finds(a, f.box, likely=i == 0 or h) for a, f, h in zip(anon, faces, found_before, strict=True)]
        cols[f"detection_rate_{d}"] = A.detection_rate(found)
        found_before = [h or x for h, x in zip(found_before, found, strict=True)]
    if oracles.mesh is not None:
        pe, sd, nme, ok = [], [], [], []
        for j, a in enumerate(anon):
            mo = ctx.mesh[j]
            ma = oracles.mesh_of(a, subject=faces[j]) if mo is not None else None
            ok.append(mo is not None and ma is not None)
            if not ok[-1]:
                pe.append(np.nan), sd.append(np.nan), nme.append(np.nan)
                continue
            pose_a, pose_o = np.array([[ma.yaw, ma.pitch, ma.roll]]), np.array([[mo.yaw, mo.pitch, mo.roll]])
            pe.append(float(A.pose_error(pose_a, pose_o)[0]))
            sd.append(float(A.mesh_shape_distance(ma.shape_offsets[None], mo.shape_offsets[None])[0]))
            nme.append(float(A.landmark_nme(np.asarray(ma.landmarks)[None], np.asarray(mo.landmarks)[None])[0]))
        cols["pose_error_deg"], cols["mesh_shape_distance"] = pe, sd
        cols["landmark_nme"], cols["mesh_detected_rate"] = nme, ok
    if reversible and rec is not None:
        nan_if_failed = lambda v: np.where(rec_failed, np.nan, np.asarray(v, float))  # noqa: E731
        rec_f, anon2_f = _to_batch(rec), _to_batch(anon2)
        cols["recovery_psnr"] = nan_if_failed(_psnr(rec, orig))
        cols["recovery_ssim"] = nan_if_failed(_ssim(rec_f, orig_f))
        if oracles.lpips is not None:
            cols["recovery_lpips_alex"] = nan_if_failed(oracles.lpips(rec_f, orig_f, 1.0).numpy())
        cols["diversity_lpips_alex" if oracles.lpips is not None else "diversity_ssim"] = (
            oracles.lpips(anon2_f, anon_f, 1.0).numpy() if oracles.lpips is not None else _ssim(anon2_f, anon_f)
        )
    for k, v in (extra or {}).items():
        cols[k] = v
    df = pd.DataFrame(cols)
    for c in df.columns:
        if df[c].dtype == bool:
            df[c] = df[c].astype(float)
    assert len(df) == n
    return df


# ----------------------------------------------------------------------------------------------------------
# aggregation
# ----------------------------------------------------------------------------------------------------------
NON_METRIC = {"id", "dataset", "method", "status", "reason", *META_COLUMNS}


def _spec(name: str):
    """Every column the harness writes is a registered metric (``metrics.base.METRICS``): its direction and
    aggregation are declared there, once. An unregistered column is a programming error, not a guess."""
    from g2face_eval.metrics import base

    return base.spec(name)


def metric_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c not in NON_METRIC and pd.api.types.is_numeric_dtype(df[c])]


def summarize(metric: str, values: np.ndarray, n_boot: int, seed: int) -> dict | None:
    """One per-image metric's finite values -> its declared aggregate with a 95% CI (``metrics.bootstrap.ci``: Wilson
    for rates, percentile bootstrap otherwise; a "rate" whose values are not all 0/1 is averaged as a mean, with a
    warning), or None when no value is finite."""
    from g2face_eval.metrics import bootstrap

    v = values[np.isfinite(values)]
    if v.size == 0:
        return None
    sp = _spec(metric)
    agg = sp.aggregation if sp.aggregation in ("mean", "rate", "median") else "mean"
    if agg == "rate" and not np.isin(v, (0.0, 1.0)).all():
        log.warning("metric %s is declared a rate but has values other than 0/1: aggregated as a mean", metric)
        agg = "mean"
    lo, hi = bootstrap.ci(v, agg, n_boot, seed)
    return dict(metric=metric, value=bootstrap.aggregate(v, agg), ci_lo=lo, ci_hi=hi, n=int(v.size),
                aggregation=agg, higher_is_better=sp.higher_is_better)


def count_rows(n_ok: int, n_total: int) -> list[dict]:
    """The ``n_images`` (processed) and ``n_failed`` rows of a group of ``n_total`` records, ``n_ok`` of them ok."""
    return [dict(metric=name, value=float(count), ci_lo=np.nan, ci_hi=np.nan, n=n_total, aggregation="count",
                 higher_is_better=None) for name, count in (("n_images", n_ok), ("n_failed", n_total - n_ok))]


def aggregate(
    records: pd.DataFrame, set_metrics: list[dict], latency: dict, n_boot: int, seed: int
) -> pd.DataFrame:
    rows = []
    for (method, dataset), g in records.groupby(["method", "dataset"], sort=True):
        ok = g[g["status"] == "ok"]
        rows += [dict(method=method, dataset=dataset, **r) for r in count_rows(len(ok), len(g))]
        for c in metric_columns(ok):
            row = summarize(c, ok[c].to_numpy(dtype=np.float64), n_boot, seed)
            if row is not None:
                rows.append(dict(method=method, dataset=dataset, **row))
    for s in set_metrics:
        sp = _spec(s["metric"])
        rows.append(
            dict(
                method=s["method"],
                dataset=s["dataset"],
                metric=s["metric"],
                value=s["value"],
                ci_lo=np.nan,
                ci_hi=np.nan,
                n=s["n"],
                aggregation="set",
                higher_is_better=sp.higher_is_better,
            )
        )
    for method, lat in sorted(latency.items()):
        for k in ("latency_ms_per_image", "images_per_second", "peak_memory_mb"):
            if k in lat:
                sp = _spec(k)
                rows.append(
                    dict(
                        method=method,
                        dataset="all",
                        metric=k,
                        value=float(lat[k]),
                        ci_lo=np.nan,
                        ci_hi=np.nan,
                        n=int(lat.get("runs", 0)),
                        aggregation=sp.aggregation,
                        higher_is_better=sp.higher_is_better,
                    )
                )
    df = pd.DataFrame(
        rows,
        columns=[
            "method",
            "dataset",
            "metric",
            "value",
            "ci_lo",
            "ci_hi",
            "n",
            "aggregation",
            "higher_is_better",
        ],
    )
    df["higher_is_better"] = df["higher_is_better"].astype(object)
    return df


DEMOGRAPHIC_ATTRIBUTES = ("gender", "race", "age_band")


def demographics(records: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """Every per-image metric per demographic group (gender, race, age band) where labelled, aggregated as
    in the aggregate table (declared aggregation, 95% CI), and each group's ``n_images`` (processed) and
    ``n_failed`` (e.g. no face found), as in the aggregate table: failures that fall on one group are seen, not
    silently left out of its rates. Set metrics (Fréchet distances) are not broken down."""
    cols = ["method", "dataset", "attribute", "group", "metric", "value", "ci_lo", "ci_hi", "n", "aggregation",
            "higher_is_better"]
    rows = []
    metrics = metric_columns(records[records["status"] == "ok"])
    for attr in DEMOGRAPHIC_ATTRIBUTES:
        if attr not in records.columns:
            continue
        sub = records[records[attr].notna()]
        for (method, dataset, grp), g in sub.groupby(["method", "dataset", attr], sort=True):
            ok = g[g["status"] == "ok"]
            key = dict(method=method, dataset=dataset, attribute=attr, group=str(grp))
            rows += [dict(**key, **r) for r in count_rows(len(ok), len(g))]
            for m in metrics:
                row = summarize(m, ok[m].to_numpy(np.float64), n_boot, seed)
                if row is not None:
                    rows.append(dict(**key, **row))
    df = pd.DataFrame(rows, columns=cols)
    df["higher_is_better"] = df["higher_is_better"].astype(object)
    return df


SUMMARY_METRICS = (
    "n_images",
    "n_failed",
    "deid_success_rate_sface",
    "deid_success_rate_dlib",
    "deid_mean_similarity_sface",
    "id_rank1_sface",
    "ssim",
    "fd_effnet_lite0",
    "pose_error_deg",
    "mesh_detected_rate",  # how many faces the pose error averages (it covers only the faces meshed twice)
    "detection_rate_yunet",
    "recovery_ok_rate",
    "recovery_psnr",
    "recovered_id_success_sface",
    "latency_ms_per_image",
)


def _summary_pivot(agg: pd.DataFrame, column: str) -> pd.DataFrame:
    """``column`` of the headline metrics' rows, one row per (dataset, method), one column per metric."""
    a = agg[(agg["dataset"] != "all") & agg["metric"].isin(SUMMARY_METRICS)]
    if a.empty:
        return pd.DataFrame()
    return a.pivot_table(index=["dataset", "method"], columns="metric", values=column, aggfunc="first")


def summary_table(agg: pd.DataFrame) -> pd.DataFrame:
    """Wide view: one row per (method, dataset), the headline metrics as columns (value only)."""
    lat = agg[agg["metric"] == "latency_ms_per_image"].set_index("method")["value"]
    w = _summary_pivot(agg, "value")
    if w.empty:
        return w
    w["latency_ms_per_image"] = [lat.get(m, np.nan) for _, m in w.index]
    cols = [c for c in SUMMARY_METRICS if c in w.columns and w[c].notna().any()]
    return w[cols]


def format_summary(agg: pd.DataFrame) -> str:
    from g2face_eval.reports import tables

    w = summary_table(agg)
    if w.empty:
        return "(no results)"
    # each cell's aggregation: a rate is written as the tables write it
    kinds = _summary_pivot(agg, "aggregation") if "aggregation" in agg else pd.DataFrame()

    def cell(x, i, c) -> str:
        if pd.isna(x):
            return "–"
        if c in ("n_images", "n_failed"):
            return f"{int(x)}"
        rate = c in kinds.columns and i in kinds.index and kinds.at[i, c] == "rate"
        return tables.rate_text(x) if rate else f"{x:.3f}"

    text = pd.DataFrame({c: [cell(x, i, c) for i, x in w[c].items()] for c in w.columns}, index=w.index)
    text.columns.name = w.columns.name
    with pd.option_context("display.width", 250, "display.max_columns", 50, "display.max_rows", 500):
        return text.to_string()


# ----------------------------------------------------------------------------------------------------------
# sample grids
# ----------------------------------------------------------------------------------------------------------
def sample_grid(rows: list[list[np.ndarray | None]], size: int = 128) -> np.ndarray:
    """Rows of images (None -> blank) into one uint8 grid with 2-px gutters."""
    ncols = max(len(r) for r in rows)
    g = 2
    out = np.full((len(rows) * (size + g) + g, ncols * (size + g) + g, 3), 255, np.uint8)
    for i, r in enumerate(rows):
        for j, im in enumerate(r):
            y, x = g + i * (size + g), g + j * (size + g)
            if im is None:
                out[y : y + size, x : x + size] = 230
            else:
                out[y : y + size, x : x + size] = _resize(im, size)
    return out


def _save_png(path: Path, img: np.ndarray) -> None:
    import cv2

    from g2face_eval import atomic

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img[:, :, ::-1]))
    atomic.write_bytes(path, buf.tobytes())


# ----------------------------------------------------------------------------------------------------------
# the evaluation
# ----------------------------------------------------------------------------------------------------------
def meta_columns(metas: list[dict]) -> dict[str, list]:
    """The metadata columns (``META_COLUMNS``) of per-image records, each kept when any image has it."""
    cols = {}
    for k in META_COLUMNS:
        vals = [m.get(k) for m in metas]
        if any(v is not None for v in vals):
            cols[k] = vals
    return cols


def _failure_frame(dataset: str, failures: list[tuple[str, str, dict]], method: str) -> pd.DataFrame:
    return pd.DataFrame({
        "id": [sid for sid, _, _ in failures], "dataset": dataset, "method": method, "status": "failed",
        "reason": [reason for _, reason, _ in failures], **meta_columns([meta for _, _, meta in failures]),
    })


def build_method(name: str, cfg: dict, device: str):
    """The configured method ``name`` (with its ``method_options``), moved to ``device`` when it can move.
    A method that has ``to`` but cannot move there is an error naming it (not a silent CPU fallback)."""
    from g2face_eval import methods as M

    opts = cfg.get("method_options", {}).get(name, {})
    factory = M.METHODS.get(name)
    try:
        method = factory(**opts)
    except (TypeError, ValueError) as e:
        if not opts:
            raise
        try:  # the options' fault only if the method builds without them (else a real error: its traceback)
            factory()
        except Exception:  # noqa: BLE001
            raise e from None
        raise ConfigurationError(f"method_options.{name} = {opts}: {e}") from e
    if hasattr(method, "to"):
        try:
            method.to(device)
        except Exception as e:  # noqa: BLE001
            raise RuntimeError(f"method {name!r} cannot run on device {device!r}: {e}") from e
    return method


# ----------------------------------------------------------------------------------------------------------
# the work: datasets in chunks, every method on each chunk
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Setup:
    """Everything a run (or one rank of it) needs: config, oracles, methods, stores, dataset sources."""

    cfg: dict
    name: str
    chash: str
    run_dir: Path
    oracles: Oracles
    runners: dict[str, MethodRunner]
    sources: dict[str, DatasetSource]
    preparer: Preparer
    master: str

    def batch_key(self, mname: str, ids: list[str]) -> str:
        return BatchStore.batch_key([self.chash, self.runners[mname].mhash, *ids])


def key_fingerprint(key: str) -> str:
    """A public stand-in for the master key in what a run records (HMAC-SHA256 of a fixed label, 16 hex)."""
    import hmac

    return "fingerprint:" + hmac.new(key.encode(), b"g2face-eval key fingerprint", hashlib.sha256).hexdigest()[:16]


def _dataset_source(name: str, cfg: dict) -> DatasetSource:
    """The dataset with its options; an option it does not take, or a bad value (no ``root`` for the folder
    dataset, ``limit = "abc"``), is a DatasetOptionsError naming the dataset (the CLI exits 2), not a TypeError
    from deep inside."""
    from g2face_eval.data.datasets import DatasetNotFoundError, DatasetOptionsError

    try:
        return DatasetSource(name, cfg)
    except DatasetNotFoundError:
        raise
    except (TypeError, ValueError) as e:
        opts = dict(cfg.get("dataset_options", {}).get(name, {}))
        raise DatasetOptionsError(f"dataset {name!r} with options {opts}: {e}") from e


def setup(cfg: dict) -> Setup:
    from g2face_eval import methods as M

    method_names = C.resolve_methods(cfg)
    for m in method_names:
        M.METHODS.get(m)  # fail fast on unknown names
    # the datasets before anything heavy: a missing folder is reported before any model or oracle loads
    sources = {d: _dataset_source(d, cfg) for d in cfg["datasets"]}
    for d, src in sources.items():  # nothing to evaluate: said now, in one line (the CLI exits 2)
        if not src.ids:
            where = C.data_locations(cfg).get(d)
            raise EmptyDatasetError(f"dataset {d!r} has no images{f' (in {where})' if where else ''} with this "
                                    "configuration (its folder, split, options and limit): nothing to evaluate")
    cache_root = C.cache_root(cfg)
    icache, acache = ImageCache(cache_root / "outputs"), ArrayCache(cache_root / "arrays")
    # Oracles next: the oracles in force and their recognizer thresholds are part of the configuration (and
    # of its hash), so a threshold file or a weight file that changes between an interrupted run and its rerun
    # never mixes records.
    oracles = Oracles(cfg, acache)
    # the master key itself is never written (config.json, MLflow params, the config hash): whoever holds it can
    # recompute every image's key and open the keyed payloads; a fingerprint tells runs with other keys apart
    cfg_resolved = {**cfg, "key": key_fingerprint(str(cfg["key"])), "methods": method_names,
                    "oracles": oracles.in_force()}
    name = C.run_name(cfg_resolved)
    device = str(cfg["device"])
    runners = {}
    code = C.code_fingerprint()  # outputs cached (and batches recorded) by other method code are not reused
    for m in method_names:
        method = build_method(m, cfg, device)
        runners[m] = MethodRunner(m, method, C.method_hash(method.config(), code), icache, acache, device)
    return Setup(
        cfg=cfg_resolved,
        name=name,
        chash=C.config_hash(cfg_resolved),
        run_dir=Path(cfg["results_dir"]).expanduser() / name,
        oracles=oracles,
        runners=runners,
        sources=sources,
        preparer=Preparer(int(cfg["image_size"])),
        master=f"{cfg['key']}:{cfg['seed']}",
    )


def compute(
    S: Setup,
    prep: PrepStore | None,
    store: BatchStore,
    *,
    rank: int = 0,
    world: int = 1,
    sync=None,
    progress: bool = True,
    interrupt_after: int | None = None,
    on_saved=None,
) -> list[tuple[str, str, str]]:
    """Prepare every chunk and run every method on it, chunk by chunk (one chunk's images in memory at a
    time), persisting each prepared chunk (``prep``) and each method's batch (``store``) as it completes, so
    an interrupted run resumes where it stopped. Chunk ``i`` of a dataset (and of the ``celeba_id`` gallery)
    belongs to rank ``i % world``; with several ranks, ``sync()`` (a barrier) is called once the gallery
    shards are persisted, then every rank reads the whole gallery from the store. The last ``len(chunks) % world``
    chunks are shared: their owners only prepare them, and after a ``sync()`` every rank runs its
    ``method_share`` of the methods on each of them (rather than one rank working on while the others wait). Returns the
    ``(method, dataset, batch key)`` computed in this call; ``on_saved(n)`` is called after each persisted batch
    with the number persisted so far in this call.

    An image of a chunk with work left that can no longer be read (changed or deleted since it was prepared)
    becomes a failure record of the remaining methods; the chunk's other images are scored. An environment
    error (``ENVIRONMENT_ERRORS``: disk full, unwritable folders, out of memory) stops the run with
    ``RunAborted`` before the batch it hit is persisted."""
    from tqdm import tqdm

    bs = int(S.cfg["batch_size"])
    done: list[tuple[str, str, str]] = []
    for dname, src in S.sources.items():
        gallery = None
        if src.gallery_ids:
            if world > 1:
                prepare_gallery(src, S.preparer, S.oracles, prep, S.chash, bs, shard=(rank, world))
                if sync is not None:
                    sync()
            gallery = prepare_gallery(src, S.preparer, S.oracles, prep, S.chash, bs)
        chunks = list(src.chunks(src.ids, bs))
        labels = set(gallery.labels.tolist()) if gallery is not None else None
        # the last len % world chunks would leave ranks idle while others finish one: their methods are shared
        shared = range(len(chunks) - len(chunks) % world, len(chunks)) if world > 1 and sync is not None else ()
        own = [(i, [] if i in shared else None) for i in range(len(chunks)) if i % world == rank]  # []: prepare only
        phases = (own, [(i, method_share(S, rank, world)) for i in shared])
        bar = tqdm(total=len(own) + len(shared), desc=f"{dname}", unit="batch", disable=not progress, leave=False)
        for phase, work in enumerate(phases):
            if phase == 1 and shared:
                sync()  # every shared chunk is prepared
            for i, methods in work:
                try:
                    _compute_chunk(S, prep, store, src, i, chunks[i], labels, gallery, done, bar, interrupt_after,
                                   on_saved, methods)
                except CorruptRecordError:  # its own message: moved aside, rerun (not the machine's error)
                    raise
                except ENVIRONMENT_ERRORS as e:  # outside a method's batch: preparing the chunk, persisting a batch
                    raise RunAborted(
                        f"{type(e).__name__}: {e} -- an environment error (disk, file system or memory) while "
                        f"working on chunk {i} of {dname}; every batch recorded before is kept: fix the cause and "
                        "rerun the same command to resume") from e
                bar.update(1)
        bar.close()
    return done


def method_share(S: Setup, rank: int, world: int) -> list[str]:
    """The methods rank ``rank`` of ``world`` runs on a shared chunk: a greedy split by expected cost (a reversible
    method scores four images per face: anonymized, second key, recovered, wrong key), in registry order."""
    cost = {m: 4 if r.method.reversible else 1 for m, r in S.runners.items()}
    load, share = [0] * world, {}
    for m in sorted(S.runners, key=lambda m: -cost[m]):  # stable: ties keep the configuration's order
        k = load.index(min(load))
        share[m], load[k] = k, load[k] + cost[m]
    return [m for m in S.runners if share[m] == rank]


def _compute_chunk(S: Setup, prep, store: BatchStore, src: DatasetSource, i: int, ids: list[str], labels,
                   gallery, done: list, bar, interrupt_after: int | None, on_saved,
                   methods: list[str] | None = None) -> None:
    """``compute`` on chunk ``i`` (raw ``ids``) of ``src``: prepared (or read back), then every method (of
    ``methods``, default all) whose batch is not yet persisted."""
    dname = src.name
    chunk, arrays = prepare_chunk(src, S.preparer, S.oracles, prep, S.chash, i, ids, labels)
    if not chunk.items:
        return
    bkeys = {m: S.batch_key(m, chunk.ids) for m in S.runners}
    todo = [m for m in (S.runners if methods is None else methods) if not store.done(m, dname, bkeys[m])]
    if not todo:
        return
    unreadable = load_images(src, S.preparer, chunk.items)
    for sid, reason, _ in unreadable:
        log.warning("%s: image %s: %s (recorded failed for %s)", dname, sid, reason, ", ".join(todo))
    keep = [j for j, it in enumerate(chunk.items) if it.image is not None]
    items = [chunk.items[j] for j in keep]
    ctx = BatchContext.build(chunk, arrays, gallery).select(keep)
    lost = [it for it in chunk.items if it.image is None]
    lost_reasons = [{sid: r for sid, r, _ in unreadable}[it.id] for it in lost]
    order = {sid: k for k, sid in enumerate(chunk.ids)}
    for m in todo:
        if interrupt_after is not None and len(done) >= interrupt_after:
            raise Interrupted(f"simulated interruption after {len(done)} batches")
        bar.set_postfix_str(m)
        df, feats = _run_batch(S.runners[m], items, ctx, S.oracles, S.master, dname) if items else (None, {})
        if lost:  # in chunk order; the "ok" rows keep theirs, so they stay aligned with ``feats``
            df = pd.concat([d for d in (df, _failed_frame(lost, lost_reasons)) if d is not None],
                           ignore_index=True)
            df = df.iloc[np.argsort([order[sid] for sid in df["id"]], kind="stable")].reset_index(drop=True)
        df.insert(1, "dataset", dname)
        df.insert(2, "method", m)
        df.insert(3, "status", df.pop("status") if "status" in df else "ok")
        store.save(m, dname, bkeys[m], records=df, arrays=feats)
        done.append((m, dname, bkeys[m]))
        if on_saved is not None:
            on_saved(len(done))
    drop_images(chunk.items)


def evaluate(
    cfg: dict | None = None,
    *,
    progress: bool = True,
    _interrupt_after: int | None = None,
    quiet: bool = False,
    _provenance: dict | None = None,
) -> dict:
    """Run the evaluation described by ``cfg`` (see ``harness.config``). Returns a dict with ``run_dir``,
    ``records`` (DataFrame), ``aggregate`` (DataFrame), ``tracking_uri``, ``parent_run_id``.

    Each invocation (a first run or a resume) is appended to ``<run>/invocations.json`` when it starts (status
    "running": git hash and dirty flag, device, config hash, data locations) and completed when it ends (status
    "finished", end and wall time, world size, how many batches it computed); an invocation that never finished
    is marked "interrupted" by the next one -- so the code that computed each result survives a crash and a
    later resume, and a resume by other code is warned about (``environment.json`` holds the latest
    invocation's environment).
    ``batches_computed`` is kept up to date while batches are persisted (every ``PROGRESS_EVERY_BATCHES`` batches
    or ``PROGRESS_EVERY_S`` seconds, and when the invocation stops on an exception or an interrupt), so an
    invocation that never finished still says how many batches it computed.

    The run folder is locked (``records.acquire_run_lock``) for the whole call: a second process on the same run
    fails at once (``RunLockedError``, naming the holder's pid) instead of computing everything twice.

    ``_provenance`` (from ``distributed``): ``started`` (epoch s), ``world_size``, ``batches_computed`` of the
    distributed phase that preceded this call."""
    prov = dict(_provenance or {})
    started = float(prov.get("started", time.time()))
    S = setup(C.make_config(cfg or {}))
    took = acquire_run_lock(S.run_dir)  # before anything is written (a distributed rank 0 holds it already)
    try:
        return _evaluate_locked(S, prov, started, progress, _interrupt_after, quiet)
    finally:
        if took:
            release_run_lock(S.run_dir)


PROGRESS_EVERY_BATCHES = 25
PROGRESS_EVERY_S = 60.0


class _InvocationProgress:
    """``on_saved`` of ``compute``: keeps the invocation's ``batches_computed`` in ``invocations.json`` up to date
    (cheaply: every ``PROGRESS_EVERY_BATCHES`` batches or ``PROGRESS_EVERY_S`` seconds, and on ``flush``)."""

    def __init__(self, run_dir: Path, index: int, base: int) -> None:
        self.run_dir, self.index, self.base = run_dir, index, base
        self.n = self.written = 0
        self.t = time.monotonic()

    def __call__(self, n: int) -> None:
        self.n = n
        if n - self.written >= PROGRESS_EVERY_BATCHES or time.monotonic() - self.t >= PROGRESS_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if self.n == self.written:
            return
        try:
            _update_invocation(self.run_dir, self.index, {"batches_computed": self.base + self.n})
            self.written, self.t = self.n, time.monotonic()
        except Exception as e:  # noqa: BLE001 - provenance bookkeeping never masks the run's own error
            log.warning("could not update invocations.json: %s", e)


def _evaluate_locked(S: Setup, prov: dict, started: float, progress: bool, _interrupt_after: int | None,
                     quiet: bool) -> dict:
    from g2face_eval.harness.tracking import SETTING_TAG_PREFIX, Tracker, git_tags, ui_command

    t_start = time.perf_counter() - (time.time() - started)
    cfg, run_dir, name = S.cfg, S.run_dir, S.name
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", cfg)
    store, prep = BatchStore(run_dir), PrepStore(run_dir)  # they sweep stale .tmp files: this process holds the lock
    if "invocation" in prov:  # a distributed run began it before its sharded phase (its code, its start)
        env, invocation = prov["env"], int(prov["invocation"])
    else:
        env, invocation = begin_invocation(S, started, int(prov.get("world_size", 1)))
    seed = int(cfg["seed"])
    n_boot = int(cfg["bootstrap_samples"])
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    say(f"g2face-eval evaluate: run {name} -> {run_dir}")
    say(f"  methods: {', '.join(S.runners)}\n  datasets: {', '.join(cfg['datasets'])}")

    results_dir = Path(cfg["results_dir"]).expanduser()
    tracker = Tracker(results_dir, run_dir, name)
    # params: what identifies the results (MLflow never lets a param change); the settings that may change between
    # the invocations of one run (batch size, device, folders, ...) are tags, updated on every resume
    params = C.flatten({k: v for k, v in cfg.items() if k not in C.NON_RESULT_KEYS})
    tags = {"g2face.run": name, "g2face.config_hash": S.chash, **git_tags(env),
            **C.flatten({k: v for k, v in cfg.items() if k in C.NON_RESULT_KEYS}, SETTING_TAG_PREFIX)}
    with tracker.parent_run(params, tags=tags) as parent_id:
        tracker.log_artifact(parent_id, run_dir / "config.json")
        tracker.log_artifact(parent_id, run_dir / "environment.json")
        counter = _InvocationProgress(run_dir, invocation, int(prov.get("batches_computed", 0)))
        try:
            done = compute(S, prep, store, progress=progress and not quiet, interrupt_after=_interrupt_after,
                           on_saved=counter)
        finally:
            counter.flush()  # also when interrupted (Ctrl-C, SIGTERM) or aborted
        all_records, set_metrics = [], []
        latency_path = run_dir / "latency.json"
        latency = _reusable_latency(S, latency_path)
        atomic_write_json(latency_path, latency)  # this configuration's methods only
        n_grid = int(cfg["samples_per_grid"])
        indexes = {d: index_dataset(S, prep, d, max(n_grid, LATENCY_BATCH)) for d in S.sources}
        grids = {(m, d): _grid_path(S, m, d) for m in S.runners for d in S.sources}
        _prune_grids(S, set(grids.values()))
        collected = collect_methods(S, store, indexes, workers=int(prov.get("world_size", 1)))
        for runner in S.runners.values():
            for dname, ix in indexes.items():
                _write_grid(S, runner, dname, ix.head[:n_grid])
        from g2face_eval.metrics.latency import heap_settled

        with heap_settled():  # the records just collected stay alive: one full garbage collection, not one per method
            for mname, runner in S.runners.items():
                if mname in latency:
                    continue
                try:
                    latency[mname] = _latency(S, runner, indexes, int(cfg["latency_repeats"]))
                except Exception as e:  # noqa: BLE001 - a method that fails here failed per image too: recorded
                    log.warning("latency of %s failed: %s", mname, e)
                    latency[mname] = {"error": f"{type(e).__name__}: {e}"}
                latency[mname]["method_hash"] = runner.mhash
                atomic_write_json(latency_path, latency)
        for mname in S.runners:
            mrecords, msets = collected.pop(mname)
            set_metrics += msets
            mdf = pd.concat([d for d in mrecords if len(d)], ignore_index=True) if mrecords else pd.DataFrame()
            all_records.append(mdf)
            _log_child(tracker, S, mname, mdf, msets, latency, params, n_boot, seed)

        records = pd.concat([d for d in all_records if len(d)], ignore_index=True)
        if "reason" not in records:                        # a run without failures has the column too (empty)
            records.insert(records.columns.get_loc("status") + 1 if "status" in records else len(records.columns),
                           "reason", pd.Series([None] * len(records), dtype=object))
        records = _arrow_safe(records)
        agg = aggregate(records, set_metrics, latency, n_boot, seed)
        demo = demographics(records, n_boot, seed)
        write_table(records, run_dir / "records.parquet")
        write_table(records, run_dir / "records.csv")
        write_table(agg, run_dir / "aggregate.parquet")
        write_table(agg, run_dir / "aggregate.csv")
        write_table(demo, run_dir / "demographics.csv")
        atomic_write_json(run_dir / "set_metrics.json", set_metrics)
        atomic_write_json(run_dir / "unavailable.json", S.oracles.unavailable)
        galleries = {d: ix.gallery for d, ix in indexes.items() if ix.gallery is not None}
        if galleries:  # the identification galleries' size and the photos left out of them
            atomic_write_json(run_dir / "gallery.json", galleries)
        else:  # none in this configuration: not an earlier one's under a reused --run-name
            (run_dir / "gallery.json").unlink(missing_ok=True)
        summary = format_summary(agg)
        from g2face_eval import atomic

        atomic.write_bytes(run_dir / "summary.txt", (summary + "\n").encode())
        for f in (
            "records.parquet",
            "records.csv",
            "aggregate.parquet",
            "aggregate.csv",
            "demographics.csv",
            "summary.txt",
            "latency.json",
            "set_metrics.json",
            "unavailable.json",
        ):
            tracker.log_artifact(parent_id, run_dir / f, "tables")
        for g in sorted(p for p in grids.values() if p.is_file()):  # this configuration's grids only
            tracker.log_artifact(parent_id, g, "samples")
        tracker.log_metrics(parent_id, _mlflow_metrics(agg, prefix_method=True))
        wall_inv = time.perf_counter() - t_start
        _update_invocation(run_dir, invocation, {  # started, git and device were recorded when it began
            "finished": _iso(started + wall_inv), "wall_s": round(wall_inv, 1), "status": "finished",
            "world_size": int(prov.get("world_size", 1)),
            "batches_computed": counter.base + len(done),
            "batches_total": sum(len(ix.chunk_ids) for ix in indexes.values()) * len(S.runners),
        })
        tracker.log_artifact(parent_id, run_dir / "invocations.json")
        try:  # figures + report (logged with the parent run)
            from g2face_eval.reports.build import build_report

            out = build_report(run_dir, Path(cfg["reports_dir"]) / name, quiet=True)
            tracker.log_artifacts(parent_id, out, "report")
        except Exception as e:  # noqa: BLE001 - a report problem must not lose the evaluation
            log.warning("report build failed: %s", e)
            say(f"  (report build failed: {e}; run `g2face-eval report --results {run_dir}`)")
            out = None
        tracker.set_tags(parent_id, {"g2face.wall_s": f"{time.perf_counter() - t_start:.1f}"})

    wall = time.perf_counter() - t_start
    say("\nAggregate (headline metrics; full table with 95% CIs in aggregate.csv):")
    say(summary)
    if S.oracles.unavailable:
        say(
            "\nunavailable (reported, not faked): "
            + "; ".join(f"{k}: {v[:120]}" for k, v in S.oracles.unavailable.items())
        )
    say(f"\nresults: {run_dir}  ({wall:.0f} s)")
    if out is not None:
        say(f"report:  {out / 'report.html'}")
    say(f"MLflow UI: {ui_command(tracker.uri)}")
    return {
        "run_dir": run_dir,
        "records": records,
        "aggregate": agg,
        "demographics": demo,
        "tracking_uri": tracker.uri,
        "parent_run_id": parent_id,
        "wall_s": wall,
        "run_name": name,
    }


def _warn_on_mixed_code(run_dir: Path, env: dict, say) -> None:
    """A resume by other code than the earlier invocations' (another commit, or uncommitted changes, or other
    package versions) mixes results of both in one run: say so (``invocations.json`` keeps which invocation
    computed how many batches, with which software)."""
    history = _invocations(run_dir)
    if not history:
        return
    seen = {(h.get("git_hash"), bool(h.get("git_dirty"))) for h in history}
    now = (env.get("git_hash"), bool(env.get("git_dirty")))
    if seen != {now} or now[1]:
        say("resuming run %s with code %s%s; earlier invocations ran %s: its results may mix code versions "
            "(see invocations.json)", run_dir.name, now[0], " (uncommitted changes)" if now[1] else "",
            ", ".join(f"{h}{' (dirty)' if d else ''}" for h, d in sorted(seen, key=str)))
    sw = software(env)
    for h in history:  # the same commit under other package versions (an upgraded torch) computes differently
        old = h.get("software")
        if old and old != sw:
            diff = sorted(k for k in set(old) | set(sw) if old.get(k) != sw.get(k))
            say("resuming run %s with other software than an earlier invocation (%s): its results may mix them "
                "(see invocations.json)", run_dir.name,
                ", ".join(f"{k} {old.get(k)} -> {sw.get(k)}" for k in diff))
            break


def _iso(t: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def begin_invocation(S: Setup, started: float, world_size: int = 1) -> tuple[dict, int]:
    """Before any work: the environment (git hash and dirty flag of the code about to compute) is written to
    ``environment.json`` and recorded as a "running" invocation, after warning if earlier invocations ran other
    code. Returns (environment, invocation index)."""
    from g2face_eval.harness.tracking import environment_info

    S.run_dir.mkdir(parents=True, exist_ok=True)
    # the run's lock, held by this process from now on (``evaluate`` releases it; a distributed run's rank 0 takes
    # it here, before its sharded phase, and keeps it until it exits): another process on the run fails now
    acquire_run_lock(S.run_dir)
    env = {**environment_info(), "code_fingerprint": C.code_fingerprint()}
    _warn_on_mixed_code(S.run_dir, env, say=log.warning)  # against the earlier invocations, finished or not
    atomic_write_json(S.run_dir / "environment.json", env)
    index = _start_invocation(S.run_dir, started, {
        "git_hash": env.get("git_hash"), "git_dirty": env.get("git_dirty"), "device": str(S.cfg["device"]),
        "batch_size": int(S.cfg["batch_size"]),
        "world_size": int(world_size), "config_hash": S.chash, "data_locations": C.data_locations(S.cfg),
        "code_fingerprint": env["code_fingerprint"], "software": software(env), "batches_computed": 0,
    })
    return env, index


def _invocations(run_dir: Path) -> list[dict]:
    """The run's ``invocations.json`` (empty before the first invocation)."""
    path = run_dir / "invocations.json"
    return json.loads(path.read_text()) if path.exists() else []


def _start_invocation(run_dir: Path, started: float, extra: dict) -> int:
    """Append this invocation to ``invocations.json`` as "running" (before any work, so a crash keeps it);
    earlier ones still "running" never finished: "interrupted". Returns its index."""
    history = _invocations(run_dir)
    for h in history:
        if h.get("status") == "running":
            h["status"] = "interrupted"
    history.append({"started": _iso(started), "status": "running", **extra})
    atomic_write_json(run_dir / "invocations.json", history)
    return len(history) - 1


def _update_invocation(run_dir: Path, index: int, fields: dict) -> None:
    """Merge ``fields`` into invocation ``index`` (from ``_start_invocation``) of ``invocations.json``."""
    history = _invocations(run_dir)
    if index < len(history):
        history[index] = {**history[index], **fields}
        atomic_write_json(run_dir / "invocations.json", history)


@dataclass
class DatasetIndex:
    """What the per-method collection needs of a dataset, read once from ``prepared/`` after ``compute``: the
    prepared ids of each chunk (in order), the failures, the originals' realism accumulators, and the first
    prepared items (for sample grids and latency; their images are loaded on first use)."""

    chunk_ids: list[list[str]]
    failures: list[tuple[str, str, dict]]
    real: dict[str, Any]  # extractor -> realism.RealismAccumulator of the originals
    head: list[Item]
    gallery: dict | None = None  # Gallery.summary() of the identification gallery (celeba_id), else None


LATENCY_BATCH = 8  # images per timed anonymize call


def _reusable_latency(S: Setup, path: Path) -> dict:
    """The entries of ``latency.json`` measured for this run's methods as they are now (same name and method
    hash: configuration and code), on the device each now runs on, with as many timed runs, and not failed; the
    rest (other methods of an earlier configuration under the same ``--run-name``, changed methods, a run on
    another device -- a GPU timing must not stand beside CPU ones --, errors) are dropped and measured again."""
    try:
        old = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        old = {}
    runs = max(1, int(S.cfg["latency_repeats"]))
    return {m: v for m, v in old.items() if m in S.runners and isinstance(v, dict) and "error" not in v
            and v.get("method_hash") == S.runners[m].mhash
            and v.get("device") == str(torch.device(S.runners[m].device)) and v.get("runs") == runs}


def _grid_path(S: Setup, method: str, dataset: str) -> Path:
    return S.run_dir / "samples" / f"{method}__{dataset}.png"


def _prune_grids(S: Setup, current: set[Path]) -> None:
    """Remove sample grids of methods or datasets this configuration does not run, and the per-method tables
    (``methods/<method>/``) of methods it does not run (left by an earlier configuration under the same
    ``--run-name``): the report shows every grid in ``samples/``."""

    def remove(f: Path) -> None:
        try:
            f.unlink(missing_ok=True)
        except OSError as e:
            log.warning("could not remove the stale %s: %s", f, e)

    for g in (S.run_dir / "samples").glob("*__*.png"):
        if g not in current:
            remove(g)
    for m in (S.run_dir / "methods").glob("*"):
        if m.is_dir() and m.name not in S.runners:
            for f in ("records.parquet", "aggregate.csv"):
                remove(m / f)
            with contextlib.suppress(OSError):  # only once empty: nothing but the harness's own files is removed
                m.rmdir()


def index_dataset(S: Setup, prep: PrepStore, dname: str, n_head: int) -> DatasetIndex:
    from g2face_eval.metrics import realism

    src = S.sources[dname]
    bs = int(S.cfg["batch_size"])
    labels = gallery = None
    if src.gallery_ids:
        gallery = prepare_gallery(src, S.preparer, S.oracles, prep, S.chash, bs)
        labels = set(gallery.labels.tolist())
        if gallery.failures:
            log.warning("%s: %d of %d gallery photos could not be used (gallery.json lists them); the "
                        "identification ranks are against the other %d", dname, len(gallery.failures),
                        len(gallery.failures) + len(gallery.labels), len(gallery.labels))
    exts = S.oracles.extractors
    ix = DatasetIndex([], [], {e: realism.RealismAccumulator(x.dim) for e, x in exts.items()}, [],
                      gallery.summary() if gallery is not None else None)
    for i, ids in enumerate(src.chunks(src.ids, bs)):
        chunk, arrays = prepare_chunk(src, S.preparer, S.oracles, prep, S.chash, i, ids, labels)
        ix.failures += chunk.failures
        if not chunk.items:
            continue
        ix.chunk_ids.append(chunk.ids)
        ix.head += chunk.items[: n_head - len(ix.head)]
        for e in exts:
            ix.real[e].add(chunk.ids, arrays[f"feat_{e}"])
    return ix


def collect_method(S: Setup, store: BatchStore, mname: str, indexes: dict[str, DatasetIndex]
                   ) -> tuple[list[pd.DataFrame], list]:
    """One method's per-image records (persisted batches + failure records) and its set metrics (Fréchet
    statistics and KID samples accumulated batch by batch, never all features at once)."""
    from g2face_eval.metrics import realism

    records, sets = [], []
    for dname, ix in indexes.items():
        exts = S.oracles.extractors
        fake = {e: realism.RealismAccumulator(x.dim) for e, x in exts.items()}
        for ids in ix.chunk_ids:
            df, feats = store.load(mname, dname, S.batch_key(mname, ids))
            records.append(df)
            ok_ids = df.loc[df["status"] == "ok", "id"].tolist()
            for e in exts:
                if e in feats and len(feats[e]):
                    fake[e].add(ok_ids, feats[e])
        fail = _failure_frame(dname, ix.failures, mname)
        if len(fail):
            records.append(fail)
        for e in exts:  # realism: Fréchet distance of the anonymized set against the dataset's originals
            if ix.real[e].n < 2 or fake[e].n < max(2, int(S.cfg["fd_min_images"])):
                continue
            for metric, value in realism.realism_metrics_streamed(e, ix.real[e], fake[e],
                                                                  seed=int(S.cfg["seed"])).items():
                sets.append(dict(method=mname, dataset=dname, metric=metric, value=float(value), n=fake[e].n))
    return records, sets


def collect_methods(S: Setup, store: BatchStore, indexes: dict[str, DatasetIndex], workers: int = 1
                    ) -> dict[str, tuple[list[pd.DataFrame], list]]:
    """``collect_method`` of every method, on ``workers`` threads: the work is file reads and float64 matrix
    algebra (Fréchet statistics, KID), which release the GIL; a distributed run's other ranks are idle by then,
    so rank 0 uses their cores. Each method's result is computed by the same code whatever the thread count."""
    for ix in indexes.values():  # shared by every method: computed once, before the threads read it
        for acc in ix.real.values():
            acc.prepare_reference()
    names = list(S.runners)
    if workers <= 1 or len(names) <= 1:
        return {m: collect_method(S, store, m, indexes) for m in names}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(workers, len(names)), thread_name_prefix="collect") as pool:
        return dict(zip(names, pool.map(lambda m: collect_method(S, store, m, indexes), names), strict=True))


def _log_child(tracker, S: Setup, mname: str, mdf: pd.DataFrame, msets: list, latency: dict, params: dict,
               n_boot: int, seed: int) -> None:
    """The method's MLflow child run: params, aggregate metrics, per-image and aggregate tables, samples."""
    runner = S.runners[mname]
    mcfg = runner.method.config()
    child = tracker.child(
        mname,
        {
            **params,
            **C.flatten(mcfg, "method."),
            "method.hash": runner.mhash,
            "method.reversible": str(runner.method.reversible),
        },
    )
    magg = aggregate(mdf, msets, {mname: latency.get(mname, {})}, n_boot, seed) if len(mdf) else pd.DataFrame()
    tracker.log_metrics(child, _mlflow_metrics(magg))
    mdir = S.run_dir / "methods" / mname
    mdir.mkdir(parents=True, exist_ok=True)
    if len(mdf):
        write_table(_arrow_safe(mdf), mdir / "records.parquet")
        write_table(magg, mdir / "aggregate.csv")
        tracker.log_artifact(child, mdir / "records.parquet")
        tracker.log_artifact(child, mdir / "aggregate.csv")
    for d in S.sources:  # the grids of this run's datasets (not leftovers of another configuration)
        g = _grid_path(S, mname, d)
        if g.is_file():
            tracker.log_artifact(child, g, "samples")
    tracker.log_artifact(child, S.run_dir / "config.json")
    tracker.log_artifact(child, S.run_dir / "environment.json")
    tracker.set_tags(child, {"g2face.unavailable": json.dumps(S.oracles.unavailable)[:5000]})
    tracker.end(child, "FINISHED")


def _arrow_safe(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    for c in df.columns:
        if df[c].dtype == object:
            df[c] = df[c].map(
                lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
            )
    return df


def _mlflow_metrics(agg: pd.DataFrame, prefix_method: bool = False) -> dict[str, float]:
    out = {}
    for r in agg.itertuples(index=False):
        base = f"{r.dataset}/{r.metric}" if r.dataset != "all" else r.metric
        if prefix_method:
            base = f"{r.method}/{base}"
        out[base] = r.value
        if np.isfinite(r.ci_lo):
            out[base + "_ci_lo"] = r.ci_lo
            out[base + "_ci_hi"] = r.ci_hi
    return out


def _failed_frame(items: list[Item], reasons: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"id": [it.id for it in items], "status": "failed", "reason": reasons,
                         **meta_columns([it.meta for it in items])})


def _method_error(e: Exception) -> str:
    return f"method error: {traceback.format_exception_only(type(e), e)[-1].strip()}"[:500]


def _aborted(runner: MethodRunner, dname: str, ids: list[str], e: BaseException) -> RunAborted:
    return RunAborted(
        f"{type(e).__name__}: {e} -- an environment error (disk, file system or memory), not a method failure, "
        f"hit {runner.name} on a batch of {dname} ({len(ids)} images from {ids[0]!r}); the batch was not recorded, "
        "every batch recorded before is kept: fix the cause and rerun the same command to resume")


def _run_batch(
    runner: MethodRunner,
    batch: list[Item],
    ctx: BatchContext,
    oracles: Oracles,
    master: str,
    dname: str,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """One method on one batch: outputs (cached), per-image metrics and the outputs' realism features (rows of
    ``feats[ext]``: the batch's "ok" records, in order). When the method (or scoring its outputs) raises on the
    batch, the batch is retried image by image: only the images that raise alone become failure records
    ("method error: ..."), the others are scored; the run continues. An environment error
    (``ENVIRONMENT_ERRORS``) is not a method failure: ``RunAborted``, nothing of the batch is persisted."""
    ids = [it.id for it in batch]
    try:
        return _score_batch(runner, batch, ctx, oracles, master, dname)
    except ENVIRONMENT_ERRORS as e:
        raise _aborted(runner, dname, ids, e) from e
    except Exception as e:  # noqa: BLE001 - a method crashing on a batch: retried image by image below
        if len(batch) == 1:
            log.warning("%s failed on image %s of %s: %s", runner.name, ids[0], dname, e)
            return _failed_frame(batch, [_method_error(e)]), {}
        log.warning("%s failed on a batch of %s (%s); retrying its %d images one by one", runner.name, dname, e,
                    len(batch))
    frames: list[pd.DataFrame] = []
    parts: dict[str, list[np.ndarray]] = {}
    for j, it in enumerate(batch):  # each image alone: scored, or its own failure record (no features)
        df, feats = _run_batch(runner, [it], ctx.select([j]), oracles, master, dname)
        frames.append(df)
        for ext, f in feats.items():
            parts.setdefault(ext, []).append(f)
    return pd.concat(frames, ignore_index=True), {ext: np.concatenate(v) for ext, v in parts.items()}


def _score_batch(
    runner: MethodRunner,
    batch: list[Item],
    ctx: BatchContext,
    oracles: Oracles,
    master: str,
    dname: str,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """``_run_batch`` without its error handling: every image scored, or an exception."""
    method = runner.method
    ids = [it.id for it in batch]
    imgs = [it.image for it in batch]
    masks = [it.mask for it in batch]
    keys = derive_keys(master, ids)
    anon, oks, bits = runner.anonymize(dname, ids, imgs, keys, masks)
    extra: dict[str, Any] = {}
    rec = rec_w = anon2 = rok = None
    if method.reversible:
        keys2 = derive_keys(master + "/second-key", ids)
        wrong = derive_keys(master + "/wrong-key", ids)
        anon2, _, _ = runner.anonymize(dname, ids, imgs, keys2, masks)
        rec, rok, rbits = runner.recover(dname, ids, anon, keys)
        rec_w, wok, _ = runner.recover(dname, ids, anon, wrong)
        if all(o is not None for o in rok):
            extra["recovery_ok_rate"] = [float(o) for o in rok]
        if all(o is not None for o in wok):
            extra["wrongkey_rejected_rate"] = [float(not o) for o in wok]
        if all(b is not None for b in bits) and all(b is not None for b in rbits):
            from g2face_eval.metrics.identity import bit_error_rate

            extra["payload_ber"] = bit_error_rate(np.stack(bits).round(), np.stack(rbits).round())
    df = batch_metrics(batch, anon, ctx, oracles, method.reversible, rec, rec_w, anon2, extra, rec_ok=rok)
    df["status"] = "ok"
    feats = {ext: _features(fn, anon) for ext, fn in oracles.extractors.items()}
    return df, feats


def _write_grid(S: Setup, runner: MethodRunner, dname: str, items: list[Item]) -> None:
    """samples/<method>__<dataset>.png: original / anonymized / recovered / wrong key for ``items`` (the
    dataset's first prepared faces)."""
    method, master = runner.method, S.master
    src = S.sources[dname]
    path = _grid_path(S, runner.name, src.name)
    if not items:
        return
    try:
        load_images(src, S.preparer, items)
        items = [it for it in items if it.image is not None]  # an image unreadable since it was prepared: left out
        if not items:
            raise RuntimeError("none of its images can be read")
        ids = [it.id for it in items]
        imgs = [it.image for it in items]
        keys = derive_keys(master, ids)
        anon, _, _ = runner.anonymize(src.name, ids, imgs, keys, [it.mask for it in items])
        rows = []
        if method.reversible:
            rec, _, _ = runner.recover(src.name, ids, anon, keys)
            wr, _, _ = runner.recover(src.name, ids, anon, derive_keys(master + "/wrong-key", ids))
        for j in range(len(items)):
            rows.append(
                [
                    imgs[j],
                    anon[j],
                    rec[j] if method.reversible else None,
                    wr[j] if method.reversible else None,
                ]
            )
        _save_png(path, sample_grid(rows))
    except Exception as e:  # noqa: BLE001
        log.warning("sample grid for %s/%s failed: %s", runner.name, src.name, e)
        path.unlink(missing_ok=True)  # never an earlier grid (other method code or configuration) in its place


def _latency(S: Setup, runner: MethodRunner, indexes: dict[str, DatasetIndex], repeats: int) -> dict:
    """Anonymize timing on the first dataset's first ``LATENCY_BATCH`` prepared faces."""
    from g2face_eval.metrics.latency import device_name, measure

    dname, items = next(((d, ix.head[:LATENCY_BATCH]) for d, ix in indexes.items() if ix.head), (None, []))
    if not items:
        return {}
    load_images(S.sources[dname], S.preparer, items)
    items = [it for it in items if it.image is not None]  # an image unreadable since it was prepared: left out
    if not items:
        raise RuntimeError(f"none of the first prepared images of {dname} can be read")
    device = runner.device
    method = runner.method
    x = to_tensor([it.image for it in items]).to(device)
    keys = derive_keys(S.master + "/latency", [it.id for it in items])
    fm = None
    if all(it.mask is not None for it in items):
        fm = torch.from_numpy(np.stack([it.mask for it in items]))[:, None].float().to(device)

    def fn():
        with torch.no_grad():
            method.anonymize(x, keys, face_masks=fm)

    res = measure(fn, len(items), warmup=1, runs=max(1, repeats), device=device)
    return {
        **res.metrics(),
        "runs": res.runs,
        "batch_size": res.batch_size,
        "device": res.device,
        "device_name": device_name(device),
        "memory_kind": res.memory_kind,
        "memory_baseline_mb": res.memory_baseline_mb,
        "memory_note": res.memory_note,
    }


def cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="g2face-eval evaluate", description=__doc__.split("\n\n")[0])
    C.add_arguments(ap)
    ap.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    ns = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from g2face_eval.registry import UnknownNameError

    try:  # an invalid configuration: exit 2 with the message, no traceback (docs/RELIABILITY.md)
        cfg = C.from_args(ns)
        C.resolve_methods(cfg)  # unknown method names, before any oracle or model is loaded
    except (ValueError, OSError, UnknownNameError) as e:
        print(f"g2face-eval evaluate: {e}", file=sys.stderr)
        return 2
    from g2face_eval.data.datasets import DatasetNotFoundError, DatasetOptionsError
    from g2face_eval.interrupts import say_how_to_resume, sigterm_exits

    try:
        with say_how_to_resume("g2face-eval evaluate", "the batches computed so far are saved: rerun the same "
                               "command to resume"), sigterm_exits():  # SIGTERM: MLflow runs end as KILLED
            if int(__import__("os").environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: images sharded across ranks
                from g2face_eval.harness.distributed import evaluate_distributed

                evaluate_distributed(cfg, progress=not ns.no_progress)
            else:
                evaluate(cfg, progress=not ns.no_progress)
    except KeyboardInterrupt:  # Ctrl-C: said by say_how_to_resume
        return 130
    except (DatasetNotFoundError, DatasetOptionsError, EmptyDatasetError, ConfigurationError) as e:  # exit 2
        print(f"g2face-eval evaluate: {e}", file=sys.stderr)
        return 2
    except RunLockedError as e:  # another process works on this run: nothing was done
        print(f"g2face-eval evaluate: {e}", file=sys.stderr)
        return 1
    except (RunAborted, CorruptRecordError) as e:  # disk full, unwritable folder, out of memory, a damaged unit:
        print(f"g2face-eval evaluate: aborted: {e}", file=sys.stderr)  # the persisted batches are kept
        return 1
    return 0
