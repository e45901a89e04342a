"""Robust image and mask loading.

``load_image(path)`` always returns a C-contiguous ``np.ndarray`` uint8 (H, W, 3) **RGB** (the project's host
convention, see ``g2face_eval/imaging.py``), whatever the file holds:

* grayscale (``L``, ``1``, ``I;16``, ``I``, ``F``) is replicated to three channels;
* 16-bit data (``I;16*`` / ``I`` from 16-bit PNG or TIFF) is scaled to 8 bit as ``round(v * 255 / 65535)``
  (not truncated, not clipped at 255); 16-bit RGB(A) PNGs are reduced to 8 bit by Pillow itself (high byte);
  ``F`` (float) images are taken as [0, 1] when their maximum is <= 1, else as [0, 255], and clipped;
* images with alpha (``RGBA``, ``LA``, ``PA``, palette with a transparency entry) are **composited on white**:
  ``rgb * a + 255 * (1 - a)``. Dropping the alpha instead would expose whatever colour values happen to sit
  under fully transparent pixels (often black or junk), which detectors read as a hard dark border; white
  is the usual background of cut-out portraits;
* palette (``P``) images are expanded through their palette;
* CMYK JPEGs (including Adobe's inverted CMYK, which Pillow undoes when reading) are converted with Pillow's
  CMYK -> RGB conversion; when the file carries an ICC profile it is converted through that profile to sRGB
  instead (falls back to the plain conversion if the profile is unusable);
* the EXIF orientation tag is applied (the array is what a viewer shows, upright).

Refused with ``ImageLoadError(reason)`` (``str(err)`` names the file and the reason): missing file, zero-byte
file, not an image (unidentified format, e.g. a text file named ``.jpg``), corrupt or truncated data (no
partial images are returned: truncated JPEG/PNG data is an error, never grey-filled), too small (a side
< ``MIN_SIDE`` = 16 px) and too large (> ``MAX_PIXELS`` = 50 megapixels). Size limits are checked from the
file header **before** any pixel is decoded, so a 10000 x 10000 image costs a header read, not 300 MB;
Pillow's own decompression-bomb guard is turned into an ``ImageLoadError`` as well.
"""

from __future__ import annotations

import io as _io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

MIN_SIDE = 16
MAX_PIXELS = 50_000_000
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pnm")

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "MIN_SIDE",
    "ImageLoadError",
    "image_size",
    "load_image",
    "load_mask",
]


class ImageLoadError(Exception):
    """An image (or mask) file that cannot be used. ``.reason`` is a short human-readable cause,
    ``.path`` the file (or None)."""

    def __init__(self, reason: str, path: str | os.PathLike | None = None) -> None:
        self.reason = reason
        self.path = None if path is None else str(path)
        super().__init__(reason if path is None else f"{path}: {reason}")


