"""Datasets: one small interface over image folders (see docs/ARCHITECTURE.md, section data).

A ``Dataset`` has ``.name``, ``.aligned`` (True when images are already FFHQ-style aligned face crops),
``.ids()`` (sorted, stable string ids: relative paths or file names, never positions; a name that is not
valid UTF-8 gets an escaped id, see ``safe_id``), ``len()``,
``.load(id) -> Sample`` (raises ``ImageLoadError``) and ``.iter()`` yielding ``Sample`` or, for a file that
cannot be used, a ``Failure(id, reason)`` record, and then continuing.

Every dataset takes ``limit`` (keep at most that many ids) and ``subset`` (how to choose them):
``"spread"`` (default) ranks ids by ``sha256(id)`` and keeps the first ``limit`` (deterministic,
independent of
the other files present, and not biased by name order: UTKFace names sort by age, for example), ``"first"``
keeps the first ``limit`` sorted ids. The kept ids are always returned sorted.

Real datasets take ``root``: either the datasets root holding ``lfw/``, ``celebahq256/``, ``celeba_id/``,
``utkface/`` (default: ``settings.datasets_root()``, env ``G2FACE_DATASETS``) or the dataset's own folder.

Registered (``DATASETS``; open with ``open_dataset(name, root=None, **kw)``):

* ``embedded``: the default faces shipped in the package (``data/embedded/``; aligned 256x256; few identities,
  a smoke-test default, not a benchmark: see ``data/embedded/PROVENANCE.md``).
* ``folder``: any folder of images (recursive), id = path relative to the folder; ``aligned=`` as declared.
* ``lfw``: LFW deep-funneled, id = ``<Name>/<Name>_<NNNN>.jpg``; ``.pairs`` = the View 2 pairs file parsed
  into ``LFWPair(path1, path2, same, fold)`` (6000 pairs, folds 0..9).
* ``celebahq256``: aligned 256px faces; ``split`` "train" | "test" | "all" (sort ids, last 500 = test);
  ``masks=True`` adds ``Sample.mask`` = face-region mask (``face_region_mask``, uint8 {0,1}) and
  ``meta["parsing"]`` = the 19-class parsing mask.
* ``celeba_id``: identity-labelled; per identity (sorted file names) the last ``n // 3`` images are probes,
  the others gallery (30 images -> 20 gallery + 10 probes); ``split`` "gallery" | "probe" | "all".
  For rank-k identification the probes are anonymized and matched against the gallery, which holds only
  *other* photos of the same people. ``meta``: identity, role.
* ``utkface``: ``meta``: age (years), age_band (``AGE_BANDS``), gender ("male"/"female"), gender_code,
  race (name), race_code; a file whose name does not parse is a ``Failure`` (``MalformedNameError``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from g2face_eval import settings
from g2face_eval.registry import Registry

from .io import IMAGE_EXTENSIONS, ImageLoadError, load_image_and_bytes, load_mask

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"

__all__ = [
    "AGE_BANDS",
    "CELEBAMASK_CLASSES",
    "DATASETS",
    "EMBEDDED_DIR",
    "FACE_REGION_CLASSES",
    "Dataset",
    "Failure",
    "LFWPair",
    "MalformedNameError",
    "Sample",
    "age_band",
    "face_region_mask",
    "open_dataset",
    "parse_lfw_pairs",
    "parse_utkface_name",
    "safe_id",
]


@dataclass
class Sample:
    id: str
    image: np.ndarray  # uint8 (H, W, 3) RGB
    mask: np.ndarray | None = None  # uint8 (H, W) {0, 1} face region, when the dataset has one
    meta: dict[str, Any] = field(default_factory=dict)
    source: str | None = None  # digest of the image file's bytes and the mask's values (what was read)


@dataclass(frozen=True)
class Failure:
    id: str
    reason: str


class MalformedNameError(ImageLoadError):
    """A file whose name should carry labels (UTKFace) but does not parse."""


class Dataset:
    """Base class: subclasses fill ``self._files`` (id -> Path) in ``__init__`` and may override
    ``_meta(id)`` and ``_mask(id)``."""

    name: str = "dataset"
    aligned: bool = False

    def __init__(self, files: dict[str, Path], *, limit: int | None = None, subset: str = "spread") -> None:
        self._files = {k: files[k] for k in _select(sorted(files), limit, subset)}

    def ids(self) -> list[str]:
        return list(self._files)  # insertion order is sorted order

    def __len__(self) -> int:
        return len(self._files)

    def path(self, id: str) -> Path:
        try:
            return self._files[id]
        except KeyError:
            raise KeyError(f"{self.name}: unknown id {id!r}") from None

    def _meta(self, id: str) -> dict[str, Any]:
        return {}

    def _mask(self, id: str, meta: dict[str, Any]) -> np.ndarray | None:
        return None

    def load(self, id: str) -> Sample:
        """The sample; a file that cannot be read raises with the sample's labels as the exception's ``meta``
        (a failure still counts in its demographic group)."""
        p = self.path(id)
        meta = self._meta(id)
        try:
            image, data = load_image_and_bytes(p)
            mask = self._mask(id, meta)
            if mask is not None and mask.shape != image.shape[:2]:
                raise ImageLoadError(f"mask shape {mask.shape} does not match image {image.shape[:2]}", p)
            h = hashlib.blake2b(data, digest_size=16)
        except (ImageLoadError, OSError, ValueError) as e:
            e.meta = meta
            raise
        if mask is not None:
            h.update(np.ascontiguousarray(mask).data)
        return Sample(id=id, image=image, mask=mask, meta=meta, source=h.hexdigest())

    def iter(self) -> Iterator[Sample | Failure]:
        for id in self.ids():
            try:
                yield self.load(id)
            except ImageLoadError as e:
                yield Failure(id, e.reason)
            except (OSError, ValueError) as e:  # anything else file-level: report, never stop the run
                yield Failure(id, f"{type(e).__name__}: {e}")

    def __iter__(self) -> Iterator[Sample | Failure]:
        return self.iter()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}: {len(self)} ids, aligned={self.aligned}>"


def _select(ids: list[str], limit: int | None, subset: str) -> list[str]:
    if subset not in ("spread", "first"):
        raise ValueError(f"subset must be 'spread' or 'first', not {subset!r}")
    if limit is None or limit >= len(ids):
        return ids
    if limit < 0:
        raise ValueError("limit must be >= 0")
    if subset == "first":
        return ids[:limit]
    # surrogateescape: the same digest for every valid id, and no crash on an id that is not valid Unicode
    ranked = sorted(ids, key=lambda i: hashlib.sha256(i.encode("utf-8", "surrogateescape")).hexdigest())
    return sorted(ranked[:limit])


def safe_id(name: str) -> str:
    """``name`` as a valid Unicode string (an id must be hashable as UTF-8 and writable to parquet and JSON).
    On POSIX a file name that is not valid UTF-8 reaches Python with surrogate escapes (byte 0xXX as U+DCXX),
    which no UTF-8 writer accepts: each such byte becomes ``%XX`` (``b"Jos\\xe9.jpg"`` -> ``"Jos%E9.jpg"``), any
    other lone surrogate ``%uXXXX``. Valid names are returned unchanged."""
    if not any("\ud800" <= c <= "\udfff" for c in name):
        return name
    return "".join(
        (f"%{ord(c) - 0xDC00:02X}" if 0xDC80 <= ord(c) <= 0xDCFF else f"%u{ord(c):04X}")
        if 0xD800 <= ord(c) <= 0xDFFF
        else c
        for c in name
    )


def _image_files(folder: Path, pattern: str = "**/*") -> dict[str, Path]:
    out, escaped = {}, []
    for p in folder.glob(pattern):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
            rel_s = rel.as_posix()
            sid = safe_id(rel_s)
            if sid == rel_s:
                out[sid] = p
            else:
                escaped.append((sid, rel_s, p))
    # names that are not valid UTF-8 get their escaped id; one that collides with a real name takes a suffix
    for sid, rel_s, p in sorted(escaped):
        if sid in out:
            sid += "~" + hashlib.sha256(rel_s.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        out[sid] = p
    return out


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's folder is missing or lacks its layout (see docs/DATASETS.md)."""


