"""Streaming data preparation for ``evaluate``: datasets are read in chunks of ``batch_size`` raw ids, never
held in memory as a whole.

For each chunk, once per run: load -> prepare to ``image_size`` (aligned datasets: centre square crop +
resize; unaligned: FFHQ crop from the YuNet landmarks of the subject's face on the raw image, detected at most
``DETECT_MAX_SIDE`` px, the subject chosen by ``oracles.validation.pick_subject_face``) -> detect the face on the
prepared original (the one the crop was made for, ``subject_on_prepared``). Images that fail to load or have
no face become failure records. The chunk's *reference data* -- the prepared faces (boxes, landmarks,
metadata), the original embeddings per recognizer, the originals' face meshes and realism features -- is
persisted in the run's ``prepared/`` store (atomic writes), so a resumed run
(or rank 0 after a distributed run) knows every chunk without touching the images again. Images are reloaded
on demand with the stored landmarks (no second detection), only for chunks that still have work.

For ``celeba_id`` the identification gallery is prepared the same way (chunks of gallery ids); only its
embeddings and identity labels are kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from g2face_eval.harness.records import RecordStore, digest

log = logging.getLogger("g2face_eval.evaluate")

AGE_BANDS = ((0, 19, "0-19"), (20, 39, "20-39"), (40, 59, "40-59"), (60, 200, "60+"))
GENDERS = {0: "male", 1: "female"}
RACES = {0: "White", 1: "Black", 2: "Asian", 3: "Indian", 4: "Others"}
META_COLUMNS = ("identity", "age", "gender", "race", "age_band", "role")
REPEAT_SEP = "#r"  # ids of repeated images (dataset option ``repeat``, for scale benchmarks): "<id>#r<k>"
# YuNet (the int8 2023mar model) loses faces wider than about 500 px: grace_hopper resized to 1024 px (face ~520
# px wide) scores 0.61 with a shifted box, to 1536-2048 px it returns boxes around one eye (scored as ok, cropped
# as the face). Raw images of unaligned datasets are therefore detected on a copy whose longer side is at most
# this (INTER_AREA), the boxes and landmarks scaled back. Faces up to ~80% of that side (~510 px) keep their box
# (a tight grace_hopper crop: face at 80% of 640 px -> right box, at 95% -> shifted). The cost: YuNet finds no
# face whose box is under ~14 px, so a face under ~2% of the longer side of a large photo is not found. LFW
# (250 px), CelebA (178x218) and UTKFace (200 px) are within the cap: detected as they are.
DETECT_MAX_SIDE = 640
# The face re-detected on the prepared crop is the subject's when its landmarks lie, on average, within this
# fraction of the crop's side of where the crop put the subject's landmarks. The FFHQ crop brings every face to
# one scale, so the side is the natural unit (inter-ocular distance is not: it shrinks on profile faces).
# Measured (nearest face): median 0.02, max 0.10 on LFW (7,701) and CelebA (3,000); on UTKFace (2,000) up to
# 0.20 where YuNet's landmarks on the crop are poor (infants, reflect-padded mosaics): still the subject's face.
# Other detections on multi-face crops (LFW 2,500 images, UTKFace 2,000): median 0.46-0.57, two under 0.25
# (the nearest one is taken whenever the subject is found, so this bound only refuses a crop whose sole
# detections are elsewhere: "the subject's face is not detected in the prepared image").
SUBJECT_MAX_LANDMARK_ERR = 0.25

# Options the harness passes to a dataset unless the config says otherwise.
# celebahq256's train split (its first 3,500 faces) trained the shipped learned checkpoints (g2face, fit,
# inpaint, riddle): the harness evaluates its held-out test split unless a configuration asks otherwise
DATASET_DEFAULT_OPTIONS: dict[str, dict] = {"celebahq256": {"masks": True, "split": "test"}}


@dataclass
class Item:
    """One prepared face. ``image``/``mask`` are filled only while its chunk is being worked on."""

    id: str
    face: Any  # detectors.Face on the prepared image
    meta: dict = field(default_factory=dict)
    src_landmarks: np.ndarray | None = None  # (5,2) on the raw image (unaligned datasets): the crop
    image: np.ndarray | None = None  # (S,S,3) uint8 RGB
    mask: np.ndarray | None = None  # (S,S) float32 face region (from a parsing mask) or None
    pixels: str | None = None  # pixels_digest of the prepared image and mask
    source: str | None = None  # Sample.source: the file's bytes (and mask) it was prepared from


@dataclass
class Chunk:
    """One chunk of a dataset: its prepared items (in id order), its failures and the original embeddings."""

    dataset: str
    index: int
    key: str
    items: list[Item]
    failures: list[tuple[str, str, dict]]  # (id, reason, meta)
    embeddings: dict[str, np.ndarray]  # recognizer -> (n_items, d) embeddings of the originals

    @property
    def ids(self) -> list[str]:
        return [it.id for it in self.items]


@dataclass
class Gallery:
    embeddings: dict[str, np.ndarray]  # recognizer -> (n, d)
    labels: np.ndarray  # (n,) identity labels
    failures: list[tuple[str, str, dict]] = field(default_factory=list)  # photos left out: (id, reason, meta)

    def summary(self) -> dict:
        """How many gallery photos the identification ranks use, of how many, and why the others are out."""
        return {"n_photos": len(self.labels) + len(self.failures), "n_used": len(self.labels),
                "n_identities": len(set(self.labels.tolist())), "n_failed": len(self.failures),
                "failures": [{"id": i, "reason": r} for i, r, _ in self.failures]}


# ----------------------------------------------------------------------------------------------------------
# metadata and image helpers
# ----------------------------------------------------------------------------------------------------------
def resize(img: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
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


def _as_int(v):
    try:
        return int(v)
    except (TypeError, ValueError):
        return v


def norm_meta(meta: dict) -> dict:
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


def identity_of(sid: str) -> str:
    return sid.replace("\\", "/").split("/")[0]


def detect_raw(det, image: np.ndarray, max_side: int = DETECT_MAX_SIDE) -> list:
    """``det.detect`` on ``image`` downscaled (INTER_AREA) so that its longer side is at most ``max_side``, boxes
    and landmarks in ``image``'s pixel coordinates (see ``DETECT_MAX_SIDE``); an image within the cap is
    detected as it is."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return det.detect(image)
    import cv2

    from g2face_eval.oracles.detectors import Face

    r = max_side / max(h, w)
    sw, sh = max(1, round(w * r)), max(1, round(h * r))
    faces = det.detect(cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA))
    sx, sy = w / sw, h / sh
    return [
        Face(
            box=(np.asarray(f.box, np.float64) * [sx, sy, sx, sy]).astype(np.float32),
            landmarks5=(np.asarray(f.landmarks5, np.float64) * [sx, sy]).astype(np.float32),
            score=f.score,
        )
        for f in faces
    ]