def _open_checked(path: str | os.PathLike) -> Image.Image:
    """Open lazily (header only) and apply every check that does not need the pixels."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise ImageLoadError("file not found", p) from None
    except OSError as e:
        raise ImageLoadError(f"cannot stat file ({e.strerror or e})", p) from None
    if not p.is_file():
        raise ImageLoadError("not a regular file", p)
    if size == 0:
        raise ImageLoadError("zero-byte file", p)
    try:
        with warnings.catch_warnings(record=True) as caught:
            # Pillow warns above Image.MAX_IMAGE_PIXELS and raises above twice that; both are refusals
            # here. The warning is recorded (not raised) so that our own, clearer size message comes first.
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            img = Image.open(p)
        bomb = [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    except Image.DecompressionBombError as e:
        raise ImageLoadError(f"too large (decompression bomb guard: {e})", p) from None
    except UnidentifiedImageError:
        raise ImageLoadError("not an image (unrecognised format)", p) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError(f"corrupt image header ({e})", p) from None
    w, h = img.size
    if w * h > MAX_PIXELS:
        img.close()
        raise ImageLoadError(
            f"too large: {w}x{h} = {w * h / 1e6:.1f} megapixels > {MAX_PIXELS / 1e6:.0f} "
            "(checked from header)",
            p,
        )
    if min(w, h) < MIN_SIDE:
        img.close()
        raise ImageLoadError(f"too small: {w}x{h} (a side < {MIN_SIDE} px)", p)
    if bomb:
        img.close()
        raise ImageLoadError(f"too large (decompression bomb guard: {bomb[0].message})", p)
    return img


def _decode(img: Image.Image, p: Path) -> Image.Image:
    """Force the decode; truncated or corrupt data is an error, never a partially grey image."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # a global someone else may have set; we never accept partial data
        raise ImageLoadError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; refusing to load partial images", p)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(f"too large (decompression bomb guard: {e})", p) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e)
        kind = "truncated" if "truncat" in msg.lower() else "corrupt"
        raise ImageLoadError(f"{kind} image data ({img.format or 'unknown format'}: {msg})", p) from None
    return img


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the header, with the same refusals as ``load_image`` except decoding errors.
    EXIF orientation is not applied (a 90-degree rotation swaps the two)."""
    img = _open_checked(path)
    try:
        return img.size
    finally:
        img.close()


def _to_rgb_uint8(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode == "CMYK":
        icc = img.info.get("icc_profile")
        if icc:
            try:
                from PIL import ImageCms

                src = ImageCms.ImageCmsProfile(_io.BytesIO(icc))
                dst = ImageCms.createProfile("sRGB")
                return np.asarray(ImageCms.profileToProfile(img, src, dst, outputMode="RGB"), dtype=np.uint8)
            except Exception:  # unusable profile: fall back to the plain conversion
                pass
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img).astype(np.float64)
        a = np.clip(np.rint(a * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        if a.size and a.max() <= 1.0:
            a = a * 255.0
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if mode in ("L", "1"):
        a = np.asarray(img.convert("L"), dtype=np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:4] / 255.0
        out = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)  # P, YCbCr, LAB, HSV, ...


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Load any supported image file as uint8 (H, W, 3) RGB; see the module docstring for the conversions
    and the refusals (``ImageLoadError``)."""
    p = Path(path)
    img = _open_checked(p)
    try:
        img = _decode(img, p)
        try:
            img = ImageOps.exif_transpose(img)
        except Exception as e:  # malformed EXIF must not lose an otherwise good image
            warnings.warn(f"{p}: ignoring unreadable EXIF orientation ({e})", stacklevel=2)
        arr = _to_rgb_uint8(img)
    finally:
        img.close()
    return np.ascontiguousarray(arr)


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """Load a label mask (e.g. a face-parsing PNG) as uint8 (H, W) of raw label values.

    Palette (``P``) masks give their palette *indices* (the labels), not colours; ``L``/``I;16``/``I`` give
    their values (refused if any exceeds 255); an RGB(A) mask is accepted only when its colour channels are
    equal. No EXIF rotation, no resampling. Same file refusals as ``load_image``."""
    p = Path(path)
    img = _open_checked(p)
    try:
        img = _decode(img, p)
        mode = img.mode
        if mode in ("P", "L", "1"):
            a = np.asarray(img if mode != "1" else img.convert("L"))
        elif mode.startswith("I;16") or mode == "I":
            a = np.asarray(img).astype(np.int64)
            if a.size and (a.min() < 0 or a.max() > 255):
                raise ImageLoadError(f"mask labels out of range 0..255 (mode {mode})", p)
        elif mode in ("RGB", "RGBA", "LA", "PA"):
            a = np.asarray(img.convert("RGB") if mode != "LA" else img.convert("L"))
            if a.ndim == 3:
                if not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])):
                    raise ImageLoadError("colour mask: expected a single-channel label image", p)
                a = a[..., 0]
        else:
            raise ImageLoadError(f"unsupported mask mode {mode!r}", p)
    finally:
        img.close()
    return np.ascontiguousarray(a.astype(np.uint8))