class DatasetOptionsError(ValueError):
    """A dataset's options (``dataset_options.<name>``) are not ones it takes or have bad values."""


def _resolve_root(root: str | Path | None, sub: str, marker: str) -> Path:
    """``root``: the datasets root (holding ``sub``) or the dataset folder itself (holding ``marker``)."""
    if root is None:
        root = settings.datasets_root()
        if root is None:
            raise DatasetNotFoundError(
                f"dataset {sub!r} needs a root: pass root=... or set G2FACE_DATASETS "
                f"to the folder holding {sub}/"
            )
    root = Path(root).expanduser()
    for cand in (root / sub, root):
        if (cand / marker).exists():
            return cand
    raise DatasetNotFoundError(f"dataset {sub!r}: no {marker} under {root / sub} or {root}")


DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset")


def open_dataset(name: str, root: str | Path | None = None, **kw: Any) -> Dataset:
    return DATASETS.get(name)(root=root, **kw)


# --- folder -------------------------------------------------------------------------------------------------


@DATASETS.register("folder")
class FolderDataset(Dataset):
    """Any folder of images, searched recursively; id = path relative to ``root`` (POSIX separators)."""

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        aligned: bool = False,
        name: str | None = None,
        limit: int | None = None,
        subset: str = "spread",
    ) -> None:
        if root is None:
            raise ValueError("the folder dataset needs root=<folder of images>")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetNotFoundError(f"folder dataset: {self.root} is not a directory")
        self.name = name or f"folder:{self.root.name}"
        self.aligned = aligned
        super().__init__(_image_files(self.root), limit=limit, subset=subset)