def crop_landmarks(src_landmarks: np.ndarray, size: int) -> np.ndarray:
    """Where ``ffhq_crop(image, src_landmarks, size)`` puts the 5 landmarks it was made from."""
    import cv2

    from g2face_eval.oracles.alignment import ffhq_quad

    quad = ffhq_quad(src_landmarks)
    dst = np.array([[0, 0], [0, size], [size, size]], dtype=np.float32)
    m = cv2.getAffineTransform(quad[:3].astype(np.float32), dst).astype(np.float64)
    return np.asarray(src_landmarks, np.float64) @ m[:, :2].T + m[:, 2]


def subject_on_prepared(faces: list, shape, expected: np.ndarray | None = None):
    """The subject among the ``faces`` detected on a prepared image: with ``expected`` (the crop's own
    landmarks, ``crop_landmarks``), the face whose landmarks are nearest to them, or None when even that one is
    off by more than ``SUBJECT_MAX_LANDMARK_ERR`` x the image side on average; without (aligned datasets:
    centre crops), the same rule as on raw images (``pick_subject_face``: score, weighted towards the centre)."""
    from g2face_eval.oracles.validation import pick_subject_face

    if not faces or expected is None:
        return pick_subject_face(faces, shape)
    err = [float(np.linalg.norm(np.asarray(f.landmarks5, np.float64) - expected, axis=1).mean()) for f in faces]
    k = int(np.argmin(err))
    return faces[k] if err[k] <= SUBJECT_MAX_LANDMARK_ERR * max(shape[:2]) else None


