"""``evaluate(config)``: every method x every dataset on the same faces, with per-image records, aggregate
table (bootstrap 95% CIs), MLflow logging and resume.

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
import json
import logging
import math
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from g2face_eval import settings
from g2face_eval.anonymizer import Anonymizer, derive_keys
from g2face_eval.harness import config as C
from g2face_eval.harness.records import (
    ArrayCache,
    BatchStore,
    ImageCache,
    atomic_write_json,
    digest,
    write_table,
)
from g2face_eval.imaging import to_tensor, to_uint8

log = logging.getLogger("g2face_eval.evaluate")

PSNR_CAP_DB = 100.0  # identical images have infinite PSNR; capped so means and CIs stay finite
AGE_BANDS = ((0, 19, "0-19"), (20, 39, "20-39"), (40, 59, "40-59"), (60, 200, "60+"))
GENDERS = {0: "male", 1: "female"}
RACES = {0: "White", 1: "Black", 2: "Asian", 3: "Indian", 4: "Others"}
META_COLUMNS = ("identity", "age", "gender", "race", "age_band", "role")


class Interrupted(RuntimeError):
    """Raised by the test hook ``_interrupt_after`` to simulate a killed run."""


# ----------------------------------------------------------------------------------------------------------
# data preparation
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Item:
    id: str
    image: np.ndarray  # (S,S,3) uint8 RGB
    face: Any  # detectors.Face on the prepared image
    mask: np.ndarray | None  # (S,S) float32 face region (from a parsing mask) or None
    meta: dict = field(default_factory=dict)


@dataclass
class PreparedDataset:
    name: str
    items: list[Item]
    failures: list[tuple[str, str, dict]]  # (id, reason, meta)
    gallery: list[Item] = field(default_factory=list)  # identification gallery (celeba_id)
    aligned: bool = True


def _resize(img: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    import cv2

    if img.shape[0] == size and img.shape[1] == size:
        return img
    if nearest:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if min(img.shape[:2]) > size else cv2.INTER_CUBIC
    return cv2.resize(img, (size, size), interpolation=interp)


def _center_square(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    return img[y0 : y0 + s, x0 : x0 + s]


def _norm_meta(meta: dict, sid: str) -> dict:
    m = {}
    for k in ("identity", "age", "gender", "race", "role", "split"):
        if k in meta and meta[k] is not None:
            m[k] = meta[k]
    if "age" in m:
        try:
            a = int(m["age"])
            m["age"] = a
            m["age_band"] = next(lbl for lo, hi, lbl in AGE_BANDS if lo <= a <= hi)
        except (TypeError, ValueError, StopIteration):
            pass
    if "gender" in m:
        m["gender"] = GENDERS.get(_as_int(m["gender"]), str(m["gender"]))
    if "race" in m:
        m["race"] = RACES.get(_as_int(m["race"]), str(m["race"]))
    if "identity" in m:
        m["identity"] = str(m["identity"])
    return m


def _as_int(v):
    try:
        return int(v)
    except (TypeError, ValueError):
        return v


class Preparer:
    def __init__(self, size: int) -> None:
        from g2face_eval.oracles.detectors import get_detector

        self.size = size
        self.det = get_detector("yunet")

    def prepare(self, sample, aligned: bool) -> Item | str:
        from baselines._region import parsing_to_face_mask

        img = sample.image
        mask = sample.mask
        if aligned:
            img = _resize(_center_square(img), self.size)
            if mask is not None:
                mask = _resize(_center_square(np.asarray(mask)), self.size, nearest=True)
        else:
            faces = self.det.detect(img)
            if not faces:
                return "no face detected"
            from g2face_eval.oracles.alignment import ffhq_crop

            img = ffhq_crop(img, np.asarray(faces[0].landmarks5), self.size)
            mask = None
        img = np.ascontiguousarray(img)
        faces = self.det.detect(img)
        if not faces:
            return "no face detected in the prepared image"
        fm = parsing_to_face_mask(mask) if mask is not None else None
        if fm is not None and fm.sum() == 0:
            fm = None
        return Item(sample.id, img, faces[0], fm, _norm_meta(dict(sample.meta or {}), sample.id))


# Options the harness passes to a dataset unless the config says otherwise.
DATASET_DEFAULT_OPTIONS: dict[str, dict] = {"celebahq256": {"masks": True}}


def prepare_dataset(name: str, cfg: dict, preparer: Preparer) -> PreparedDataset:
    from g2face_eval.data import datasets as D
    from g2face_eval.data.io import ImageLoadError

    opts = {**DATASET_DEFAULT_OPTIONS.get(name, {}), **dict(cfg.get("dataset_options", {}).get(name, {}))}
    limit = opts.pop("limit", None) or cfg.get("limit")
    root = opts.pop("root", None) or cfg.get("datasets_root")
    root = Path(root).expanduser() if root else None
    gallery_ids: list[str] = []
    if name == "celeba_id":
        ds = D.open_dataset(name, root=root, **opts)
        ids, gallery_ids = _identification_split(D, root, opts, int(cfg["gallery_per_identity"]), limit)
    else:
        ds = D.open_dataset(name, root=root, **({"limit": int(limit)} if limit else {}), **opts)
        ids = list(ds.ids())
    aligned = bool(getattr(ds, "aligned", True))

    def load_all(id_list, role=None):
        items, fails = [], []
        for sid in id_list:
            try:
                s = ds.load(sid)
            except ImageLoadError as e:
                fails.append((sid, f"load failed: {getattr(e, 'reason', e)}", {}))
                continue
            except (OSError, ValueError) as e:
                fails.append((sid, f"load failed: {e}", {}))
                continue
            r = preparer.prepare(s, aligned)
            if isinstance(r, str):
                fails.append((sid, r, _norm_meta(dict(s.meta or {}), sid)))
            else:
                if name == "celeba_id" and "identity" not in r.meta:
                    r.meta["identity"] = _identity_of(sid)
                if role:
                    r.meta["role"] = role
                items.append(r)
        return items, fails

    items, failures = load_all(ids, "probe" if gallery_ids else None)
    gallery, _gfail = load_all(gallery_ids, "gallery") if gallery_ids else ([], [])
    if gallery_ids:  # probes whose identity has no usable gallery photo cannot be identified
        gal_ids = {g.meta["identity"] for g in gallery}
        keep = []
        for it in items:
            if it.meta["identity"] in gal_ids:
                keep.append(it)
            else:
                failures.append((it.id, "no usable gallery image for this identity", it.meta))
        items = keep
    log.info(
        "dataset %s: %d images prepared, %d failures%s",
        name,
        len(items),
        len(failures),
        f", gallery {len(gallery)}" if gallery_ids else "",
    )
    return PreparedDataset(name, items, failures, gallery, aligned)


def _identity_of(sid: str) -> str:
    return sid.replace("\\", "/").split("/")[0]


def _identification_split(D, root, opts: dict, per_identity: int, limit) -> tuple[list[str], list[str]]:
    """(probe ids, gallery ids) from the dataset's own deterministic gallery/probe split: one probe per
    identity (the first of its probe photos) against ``per_identity`` gallery photos of every selected
    identity. ``limit`` caps the number of identities (sorted)."""
    o = {k: v for k, v in opts.items() if k != "split"}
    probes = sorted(D.open_dataset("celeba_id", root=root, split="probe", **o).ids())
    gallery = sorted(D.open_dataset("celeba_id", root=root, split="gallery", **o).ids())
    gal_by: dict[str, list[str]] = {}
    for g in gallery:
        gal_by.setdefault(_identity_of(g), []).append(g)
    pro_by: dict[str, str] = {}
    for p in probes:
        pro_by.setdefault(_identity_of(p), p)
    idents = sorted(k for k in pro_by if k in gal_by)
    if limit:
        idents = idents[: int(limit)]
    return [pro_by[k] for k in idents], [g for k in idents for g in gal_by[k][:per_identity]]


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
                self.recognizers[n] = R.get_recognizer(n)
                self.thresholds[n] = self.recognizers[n].threshold  # snapshot: fixed for the whole run
            except Exception as e:  # noqa: BLE001 - missing weights: reported, not faked
                self.unavailable[f"recognizer_{n}"] = str(e)
        if not self.recognizers:
            raise RuntimeError(f"no recognizer available: {self.unavailable}")
        self.detectors = {}
        for n in cfg.get("detectors") or ():
            try:
                self.detectors[n] = Dt.get_detector(n)
            except Exception as e:  # noqa: BLE001
                self.unavailable[f"detection_rate_{n}"] = str(e)
        try:
            from g2face_eval.oracles.geometry import get_face_mesh

            self.mesh = get_face_mesh()
        except Exception as e:  # noqa: BLE001
            self.mesh = None
            self.unavailable["attributes"] = str(e)
        self.lpips = None
        try:
            from g2face_eval.metrics.image import LPIPS

            self.lpips = LPIPS("alex")
        except Exception as e:  # noqa: BLE001 - MetricUnavailable (backbone weights absent)
            self.unavailable["lpips_alex"] = getattr(e, "reason", str(e))
        self.extractors = _feature_extractors(self.unavailable, str(cfg["device"]))

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
                k = digest(rec, ns, ids[i], img.tobytes(), np.asarray(f.landmarks5, np.float64).tobytes())
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

    def threshold(self, rec: str) -> float | None:
        t = self.thresholds[rec]
        if t is None:
            self.unavailable[f"deid_success_rate_{rec}"] = (
                f"{rec}: no validated FAR-1e-3 threshold (run `g2face-eval validate`); similarities only"
            )
            return None
        return float(t)


def _feature_extractors(unavailable: dict, device: str = "cpu") -> dict:
    """name -> metrics.realism FeatureExtractor (float batch -> (B,D) features), for the Fréchet metrics:
    "effnet_lite0" (offline, metric fd_effnet_lite0) always; "inception_fid" (FID/KID) when its weights
    exist."""
    out = {}
    try:
        from g2face_eval.metrics import realism
    except Exception as e:  # noqa: BLE001
        unavailable["fd_effnet_lite0"] = f"metrics.realism not importable: {e}"
        unavailable["fid"] = unavailable["kid"] = unavailable["fd_effnet_lite0"]
        return out
    for name in ("effnet_lite0", "inception_fid"):
        try:
            out[name] = realism.get_extractor(name, device)
        except Exception as e:  # noqa: BLE001 - MetricUnavailable
            reason = getattr(e, "reason", str(e))
            if name == "effnet_lite0":
                unavailable["fd_effnet_lite0"] = reason
            else:
                unavailable["fid"] = unavailable["kid"] = reason
    return out


def _features(ext, images: list[np.ndarray], chunk: int = 32) -> np.ndarray:
    parts = [
        np.asarray(ext(to_tensor(images[s : s + chunk])), np.float64) for s in range(0, len(images), chunk)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 1))


def _reference_features(ext, items: list) -> np.ndarray:
    from g2face_eval.metrics import realism

    ids = [it.id for it in items]
    imgs = [it.image for it in items]
    key = realism.content_key(ids, imgs)
    return np.asarray(
        realism.reference_features(
            ext, key, lambda: (to_tensor(imgs[s : s + 32]) for s in range(0, len(imgs), 32))
        ),
        np.float64,
    )


def _realism(ext_name: str, real: np.ndarray, fake: np.ndarray) -> dict[str, float]:
    from g2face_eval.metrics import realism

    return realism.realism_metrics(ext_name, real, fake)


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
        ckeys = [
            digest(dataset, i, k, x.tobytes() if op != "anonymize" else b"")
            for i, k, x in zip(ids, keys, inputs, strict=False)
        ]
        imgs: list[np.ndarray | None] = [self.cache.get(ns, k) for k in ckeys]
        side: list[np.ndarray | None] = [
            self.arrays.get(ns, k) if im is not None else None for im, k in zip(imgs, ckeys, strict=False)
        ]
        todo = [i for i, (im, s) in enumerate(zip(imgs, side, strict=False)) if im is None or s is None]
        if todo:
            x = to_tensor([inputs[i] for i in todo]).to(self.device)
            with torch.no_grad():
                if op == "anonymize":
                    fm = None
                    if masks is not None and all(masks[i] is not None for i in todo):
                        fm = (
                            torch.from_numpy(np.stack([masks[i] for i in todo]))[:, None]
                            .float()
                            .to(self.device)
                        )
                    out = self.method.anonymize(x, [keys[i] for i in todo], face_masks=fm)
                else:
                    out = self.method.recover(x, [keys[i] for i in todo])
            u8 = to_uint8(out.images)
            for j, i in enumerate(todo):
                ok = -1.0 if out.ok is None else float(bool(out.ok[j]))
                bits = (
                    np.asarray(out.bits[j].detach().cpu().numpy(), np.float32)
                    if out.bits is not None
                    else np.zeros(0, np.float32)
                )
                s = np.concatenate([[ok], bits]).astype(np.float32)
                self.cache.put(ns, ckeys[i], u8[j])
                self.arrays.put(ns, ckeys[i], s)
                imgs[i], side[i] = u8[j], s
        oks = [None if s[0] < 0 else bool(s[0]) for s in side]
        bits = [s[1:] if s.size > 1 else None for s in side]
        return imgs, oks, bits

    def anonymize(self, dataset, ids, images, keys, masks):
        return self._run("anonymize", dataset, ids, images, keys, masks)

    def recover(self, dataset, ids, images, keys):
        return self._run("recover", dataset, ids, images, keys, None)


# ----------------------------------------------------------------------------------------------------------
# per-batch metrics
# ----------------------------------------------------------------------------------------------------------
def _mesh(oracles: Oracles, img: np.ndarray):
    if oracles.mesh is None:
        return None
    try:
        return oracles.mesh.analyze(img)
    except Exception:  # noqa: BLE001
        return None


class DatasetContext:
    """Per-dataset reference data shared by all methods: original embeddings, meshes, features, gallery."""

    def __init__(self, pd_: PreparedDataset, oracles: Oracles) -> None:
        self.pd = pd_
        items = pd_.items
        self.index = {it.id: i for i, it in enumerate(items)}
        self.orig_emb = {}
        self.gallery_emb = {}
        for r in oracles.recognizers:
            self.orig_emb[r] = (
                oracles.embed(
                    r,
                    [it.image for it in items],
                    [it.face for it in items],
                    pd_.name,
                    [it.id for it in items],
                )
                if items
                else np.zeros((0, 1), np.float32)
            )
            if pd_.gallery:
                g = pd_.gallery
                self.gallery_emb[r] = oracles.embed(
                    r, [it.image for it in g], [it.face for it in g], pd_.name, [it.id for it in g]
                )
        self.gallery_labels = np.asarray([g.meta["identity"] for g in pd_.gallery])
        self.mesh = [_mesh(oracles, it.image) for it in items]
        self.real_features = {}
        for name, fn in oracles.extractors.items():
            if len(items) >= 2:
                try:
                    self.real_features[name] = _reference_features(fn, items)
                except Exception as e:  # noqa: BLE001
                    oracles.unavailable[name] = str(e)


def _to_batch(imgs: list[np.ndarray]) -> torch.Tensor:
    return to_tensor(imgs)


def _psnr(a, b) -> np.ndarray:
    from g2face_eval.metrics.image import psnr

    v = psnr(_to_batch(a), _to_batch(b), 1.0).double().numpy()
    return np.minimum(np.nan_to_num(v, posinf=PSNR_CAP_DB), PSNR_CAP_DB)


def _ssim(a, b) -> np.ndarray:
    from g2face_eval.metrics.image import ssim

    return ssim(_to_batch(a), _to_batch(b), 1.0).double().numpy()


def batch_metrics(
    items: list[Item],
    anon: list[np.ndarray],
    ctx: DatasetContext,
    oracles: Oracles,
    reversible: bool,
    rec: list[np.ndarray] | None = None,
    rec_wrong: list | None = None,
    anon2: list | None = None,
    extra: dict | None = None,
) -> pd.DataFrame:
    from g2face_eval.metrics import attributes as A
    from g2face_eval.metrics import identity as I

    n = len(items)
    orig = [it.image for it in items]
    idx = [ctx.index[it.id] for it in items]
    faces = [it.face for it in items]
    cols: dict[str, Any] = {"id": [it.id for it in items]}
    for k in META_COLUMNS:
        vals = [it.meta.get(k) for it in items]
        if any(v is not None for v in vals):
            cols[k] = vals
    cols["psnr"] = _psnr(anon, orig)
    cols["ssim"] = _ssim(anon, orig)
    if oracles.lpips is not None:
        cols["lpips_alex"] = oracles.lpips(_to_batch(anon), _to_batch(orig), 1.0).numpy()
    ids = [it.id for it in items]
    ns = ctx.pd.name  # embeddings are cached by content (image bytes + landmarks), so any output may share it
    for r in oracles.recognizers:
        eo = ctx.orig_emb[r][idx]
        ea = oracles.embed(r, anon, faces, ns, ids)  # the anonymized image at the ORIGINAL face's landmarks
        sim = I.cosine_similarity(ea, eo)
        thr = oracles.threshold(r)
        cols[f"deid_mean_similarity_{r}"] = sim
        if thr is not None:
            cols[f"deid_success_rate_{r}"] = I.protection_success(sim, thr)
        if ctx.pd.gallery:
            gal, gl = ctx.gallery_emb[r], ctx.gallery_labels
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
                cols[f"recovered_id_success_{r}"] = I.recovered_success(I.cosine_similarity(er, eo), thr)
            cols[f"wrongkey_similarity_{r}"] = I.cosine_similarity(ew, eo)
            cols[f"diversity_similarity_{r}"] = I.cosine_similarity(e2, ea)
    for d, det in oracles.detectors.items():
        cols[f"detection_rate_{d}"] = A.detection_rate([det.detect(a) for a in anon])
    if oracles.mesh is not None:
        pe, ed, nme, ok = [], [], [], []
        for j, a in enumerate(anon):
            mo, ma = ctx.mesh[idx[j]], _mesh(oracles, a)
            if mo is None or ma is None:
                pe.append(np.nan), ed.append(np.nan), nme.append(np.nan), ok.append(ma is not None)
                continue
            ok.append(True)
            pe.append(
                float(
                    A.pose_error(
                        np.array([[ma.yaw, ma.pitch, ma.roll]]), np.array([[mo.yaw, mo.pitch, mo.roll]])
                    )[0]
                )
            )
            ed.append(
                float(
                    A.expression_distance(np.asarray(ma.expression)[None], np.asarray(mo.expression)[None])[0]
                )
            )
            nme.append(
                float(A.landmark_nme(np.asarray(ma.landmarks)[None], np.asarray(mo.landmarks)[None])[0])
            )
        cols["pose_error_deg"], cols["expression_distance"] = pe, ed
        cols["landmark_nme"], cols["mesh_detected_rate"] = nme, ok
    if reversible and rec is not None:
        cols["recovery_psnr"] = _psnr(rec, orig)
        cols["recovery_ssim"] = _ssim(rec, orig)
        if oracles.lpips is not None:
            cols["recovery_lpips_alex"] = oracles.lpips(_to_batch(rec), _to_batch(orig), 1.0).numpy()
        cols["diversity_lpips_alex" if oracles.lpips is not None else "diversity_ssim"] = (
            oracles.lpips(_to_batch(anon2), _to_batch(anon), 1.0).numpy()
            if oracles.lpips is not None
            else _ssim(anon2, anon)
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
    from g2face_eval.metrics import base

    try:
        return base.spec(name)
    except Exception:  # noqa: BLE001 - harness-only metrics
        pass
    stem = name
    for suffix in ("_sface", "_dlib", "_arcface_r50", "_arcface_r100", "_facenet_vggface2"):
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
    table = {
        "psnr": (False, "mean", "dB"),
        "ssim": (False, "mean", ""),
        "lpips_alex": (True, "mean", ""),
        "id_rank1": (False, "rate", "fraction"),
        "id_rank5": (False, "rate", "fraction"),
        "id_rank1_original": (None, "rate", "fraction"),
        "id_rank5_original": (None, "rate", "fraction"),
        "mesh_detected_rate": (True, "rate", "fraction"),
        "diversity_lpips_alex": (True, "mean", ""),
        "diversity_ssim": (False, "mean", ""),
        "recovery_ok_rate": (True, "rate", "fraction"),
        "wrongkey_rejected_rate": (True, "rate", "fraction"),
    }
    hib, agg, unit = table.get(stem, (None, "mean", ""))
    return base.MetricSpec(name, hib, agg, unit, "harness metric")


def metric_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c not in NON_METRIC and pd.api.types.is_numeric_dtype(df[c])]


def aggregate(
    records: pd.DataFrame, set_metrics: list[dict], latency: dict, n_boot: int, seed: int
) -> pd.DataFrame:
    from g2face_eval.metrics import bootstrap

    rows = []
    for (method, dataset), g in records.groupby(["method", "dataset"], sort=True):
        ok = g[g["status"] == "ok"]
        n_failed = int((g["status"] != "ok").sum())
        rows.append(
            dict(
                method=method,
                dataset=dataset,
                metric="n_images",
                value=float(len(ok)),
                ci_lo=np.nan,
                ci_hi=np.nan,
                n=len(g),
                aggregation="count",
                higher_is_better=None,
            )
        )
        rows.append(
            dict(
                method=method,
                dataset=dataset,
                metric="n_failed",
                value=float(n_failed),
                ci_lo=np.nan,
                ci_hi=np.nan,
                n=len(g),
                aggregation="count",
                higher_is_better=None,
            )
        )
        for c in metric_columns(ok):
            v = ok[c].to_numpy(dtype=np.float64)
            v = v[np.isfinite(v)]
            if v.size == 0:
                continue
            sp = _spec(c)
            agg = sp.aggregation if sp.aggregation in ("mean", "rate", "median") else "mean"
            if agg == "rate" and not np.isin(v, (0.0, 1.0)).all():
                agg = "mean"
            lo, hi = bootstrap.ci(v, agg, n_boot, seed)
            rows.append(
                dict(
                    method=method,
                    dataset=dataset,
                    metric=c,
                    value=bootstrap.aggregate(v, agg),
                    ci_lo=lo,
                    ci_hi=hi,
                    n=int(v.size),
                    aggregation=agg,
                    higher_is_better=sp.higher_is_better,
                )
            )
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
                        aggregation="median",
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


def demographics(records: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """De-identification rates per demographic group (gender, race, age band) where labelled."""
    from g2face_eval.metrics import bootstrap

    rows = []
    ok = records[records["status"] == "ok"]
    metrics = [c for c in ok.columns if c.startswith(("deid_success_rate_", "deid_mean_similarity_"))]
    for attr in ("gender", "race", "age_band"):
        if attr not in ok.columns:
            continue
        sub = ok[ok[attr].notna()]
        for (method, dataset, grp), g in sub.groupby(["method", "dataset", attr], sort=True):
            for m in metrics:
                v = g[m].to_numpy(np.float64)
                v = v[np.isfinite(v)]
                if v.size == 0:
                    continue
                agg = "rate" if m.startswith("deid_success_rate_") else "mean"
                lo, hi = bootstrap.ci(v, agg, n_boot, seed)
                rows.append(
                    dict(
                        method=method,
                        dataset=dataset,
                        attribute=attr,
                        group=str(grp),
                        metric=m,
                        value=float(v.mean()),
                        ci_lo=lo,
                        ci_hi=hi,
                        n=int(v.size),
                    )
                )
    return pd.DataFrame(
        rows, columns=["method", "dataset", "attribute", "group", "metric", "value", "ci_lo", "ci_hi", "n"]
    )


SUMMARY_METRICS = (
    "deid_success_rate_sface",
    "deid_success_rate_dlib",
    "deid_mean_similarity_sface",
    "id_rank1_sface",
    "ssim",
    "fd_effnet_lite0",
    "pose_error_deg",
    "detection_rate_yunet",
    "recovery_psnr",
    "recovered_id_success_sface",
    "latency_ms_per_image",
)


def summary_table(agg: pd.DataFrame) -> pd.DataFrame:
    """Wide view: one row per (method, dataset), the headline metrics as columns (value only)."""
    lat = agg[agg["metric"] == "latency_ms_per_image"].set_index("method")["value"]
    a = agg[(agg["dataset"] != "all") & agg["metric"].isin(SUMMARY_METRICS)]
    if a.empty:
        return pd.DataFrame()
    w = a.pivot_table(index=["dataset", "method"], columns="metric", values="value", aggfunc="first")
    w["latency_ms_per_image"] = [lat.get(m, np.nan) for _, m in w.index]
    cols = [c for c in SUMMARY_METRICS if c in w.columns and w[c].notna().any()]
    return w[cols]


def format_summary(agg: pd.DataFrame) -> str:
    w = summary_table(agg)
    if w.empty:
        return "(no results)"
    with pd.option_context("display.width", 250, "display.max_columns", 50, "display.max_rows", 500):
        return w.to_string(float_format=lambda x: f"{x:.3f}")


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
def _failure_frame(pd_: PreparedDataset, method: str) -> pd.DataFrame:
    rows = []
    for sid, reason, meta in pd_.failures:
        rows.append(
            {
                "id": sid,
                "dataset": pd_.name,
                "method": method,
                "status": "failed",
                "reason": reason,
                **{k: v for k, v in meta.items() if k in META_COLUMNS},
            }
        )
    return pd.DataFrame(rows)


def _batches(items: list[Item], bs: int) -> list[list[Item]]:
    return [items[i : i + bs] for i in range(0, len(items), bs)]


def build_method(name: str, cfg: dict, device: str):
    """The configured method ``name`` (with its ``method_options``), moved to ``device`` when it can move."""
    from g2face_eval import methods as M

    method = M.METHODS.get(name)(**cfg.get("method_options", {}).get(name, {}))
    if hasattr(method, "to"):
        try:
            method.to(device)
        except Exception:  # noqa: BLE001
            pass
    return method


def evaluate(
    cfg: dict | None = None,
    *,
    progress: bool = True,
    _interrupt_after: int | None = None,
    quiet: bool = False,
) -> dict:
    """Run the evaluation described by ``cfg`` (see ``harness.config``). Returns a dict with ``run_dir``,
    ``records`` (DataFrame), ``aggregate`` (DataFrame), ``tracking_uri``, ``parent_run_id``."""
    from tqdm import tqdm

    from g2face_eval import methods as M
    from g2face_eval.harness.tracking import Tracker, environment_info, ui_command

    cfg = C.make_config(cfg or {})
    t_start = time.perf_counter()
    method_names = C.resolve_methods(cfg)
    for m in method_names:
        M.METHODS.get(m)  # fail fast on unknown names
    cache_root = Path(cfg.get("cache_dir") or settings.cache_dir()).expanduser()
    icache, acache = ImageCache(cache_root / "outputs"), ArrayCache(cache_root / "arrays")
    # Oracles first: the recognizer thresholds in force are part of the configuration (and of its hash), so
    # a threshold file that changes between an interrupted run and its rerun never mixes records.
    oracles = Oracles(cfg, acache)
    cfg_resolved = {**cfg, "methods": method_names, "thresholds": dict(sorted(oracles.thresholds.items()))}
    name = C.run_name(cfg_resolved)
    chash = C.config_hash(cfg_resolved)
    results_dir = Path(cfg["results_dir"]).expanduser()
    run_dir = results_dir / name
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", cfg_resolved)
    store = BatchStore(run_dir)
    env = environment_info()
    atomic_write_json(run_dir / "environment.json", env)
    device = str(cfg["device"])
    bs = int(cfg["batch_size"])
    master = f"{cfg['key']}:{cfg['seed']}"
    seed = int(cfg["seed"])
    n_boot = int(cfg["bootstrap_samples"])
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    say(f"g2face-eval evaluate: run {name} -> {run_dir}")
    say(f"  methods: {', '.join(method_names)}\n  datasets: {', '.join(cfg['datasets'])}")

    tracker = Tracker(results_dir, run_dir, name)
    params = C.flatten({k: v for k, v in cfg_resolved.items()})
    batches_done = 0
    with tracker.parent_run(params, tags={"g2face.run": name}) as parent_id:
        tracker.log_artifact(parent_id, run_dir / "config.json")
        tracker.log_artifact(parent_id, run_dir / "environment.json")
        preparer = Preparer(int(cfg["image_size"]))
        prepared = {d: prepare_dataset(d, cfg, preparer) for d in cfg["datasets"]}
        contexts = {d: DatasetContext(p, oracles) for d, p in prepared.items()}
        all_records: list[pd.DataFrame] = []
        set_metrics: list[dict] = []
        latency_path = run_dir / "latency.json"
        latency = json.loads(latency_path.read_text()) if latency_path.exists() else {}
        for mname in method_names:
            method = build_method(mname, cfg, device)
            mcfg = method.config()
            mhash = C.method_hash(mcfg)
            runner = MethodRunner(mname, method, mhash, icache, acache, device)
            child = tracker.child(
                mname,
                {
                    **params,
                    **C.flatten(mcfg, "method."),
                    "method.hash": mhash,
                    "method.reversible": str(method.reversible),
                },
            )
            mrecords = []
            for dname, pdata in prepared.items():
                ctx = contexts[dname]
                feats_all: dict[str, list[np.ndarray]] = {}
                batches = _batches(pdata.items, bs)
                bar = tqdm(
                    batches,
                    desc=f"{mname} | {dname}",
                    unit="batch",
                    disable=not progress or quiet,
                    leave=False,
                )
                for batch in bar:
                    ids = [it.id for it in batch]
                    bkey = BatchStore.batch_key([chash, mhash, *ids])
                    if store.done(mname, dname, bkey):
                        df, feats = store.load(mname, dname, bkey)
                    else:
                        if _interrupt_after is not None and batches_done >= _interrupt_after:
                            raise Interrupted(f"simulated interruption after {batches_done} batches")
                        df, feats = _run_batch(runner, method, batch, ctx, oracles, master, dname)
                        df.insert(1, "dataset", dname)
                        df.insert(2, "method", mname)
                        df.insert(3, "status", df.pop("status") if "status" in df else "ok")
                        store.save(mname, dname, bkey, df, feats)
                        batches_done += 1
                    mrecords.append(df)
                    for k, v in feats.items():
                        feats_all.setdefault(k, []).append(v)
                fail = _failure_frame(pdata, mname)
                if len(fail):
                    mrecords.append(fail)
                # realism: Fréchet distance of the anonymized set against the dataset's originals
                for ext, real in ctx.real_features.items():
                    parts = [f for f in feats_all.get(ext, []) if f.size]
                    if not parts:
                        continue
                    fake = np.concatenate(parts)
                    if len(fake) < int(cfg["fd_min_images"]):
                        continue
                    for metric, value in _realism(ext, real, fake).items():
                        set_metrics.append(
                            dict(method=mname, dataset=dname, metric=metric, value=float(value), n=len(fake))
                        )
                _write_grid(run_dir, runner, method, pdata, master, int(cfg["samples_per_grid"]))
            if mname not in latency and prepared:
                latency[mname] = _latency(
                    runner, method, prepared, master, int(cfg["latency_repeats"]), device
                )
                atomic_write_json(latency_path, latency)
            mdf = (
                pd.concat([d for d in mrecords if len(d)], ignore_index=True) if mrecords else pd.DataFrame()
            )
            all_records.append(mdf)
            # per-method MLflow child: aggregate metrics + artifacts
            magg = (
                aggregate(
                    mdf,
                    [s for s in set_metrics if s["method"] == mname],
                    {mname: latency.get(mname, {})},
                    n_boot,
                    seed,
                )
                if len(mdf)
                else pd.DataFrame()
            )
            tracker.log_metrics(child, _mlflow_metrics(magg))
            mdir = run_dir / "methods" / mname
            mdir.mkdir(parents=True, exist_ok=True)
            if len(mdf):
                write_table(_arrow_safe(mdf), mdir / "records.parquet")
                write_table(magg, mdir / "aggregate.csv")
                tracker.log_artifact(child, mdir / "records.parquet")
                tracker.log_artifact(child, mdir / "aggregate.csv")
            for g in sorted((run_dir / "samples").glob(f"{mname}__*.png")):
                tracker.log_artifact(child, g, "samples")
            tracker.log_artifact(child, run_dir / "config.json")
            tracker.log_artifact(child, run_dir / "environment.json")
            tracker.set_tags(child, {"g2face.unavailable": json.dumps(oracles.unavailable)[:5000]})
            tracker.end(child, "FINISHED")

        records = pd.concat([d for d in all_records if len(d)], ignore_index=True)
        records = _arrow_safe(records)
        agg = aggregate(records, set_metrics, latency, n_boot, seed)
        demo = demographics(records, n_boot, seed)
        write_table(records, run_dir / "records.parquet")
        write_table(records, run_dir / "records.csv")
        write_table(agg, run_dir / "aggregate.parquet")
        write_table(agg, run_dir / "aggregate.csv")
        write_table(demo, run_dir / "demographics.csv")
        atomic_write_json(run_dir / "set_metrics.json", set_metrics)
        atomic_write_json(run_dir / "unavailable.json", oracles.unavailable)
        summary = format_summary(agg)
        (run_dir / "summary.txt").write_text(summary + "\n")
        for f in (
            "records.parquet",
            "records.csv",
            "aggregate.csv",
            "demographics.csv",
            "summary.txt",
            "latency.json",
            "set_metrics.json",
            "unavailable.json",
        ):
            tracker.log_artifact(parent_id, run_dir / f, "tables")
        if (run_dir / "samples").is_dir():
            tracker.log_artifacts(parent_id, run_dir / "samples", "samples")
        tracker.log_metrics(parent_id, _mlflow_metrics(agg, prefix_method=True))
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
    say("\nAggregate (headline metrics; full table with 95% bootstrap CIs in aggregate.csv):")
    say(summary)
    if oracles.unavailable:
        say(
            "\nunavailable (reported, not faked): "
            + "; ".join(f"{k}: {v[:120]}" for k, v in oracles.unavailable.items())
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


def _run_batch(
    runner: MethodRunner,
    method: Anonymizer,
    batch: list[Item],
    ctx: DatasetContext,
    oracles: Oracles,
    master: str,
    dname: str,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    ids = [it.id for it in batch]
    imgs = [it.image for it in batch]
    masks = [it.mask for it in batch]
    keys = derive_keys(master, ids)
    try:
        anon, oks, bits = runner.anonymize(dname, ids, imgs, keys, masks)
        extra: dict[str, Any] = {}
        rec = rec_w = anon2 = None
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
        df = batch_metrics(batch, anon, ctx, oracles, method.reversible, rec, rec_w, anon2, extra)
        df["status"] = "ok"
        feats = {}
        for ext, fn in oracles.extractors.items():
            if ext in ctx.real_features:
                feats[ext] = _features(fn, anon)
        return df, feats
    except Exception as e:  # noqa: BLE001 - a method crashing on a batch: failure records, the run continues
        log.warning("%s failed on a batch of %s: %s", runner.name, dname, e)
        tb = traceback.format_exception_only(type(e), e)[-1].strip()
        df = pd.DataFrame({"id": ids, "status": "failed", "reason": f"method error: {tb}"[:500]})
        for k in META_COLUMNS:
            vals = [it.meta.get(k) for it in batch]
            if any(v is not None for v in vals):
                df[k] = vals
        return df, {}


def _write_grid(
    run_dir: Path, runner: MethodRunner, method: Anonymizer, pdata: PreparedDataset, master: str, n: int
) -> None:
    items = pdata.items[:n]
    if not items:
        return
    ids = [it.id for it in items]
    imgs = [it.image for it in items]
    keys = derive_keys(master, ids)
    try:
        anon, _, _ = runner.anonymize(pdata.name, ids, imgs, keys, [it.mask for it in items])
        rows = []
        if method.reversible:
            rec, _, _ = runner.recover(pdata.name, ids, anon, keys)
            wr, _, _ = runner.recover(pdata.name, ids, anon, derive_keys(master + "/wrong-key", ids))
        for j in range(len(items)):
            rows.append(
                [
                    imgs[j],
                    anon[j],
                    rec[j] if method.reversible else None,
                    wr[j] if method.reversible else None,
                ]
            )
        _save_png(run_dir / "samples" / f"{runner.name}__{pdata.name}.png", sample_grid(rows))
    except Exception as e:  # noqa: BLE001
        log.warning("sample grid for %s/%s failed: %s", runner.name, pdata.name, e)


def _latency(
    runner: MethodRunner,
    method: Anonymizer,
    prepared: dict[str, PreparedDataset],
    master: str,
    repeats: int,
    device: str,
) -> dict:
    from g2face_eval.metrics.latency import measure

    items = next((p.items for p in prepared.values() if p.items), [])[:8]
    if not items:
        return {}
    x = to_tensor([it.image for it in items]).to(device)
    keys = derive_keys(master + "/latency", [it.id for it in items])
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
        "memory_kind": res.memory_kind,
    }


def cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="g2face-eval evaluate", description=__doc__.split("\n\n")[0])
    C.add_arguments(ap)
    ap.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    ns = ap.parse_args(argv)
    import signal

    def _terminate(signum, frame):  # SIGTERM: unwind so MLflow runs end as KILLED
        raise SystemExit(128 + signum)

    try:
        signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not in the main thread
        pass
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = C.from_args(ns)
    except (ValueError, OSError) as e:
        print(f"g2face-eval evaluate: {e}", file=sys.stderr)
        return 2
    if int(__import__("os").environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: images sharded across ranks
        from g2face_eval.harness.distributed import evaluate_distributed

        evaluate_distributed(cfg, progress=not ns.no_progress)
        return 0
    evaluate(cfg, progress=not ns.no_progress)
    return 0