# --- LFW ----------------------------------------------------------------------------------------------------


class LFWPair(NamedTuple):
    path1: Path
    path2: Path
    same: bool
    fold: int  # 0..9


def parse_lfw_pairs(pairs_file: str | Path, images_dir: str | Path) -> list[LFWPair]:
    """Parse an LFW View 2 ``pairs.txt`` (header ``<folds> <n>``, then per fold ``n`` same-person lines
    ``name i j`` and ``n`` different-person lines ``name1 i name2 j``) into absolute image paths
    ``<images_dir>/<name>/<name>_<i:04d>.jpg``. Raises ``ValueError`` on a malformed file."""
    images_dir = Path(images_dir)
    lines = [ln.split() for ln in Path(pairs_file).read_text().splitlines() if ln.strip()]
    if not lines or len(lines[0]) != 2 or not all(x.isdigit() for x in lines[0]):
        raise ValueError(f"{pairs_file}: expected a header '<folds> <pairs per class>'")
    folds, n = int(lines[0][0]), int(lines[0][1])
    body = lines[1:]
    if len(body) != folds * 2 * n:
        raise ValueError(f"{pairs_file}: {len(body)} pair lines, expected {folds} x 2 x {n}")

    def img(name: str, k: str) -> Path:
        return images_dir / name / f"{name}_{int(k):04d}.jpg"

    out = []
    for i, f in enumerate(body):
        fold, within = divmod(i, 2 * n)
        expect_same = within < n
        if len(f) == 3:
            pair = LFWPair(img(f[0], f[1]), img(f[0], f[2]), True, fold)
        elif len(f) == 4:
            pair = LFWPair(img(f[0], f[1]), img(f[2], f[3]), False, fold)
        else:
            raise ValueError(f"{pairs_file}: line {i + 2} has {len(f)} fields")
        if pair.same != expect_same:
            raise ValueError(f"{pairs_file}: line {i + 2}: pair type out of the standard fold order")
        out.append(pair)
    return out


@DATASETS.register("lfw")
class LFWDataset(Dataset):
    """LFW deep-funneled. id = ``<Name>/<Name>_<NNNN>.jpg``; meta: identity. Not aligned (250x250 funneled,
    face roughly centred). ``.pairs``: the View 2 protocol (``LFWPair`` list, 6000 pairs in 10 folds)."""

    name = "lfw"
    aligned = False

    def __init__(self, root: str | Path | None = None, *, limit: int | None = None, subset: str = "spread"):
        self.root = _resolve_root(root, "lfw", "pairs.txt")
        self.images_dir = self.root / "lfw-deepfunneled"
        self.pairs_file = self.root / "pairs.txt"
        self._pairs: list[LFWPair] | None = None
        super().__init__(_image_files(self.images_dir, "*/*"), limit=limit, subset=subset)

    @property
    def pairs(self) -> list[LFWPair]:
        if self._pairs is None:
            self._pairs = parse_lfw_pairs(self.pairs_file, self.images_dir)
        return self._pairs

    def id_of(self, path: str | Path) -> str:
        return safe_id(Path(path).relative_to(self.images_dir).as_posix())

    def _meta(self, id: str) -> dict[str, Any]:
        return {"identity": id.split("/", 1)[0]}


# --- CelebAMask-HQ 256 --------------------------------------------------------------------------------------