class Preparer:
    """Raw sample -> prepared item (with detection), and the same image again later without detection."""

    def __init__(self, size: int) -> None:
        from g2face_eval.oracles.detectors import get_detector

        self.size = size
        self.det = get_detector("yunet")

    def _image(self, sample, aligned: bool, src_landmarks: np.ndarray | None):
        from baselines._region import parsing_to_face_mask

        img, mask = sample.image, sample.mask
        if aligned:
            img = resize(_center_square(img), self.size)
            if mask is not None:
                mask = resize(_center_square(np.asarray(mask)), self.size, nearest=True)
        else:
            from g2face_eval.oracles.alignment import ffhq_crop

            img = ffhq_crop(img, np.asarray(src_landmarks), self.size)
            mask = None
        fm = parsing_to_face_mask(mask) if mask is not None else None
        if fm is not None and fm.sum() == 0:
            fm = None
        return np.ascontiguousarray(img), fm

    def prepare(self, sample, aligned: bool) -> Item | str:
        """Unaligned: the subject (``pick_subject_face``) among the faces of the raw image, detected at most
        ``DETECT_MAX_SIDE`` px, is FFHQ-cropped; then the face detected on the prepared image that is the one
        the crop was made for (``subject_on_prepared``) is the item's face."""
        from g2face_eval.oracles.validation import pick_subject_face

        src = expected = None
        if not aligned:
            face = pick_subject_face(detect_raw(self.det, sample.image), sample.image.shape)
            if face is None:
                return "no face detected"
            src = np.asarray(face.landmarks5, np.float64)
            expected = crop_landmarks(src, self.size)
        img, fm = self._image(sample, aligned, src)
        faces = self.det.detect(img)
        if not faces:
            return "no face detected in the prepared image"
        face = subject_on_prepared(faces, img.shape, expected)
        if face is None:
            return "the subject's face is not detected in the prepared image (only other faces)"
        return Item(sample.id, face, norm_meta(dict(sample.meta or {})), src, img, fm, pixels_digest(img, fm),
                    sample.source)

    def reload(self, sample, aligned: bool, item: Item) -> None:
        """The item's image and mask again, from the sample. ``ImageLoadError`` when its file (or mask) is not the
        one it was prepared from (replaced by another readable image since, e.g. before a resume); the same file
        decoded or resampled to other pixels (another Pillow / OpenCV version since) is warned about once and
        used: its stored references (embeddings, mesh) come from the first decoding."""
        from g2face_eval.data.io import ImageLoadError

        img, fm = self._image(sample, aligned, item.src_landmarks)
        if item.source is not None and sample.source != item.source:
            raise ImageLoadError("the image (or its mask) changed since it was prepared")
        if item.pixels is not None and pixels_digest(img, fm) != item.pixels and not _warned["pixels"]:
            _warned["pixels"] = True
            log.warning("%s: the same file gives other pixels than when it was prepared (another Pillow or OpenCV "
                        "version since?); its stored embeddings and mesh are from the first decoding", item.id)
        item.image, item.mask = img, fm


_warned = {"pixels": False}  # said once per process


def pixels_digest(img: np.ndarray, mask: np.ndarray | None) -> str:
    """A digest of a prepared image (and its face mask): what ``Preparer.reload`` checks a reread against."""
    h = hashlib.blake2b(digest_size=16)
    for a in (img, mask):
        if a is not None:
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.data)
        else:
            h.update(b"none")
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# a dataset of an evaluation
# ----------------------------------------------------------------------------------------------------------
class EmptyDatasetError(ValueError):
    """A dataset of the run has no image to evaluate (an empty folder, a split or limit that selects none)."""


class DatasetSource:
    """The ordered raw ids of one dataset of the run (probes and gallery for ``celeba_id``), in chunks."""

    def __init__(self, name: str, cfg: dict) -> None:
        from g2face_eval.data import datasets as D

        self.name = name
        opts = {**DATASET_DEFAULT_OPTIONS.get(name, {}), **dict(cfg.get("dataset_options", {}).get(name, {}))}
        if name == "celebahq256" and opts.get("split") != "test":
            log.warning("celebahq256 split %r includes the train split the shipped learned checkpoints (g2face, "
                        "fit, inpaint, riddle) were trained on: their quality numbers on it are not held-out",
                        opts.get("split", "all"))
        # the stricter of the dataset's own limit and the run's (--limit): a per-dataset limit never widens a run
        limits = [int(v) for v in (opts.pop("limit", None), cfg.get("limit")) if v]
        limit = min(limits) if limits else None
        self.repeat = int(opts.pop("repeat", 1) or 1)
        if self.repeat < 1:
            raise ValueError(f"dataset_options.{name}.repeat must be >= 1, got {self.repeat}")
        root = opts.pop("root", None) or cfg.get("datasets_root")
        root = Path(root).expanduser() if root else None
        self.gallery_ids: list[str] = []
        if name == "celeba_id":
            if self.repeat > 1:
                raise ValueError("dataset_options.celeba_id.repeat is not supported (identification split)")
            if opts.get("split", "all") != "all":  # the run takes probes and gallery photos from both roles
                raise ValueError("dataset_options.celeba_id.split is not supported in an evaluation: the run "
                                 "evaluates the probes against the gallery photos of the dataset's own split")
            opts.pop("split", None)
            self.ds = D.open_dataset(name, root=root, **opts)
            ids, self.gallery_ids = _identification_split(D, root, opts, int(cfg["gallery_per_identity"]), limit)
        elif self.repeat > 1:  # the dataset's images repeated under distinct ids, then ``limit`` of them
            self.ds = D.open_dataset(name, root=root, **opts)
            base = list(self.ds.ids())
            ids = [i if k == 0 else f"{i}{REPEAT_SEP}{k}" for k in range(self.repeat) for i in base]
            ids = ids[: int(limit)] if limit else ids
        else:
            self.ds = D.open_dataset(name, root=root, **({"limit": int(limit)} if limit else {}), **opts)
            ids = list(self.ds.ids())
        self.ids = ids
        self.aligned = bool(getattr(self.ds, "aligned", True))

    def base_id(self, sid: str) -> str:
        """The dataset's own id of ``sid``: with ``repeat``, only the ``#r<k>`` suffix the repeat added is
        removed (a dataset's own id may contain "#r" itself: ``a#r1.jpg``, repeated as ``a#r1.jpg#r1``)."""
        if self.repeat > 1:
            head, sep, k = sid.rpartition(REPEAT_SEP)
            if sep and k.isascii() and k.isdigit() and 1 <= int(k) < self.repeat:
                try:
                    self.ds.path(head)
                    return head
                except KeyError:
                    pass
        return sid

    def load(self, sid: str):
        base = self.base_id(sid)
        s = self.ds.load(base)
        if base != sid:
            s.id = sid
        return s

    def chunks(self, ids: list[str], size: int) -> list[list[str]]:
        return [ids[i : i + size] for i in range(0, len(ids), size)]


def _identification_split(D, root, opts: dict, per_identity: int, limit) -> tuple[list[str], list[str]]:
    """(probe ids, gallery ids) from the dataset's own deterministic gallery/probe split: one probe per
    identity (the first of its probe photos) against ``per_identity`` gallery photos of every selected
    identity. ``limit`` caps the number of identities (sorted)."""
    o = {k: v for k, v in opts.items() if k != "split"}
    probes = sorted(D.open_dataset("celeba_id", root=root, split="probe", **o).ids())
    gallery = sorted(D.open_dataset("celeba_id", root=root, split="gallery", **o).ids())
    gal_by: dict[str, list[str]] = {}
    for g in gallery:
        gal_by.setdefault(identity_of(g), []).append(g)
    pro_by: dict[str, str] = {}
    for p in probes:
        pro_by.setdefault(identity_of(p), p)
    idents = sorted(k for k in pro_by if k in gal_by)
    if limit:
        idents = idents[: int(limit)]
    return [pro_by[k] for k in idents], [g for k in idents for g in gal_by[k][:per_identity]]


def load_prepare(src: DatasetSource, preparer: Preparer, ids: list[str], role: str | None = None
                 ) -> tuple[list[Item], list[tuple[str, str, dict]]]:
    from g2face_eval.data.io import ImageLoadError

    items, fails = [], []
    for sid in ids:
        try:
            s = src.load(sid)
        except (ImageLoadError, OSError, ValueError) as e:  # the sample's labels ride on the error (Dataset.load)
            reason = e.reason if isinstance(e, ImageLoadError) else e
            fails.append((sid, f"load failed: {reason}", norm_meta(dict(getattr(e, "meta", None) or {}))))
            continue
        try:
            r = preparer.prepare(s, src.aligned)
        except Exception as e:  # noqa: BLE001 - one image the preparation cannot take is that image's failure
            r = f"prepare failed: {type(e).__name__}: {e}"
        if isinstance(r, str):
            fails.append((sid, r, norm_meta(dict(s.meta or {}))))
            continue
        if src.name == "celeba_id" and "identity" not in r.meta:
            r.meta["identity"] = identity_of(sid)
        if role:
            r.meta["role"] = role
        items.append(r)
    return items, fails