CELEBAMASK_CLASSES = (
    "background",
    "skin",
    "nose",
    "eye_glasses",
    "l_eye",
    "r_eye",
    "l_brow",
    "r_brow",
    "l_ear",
    "r_ear",
    "mouth",
    "u_lip",
    "l_lip",
    "hair",
    "hat",
    "earring",
    "necklace",
    "neck",
    "cloth",
)
# The region an anonymizer must change: skin, nose, glasses (they sit on the eyes: leaving them out would
# punch holes in the eye region), eyes, brows, mouth, lips. Not: ears (optional), hair, hat, jewellery,
# neck, cloth, background. The one definition: baselines._region.FACE_PARSING_CLASSES is this tuple.
FACE_REGION_CLASSES = (1, 2, 3, 4, 5, 6, 7, 10, 11, 12)
EAR_CLASSES = (8, 9)


def face_region_mask(parsing: np.ndarray, include_ears: bool = False) -> np.ndarray:
    """uint8 {0,1} (H, W) face-region mask from a 19-class CelebAMask-HQ parsing mask."""
    classes = FACE_REGION_CLASSES + (EAR_CLASSES if include_ears else ())
    return np.isin(parsing, classes).astype(np.uint8)


@DATASETS.register("celebahq256")
class CelebAHQ256Dataset(Dataset):
    """Aligned 256px CelebA-HQ faces; id = file stem (``"00000"``). Split: ids sorted, last ``TEST_SIZE`` =
    test, rest = train. ``masks=True``: ``Sample.mask`` = face region (see ``face_region_mask``;
    ``include_ears``), ``meta["parsing"]`` = the 19-class mask (``CELEBAMASK_CLASSES``)."""

    name = "celebahq256"
    aligned = True
    TEST_SIZE = 500

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        split: str = "all",
        masks: bool = False,
        include_ears: bool = False,
        limit: int | None = None,
        subset: str = "spread",
    ) -> None:
        if split not in ("train", "test", "all"):
            raise ValueError(f"celebahq256 split must be 'train', 'test' or 'all', not {split!r}")
        self.root = _resolve_root(root, "celebahq256", "images")
        self.split, self.masks, self.include_ears = split, masks, include_ears
        files = {p.stem: p for p in (self.root / "images").glob("*.jpg")}
        ids = sorted(files)
        if split == "test":
            ids = ids[-self.TEST_SIZE :]
        elif split == "train":
            ids = ids[: -self.TEST_SIZE] if len(ids) > self.TEST_SIZE else []
        super().__init__({i: files[i] for i in ids}, limit=limit, subset=subset)

    def _meta(self, id: str) -> dict[str, Any]:
        return {"split": "test" if id in self._test_ids() else "train"}

    def _test_ids(self) -> set[str]:
        if not hasattr(self, "_test_cache"):
            allids = sorted(p.stem for p in (self.root / "images").glob("*.jpg"))
            self._test_cache = set(allids[-self.TEST_SIZE :])
        return self._test_cache

    def _mask(self, id: str, meta: dict[str, Any]) -> np.ndarray | None:
        if not self.masks:
            return None
        mp = self.root / "masks" / f"{id}.png"
        if not mp.exists():
            raise ImageLoadError("parsing mask missing", mp)
        parsing = load_mask(mp)
        if parsing.max() >= len(CELEBAMASK_CLASSES):
            raise ImageLoadError(f"parsing mask has label {int(parsing.max())} > 18", mp)
        meta["parsing"] = parsing
        return face_region_mask(parsing, self.include_ears)


# --- CelebA identities --------------------------------------------------------------------------------------