def load_images(src: DatasetSource, preparer: Preparer, items: list[Item]) -> list[tuple[str, str, dict]]:
    """Fill ``image``/``mask`` of items whose image is not in memory (same pixels as when prepared). An image
    that can no longer be read (its file deleted, truncated or replaced since it was prepared, e.g. before a
    resume) keeps ``image`` None and is returned as a failure ``(id, reason, meta)``: that image's problem, not
    the run's end."""
    from g2face_eval.data.io import ImageLoadError

    failures = []
    for it in items:
        if it.image is not None:
            continue
        try:
            preparer.reload(src.load(it.id), src.aligned, it)
        except ImageLoadError as e:
            reason = getattr(e, "reason", None) or str(e)
            where = getattr(e, "path", None)
            failures.append((it.id, f"reload failed: {reason}" + (f" ({where})" if where else ""), it.meta))
        except MemoryError:
            raise  # the machine's problem, not the image's
        except Exception as e:  # noqa: BLE001 - OSError (file gone, unreadable) or a crop the new pixels refuse
            failures.append((it.id, f"reload failed: {type(e).__name__}: {e}", it.meta))
        else:
            continue
        it.image = it.mask = None
    return failures


def drop_images(items: list[Item]) -> None:
    for it in items:
        it.image = it.mask = None


# ----------------------------------------------------------------------------------------------------------
# persisted reference data of a chunk
# ----------------------------------------------------------------------------------------------------------
class PrepStore(RecordStore):
    """The run's ``prepared/<dataset>/<chunk key>.{npz,parquet}`` entries."""

    folder = "prepared"
    crash_prefix = "prep"


def chunk_key(chash: str, kind: str, dataset: str, ids: list[str]) -> str:
    return digest(chash, kind, dataset, *ids)[:16]


def _entry(items: list[Item], failures: list[tuple[str, str, dict]]) -> pd.DataFrame:
    rows = []
    for it in items:
        f = it.face
        rows.append(dict(
            id=it.id, status="ok", reason="", meta=json.dumps(it.meta, sort_keys=True),
            face=json.dumps({
                "box": np.asarray(f.box, np.float64).tolist(),
                "landmarks5": np.asarray(f.landmarks5, np.float64).tolist(),
                "score": float(f.score),
                "src": None if it.src_landmarks is None else np.asarray(it.src_landmarks, np.float64).tolist(),
                "pixels": it.pixels,
                "source": it.source,
            }),
        ))
    for sid, reason, meta in failures:
        rows.append(dict(id=sid, status="failed", reason=reason, meta=json.dumps(meta, sort_keys=True), face=""))
    return pd.DataFrame(rows, columns=["id", "status", "reason", "meta", "face"])


def _from_entry(df: pd.DataFrame) -> tuple[list[Item], list[tuple[str, str, dict]]]:
    from g2face_eval.oracles.detectors import Face

    items, fails = [], []
    for r in df.itertuples(index=False):
        meta = json.loads(r.meta)
        if r.status != "ok":
            fails.append((r.id, r.reason, meta))
            continue
        f = json.loads(r.face)
        face = Face(np.asarray(f["box"], np.float64), np.asarray(f["landmarks5"], np.float64), float(f["score"]))
        src = None if f["src"] is None else np.asarray(f["src"], np.float64)
        items.append(Item(r.id, face, meta, src, pixels=f.get("pixels"), source=f.get("source")))
    return items, fails


def prepare_gallery(src: DatasetSource, preparer: Preparer, oracles, store: PrepStore | None, chash: str,
                    chunk_size: int, shard: tuple[int, int] = (0, 1)) -> Gallery:
    """The identification gallery (embeddings + labels), prepared chunk by chunk and persisted in ``store``.
    ``shard=(rank, world)``: only chunks ``i % world == rank`` (a distributed run prepares its share first,
    then every rank reads the whole gallery from the store); the returned gallery then holds that share."""
    embs: dict[str, list[np.ndarray]] = {r: [] for r in oracles.recognizers}
    labels: list[str] = []
    failures: list[tuple[str, str, dict]] = []
    rank, world = shard
    for i, ids in enumerate(src.chunks(src.gallery_ids, chunk_size)):
        if i % world != rank:
            continue
        key = chunk_key(chash, "gallery", src.name, ids)
        if store is not None and store.done(src.name, key):
            df, arrays = store.load(src.name, key)
            items, fails = _from_entry(df)
        else:
            items, fails = load_prepare(src, preparer, ids, "gallery")
            arrays = {f"emb_{r}": _embed(oracles, r, src.name, items) for r in oracles.recognizers}
            df = _entry(items, fails)
            drop_images(items)
            if store is not None:
                store.save(src.name, key, records=df, arrays=arrays)
        for r in oracles.recognizers:
            embs[r].append(arrays[f"emb_{r}"])
        labels += [it.meta["identity"] for it in items]
        failures += fails
    return Gallery({r: _cat(v) for r, v in embs.items()}, np.asarray(labels), failures)


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    parts = [p for p in parts if p.size]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 1), np.float32)


def _embed(oracles, rec: str, dataset: str, items: list[Item]) -> np.ndarray:
    if not items:
        return np.zeros((0, 1), np.float32)
    return oracles.embed(rec, [it.image for it in items], [it.face for it in items], dataset,
                         [it.id for it in items])


def reference_arrays(oracles, dataset: str, items: list[Item]) -> dict[str, np.ndarray]:
    """Original embeddings, face meshes and realism features of prepared items (images in memory)."""
    from g2face_eval.imaging import to_tensor
    from g2face_eval.metrics import realism

    out = {f"emb_{r}": _embed(oracles, r, dataset, items) for r in oracles.recognizers}
    if oracles.mesh is not None:
        lm = np.full((len(items), 468, 3), np.nan, np.float32)
        for j, it in enumerate(items):
            m = oracles.mesh_of(it.image, subject=it.face)
            if m is not None:
                lm[j] = m.landmarks
        out["mesh_landmarks"] = lm
    for name, ext in oracles.extractors.items():
        if not items:
            out[f"feat_{name}"] = np.zeros((0, ext.dim), np.float32)
            continue
        imgs = [it.image for it in items]
        key = realism.content_key([it.id for it in items], imgs)
        out[f"feat_{name}"] = np.asarray(
            realism.reference_features(ext, key, lambda imgs=imgs: iter([to_tensor(imgs)]),
                                       cache_dir=getattr(oracles, "cache_dir", None)), np.float32)
    return out


def prepare_chunk(src: DatasetSource, preparer: Preparer, oracles, store: PrepStore | None, chash: str,
                  index: int, ids: list[str], gallery_labels: set[str] | None
                  ) -> tuple[Chunk, dict[str, np.ndarray]]:
    """One chunk's prepared items and reference data. Returns ``(chunk, arrays)``: ``arrays`` are the
    reference arrays (original embeddings ``emb_<rec>``, ``mesh_landmarks``, realism features
    ``feat_<extractor>``). When the chunk was prepared in this call, its items hold their images and it is
    saved to ``store``; when it was found in ``store``, images are not loaded."""
    key = chunk_key(chash, "probe" if gallery_labels is not None else "items", src.name, ids)
    if store is not None and store.done(src.name, key):
        df, arrays = store.load(src.name, key)
        items, fails = _from_entry(df)
        emb = {r: arrays[f"emb_{r}"] for r in oracles.recognizers}
        return Chunk(src.name, index, key, items, fails, emb), arrays
    items, fails = load_prepare(src, preparer, ids, "probe" if gallery_labels is not None else None)
    if gallery_labels is not None:  # probes whose identity has no usable gallery photo cannot be identified
        keep = []
        for it in items:
            if it.meta["identity"] in gallery_labels:
                keep.append(it)
            else:
                fails.append((it.id, "no usable gallery image for this identity", it.meta))
        items = keep
    arrays = reference_arrays(oracles, src.name, items)
    df = _entry(items, fails)
    if store is not None:
        store.save(src.name, key, records=df, arrays=arrays)
    emb = {r: arrays[f"emb_{r}"] for r in oracles.recognizers}
    return Chunk(src.name, index, key, items, fails, emb), arrays