@DATASETS.register("celeba_id")
class CelebAIdDataset(Dataset):
    """CelebA aligned&cropped 178x218 (not FFHQ-aligned), identity = folder; id = ``<identity>/<file>``.
    Per identity (file names sorted) the last ``n // 3`` images (at least 1 when n >= 2) are probes, the rest
    gallery: 30 -> 20 gallery + 10 probes."""

    name = "celeba_id"
    aligned = False

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        split: str = "all",
        limit: int | None = None,
        subset: str = "spread",
    ) -> None:
        if split not in ("gallery", "probe", "all"):
            raise ValueError(f"celeba_id split must be 'gallery', 'probe' or 'all', not {split!r}")
        self.root = _resolve_root(root, "celeba_id", "images")
        self.split = split
        self._role: dict[str, str] = {}
        files: dict[str, Path] = {}
        # the same listing as every folder dataset (no hidden files or folders, files only, escaped ids)
        found = _image_files(self.root / "images", "*/*")
        by_identity: dict[str, list[str]] = {}
        for i in sorted(found):
            by_identity.setdefault(i.split("/", 1)[0], []).append(i)
        for ident in sorted(by_identity):
            imgs = by_identity[ident]
            n_probe = max(1, len(imgs) // 3) if len(imgs) >= 2 else 0
            for k, i in enumerate(imgs):
                role = "probe" if k >= len(imgs) - n_probe else "gallery"
                self._role[i] = role
                if split in ("all", role):
                    files[i] = found[i]
        super().__init__(files, limit=limit, subset=subset)

    def _meta(self, id: str) -> dict[str, Any]:
        return {"identity": id.split("/", 1)[0], "role": self._role[id]}


# --- UTKFace ------------------------------------------------------------------------------------------------

UTK_GENDERS = ("male", "female")
UTK_RACES = ("White", "Black", "Asian", "Indian", "Others")
AGE_BANDS = ((0, 19, "0-19"), (20, 39, "20-39"), (40, 59, "40-59"), (60, 200, "60+"))


def age_band(age: int) -> str:
    for lo, hi, label in AGE_BANDS:
        if lo <= age <= hi:
            return label
    raise ValueError(f"age {age} outside 0..200")


def parse_utkface_name(name: str) -> dict[str, Any]:
    """``<age>_<gender>_<race>_<timestamp>.jpg.chip.jpg`` -> labels; raises ``ValueError`` if malformed."""
    base = name.split(".", 1)[0]
    parts = base.split("_")
    if len(parts) != 4:
        raise ValueError(f"expected <age>_<gender>_<race>_<timestamp>, got {len(parts)} fields")
    try:
        age, gender, race = int(parts[0]), int(parts[1]), int(parts[2])
    except ValueError:
        raise ValueError("age, gender and race must be integers") from None
    if not 0 <= age <= 120:
        raise ValueError(f"age {age} out of range")
    if gender not in (0, 1):
        raise ValueError(f"gender code {gender} not 0/1")
    if not 0 <= race < len(UTK_RACES):
        raise ValueError(f"race code {race} not 0..4")
    return {
        "age": age,
        "age_band": age_band(age),
        "gender": UTK_GENDERS[gender],
        "gender_code": gender,
        "race": UTK_RACES[race],
        "race_code": race,
        "timestamp": parts[3],
    }


@DATASETS.register("utkface")
class UTKFaceDataset(Dataset):
    """UTKFace aligned&cropped 200x200 (not FFHQ-aligned); id = file name; labels parsed from the name."""

    name = "utkface"
    aligned = False

    def __init__(self, root: str | Path | None = None, *, limit: int | None = None, subset: str = "spread"):
        self.root = _resolve_root(root, "utkface", "images")
        super().__init__(_image_files(self.root / "images", "*"), limit=limit, subset=subset)

    def _meta(self, id: str) -> dict[str, Any]:
        try:
            return parse_utkface_name(id)
        except ValueError as e:
            raise MalformedNameError(f"malformed UTKFace file name: {e}", self.path(id)) from None


# --- embedded -----------------------------------------------------------------------------------------------


@DATASETS.register("embedded")
class EmbeddedDataset(Dataset):
    """The default faces that ship in the package (``data/embedded/faces``), aligned 256x256 FFHQ-style.
    id = file name; meta from ``manifest.json``: identity, source, variant (``"original"`` or ``"hflip"``),
    source_face (the original's id for a variant). Few identities: a smoke-test default, not a benchmark.

    ``root`` is accepted and ignored (so callers can pass one root to every dataset); ``folder=`` points at
    another copy (e.g. one rebuilt by ``embedded_build --out``). ``variants=False`` drops the mirrors."""

    name = "embedded"
    aligned = True

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        limit: int | None = None,
        subset: str = "spread",
        variants: bool = True,
        folder: str | Path | None = None,
    ) -> None:
        folder = Path(folder) if folder is not None else EMBEDDED_DIR
        self.folder = folder
        manifest = json.loads((folder / "manifest.json").read_text())
        self.manifest = {e["id"]: e for e in manifest["faces"]}
        files = {
            i: folder / "faces" / i
            for i, e in self.manifest.items()
            if variants or e["variant"] == "original"
        }
        super().__init__(files, limit=limit, subset=subset)

    def _meta(self, id: str) -> dict[str, Any]:
        e = self.manifest[id]
        return {k: e[k] for k in ("identity", "source", "variant", "source_face") if k in e}
