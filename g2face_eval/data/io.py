"""Robust image and mask loading.

``load_image(path)`` always returns a C-contiguous ``np.ndarray`` uint8 (H, W, 3) **RGB** (the project's host
convention, see ``g2face_eval/imaging.py``), whatever the file holds:

* grayscale (``L``, ``1``, ``I;16``, ``I``, ``F``) is replicated to three channels;
* 16-bit data (``I;16*`` / ``I`` from 16-bit PNG or TIFF) is scaled to 8 bit as ``round(v * 255 / 65535)``
  (not truncated, not clipped at 255); a 32-bit integer ``I`` image is read the same way, so a value outside
  0..65535 is refused; 16-bit RGB(A) PNGs are reduced to 8 bit by Pillow itself (high byte);
  ``F`` (float) images are taken as [0, 1] when their maximum is <= 1, else as [0, 255], and rounded; a NaN or
  infinite pixel, or a value outside [0, 255] (beyond rounding; e.g. a float image in 0..65535), is refused
  (there is no honest value to give it: clipping made such an image white);
* images with alpha (``RGBA``, ``LA``, ``PA``, a palette, RGB or grayscale image -- 1 to 16 bit -- with a
  transparency entry: PNG's ``tRNS`` colour key, matched on the stored values) are **composited on white**:
  ``rgb * a + 255 * (1 - a)``. Dropping the alpha instead would expose whatever colour values happen to sit
  under fully transparent pixels (often black or junk), which detectors read as a hard dark border; white
  is the usual background of cut-out portraits;
* palette (``P``) images are expanded through their palette;
* the colour key of a 16-bit RGB PNG is ignored with a warning (Pillow reduces its pixels to 8 bit before they can
  be matched against the 16-bit key);
* CMYK JPEGs (including Adobe's inverted CMYK, which Pillow undoes when reading) are converted with Pillow's
  CMYK -> RGB conversion; when the file carries an ICC profile it is converted through that profile to sRGB
  instead (falls back to the plain conversion if the profile is unusable);
* the EXIF orientation tag is applied (the array is what a viewer shows, upright);
* a multi-frame file (animated GIF / PNG / WebP, multi-page TIFF) gives its first frame.

Refused with ``ImageLoadError(reason)`` (``str(err)`` names the file and the reason): missing file, zero-byte
file, not an image (unidentified format, e.g. a text file named ``.jpg``), truncated data (no partial images
are returned: truncated JPEG/PNG data is an error, never grey-filled), corrupt data as far as the decoder
notices it (JPEG: see below), NaN/infinite float pixels, 32-bit integer pixels outside 0..65535, too small
(a side < ``MIN_SIDE`` = 16 px) and too large (> ``MAX_PIXELS`` = 50 megapixels). Size limits are checked from the
file header **before** any pixel is decoded, so a 10000 x 10000 image costs a header read, not 300 MB;
Pillow's own decompression-bomb guard is turned into an ``ImageLoadError`` as well.

Corrupt JPEG entropy data with the end marker intact is *not* an error to Pillow: libjpeg resynchronises,
warns ("Corrupt JPEG data: ...") and Pillow returns the garbage pixels silently. So every JPEG that Pillow
decoded is decoded once more by libjpeg-turbo through ``simplejpeg`` in strict mode (``_check_jpeg``), and a
corrupt-data warning (``JPEG_CORRUPT_WARNINGS``) refuses the file as ``corrupt image data (JPEG: ...)``; the
pixels returned are still Pillow's. Truncated JPEGs are refused by Pillow first, as ``truncated image data``.
Limit: libjpeg notices junk only when it leaves the Huffman decoder out of step with the rest of the scan
(200-byte junk overwrites: 25 to 36 in 40 refused, see docs/RELIABILITY.md); JPEG has no checksum, so the
rest decodes to garbage undetected.
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
# libjpeg's warnings that mean the entropy-coded (pixel) data is damaged: the decoder skipped or invented
# data to go on (JWRN_HIT_MARKER, JWRN_HUFF_BAD_CODE, JWRN_ARITH_BAD_CODE, JWRN_EXTRANEOUS_DATA,
# JWRN_MUST_RESYNC, JWRN_JPEG_EOF, JWRN_BOGUS_PROGRESSION). Other warnings (e.g. an unknown JFIF revision) and
# "bad ICC marker" (metadata, not pixels) do not refuse a file.
JPEG_CORRUPT_WARNINGS = ("Corrupt JPEG data", "Premature end of JPEG file", "Inconsistent progression sequence")

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


def _open_checked(path: str | os.PathLike, data: bytes | None = None) -> Image.Image:
    """Open lazily (header only) and apply every check that does not need the pixels; ``data``: the file's bytes,
    already read (decoded from memory instead of the file)."""
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
            img = Image.open(p if data is None else _io.BytesIO(data))
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
    if img.format in ("JPEG", "MPO"):
        _check_jpeg(p)
    return img


def _check_jpeg(p: Path) -> None:
    """Refuse a JPEG whose entropy-coded data libjpeg-turbo reports as corrupt (see the module docstring).
    Every JPEG of the shared datasets (16,701 files: LFW, CelebA-HQ 256, CelebA, UTKFace) passes."""
    import simplejpeg  # a declared dependency (pyproject.toml); imported here to keep ``import io`` light

    try:
        data = p.read_bytes()
    except OSError as e:
        raise ImageLoadError(f"cannot read file ({e.strerror or e})", p) from None
    try:
        space = simplejpeg.decode_jpeg_header(data, strict=False)[2]
        simplejpeg.decode_jpeg(
            data, colorspace={"CMYK": "CMYK", "YCCK": "CMYK", "Gray": "GRAY"}.get(space, "RGB"), strict=True
        )
    except Exception as e:  # noqa: BLE001 - only the corrupt-data warnings refuse; Pillow decoded the file
        msg = str(e)
        if msg.startswith(JPEG_CORRUPT_WARNINGS) and "bad ICC marker" not in msg:
            raise ImageLoadError(f"corrupt image data (JPEG: {msg})", p) from None


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the header, with the same refusals as ``load_image`` except decoding errors.
    EXIF orientation is not applied (a 90-degree rotation swaps the two)."""
    img = _open_checked(path)
    try:
        return img.size
    finally:
        img.close()


def _png_rawmode(img: Image.Image) -> str | None:
    """How a PNG stores its pixels ("RGB;16B", "L;2", ...: Pillow's raw mode), read before decoding; else None."""
    if img.format != "PNG" or not img.tile:
        return None
    args = img.tile[0][3]
    return args if isinstance(args, str) else args[0] if isinstance(args, tuple) and args else None


def _to_rgb_uint8(img: Image.Image, p: Path | None = None, stored: str | None = None) -> np.ndarray:
    mode = img.mode
    key = img.info.get("transparency")
    keyed = key is not None and mode in ("RGB", "L", "1", "P")   # a colour key (PNG tRNS, GIF)
    if keyed and mode == "RGB" and (stored or "").startswith("RGB;16"):
        # a 16-bit RGB PNG: Pillow has already reduced the pixels to 8 bit, so the 16-bit key can no longer be
        # matched exactly (pixels that differ from it in the low byte would match too)
        warnings.warn(f"{p}: ignoring the colour key {key} of a 16-bit RGB image (its pixels are already reduced "
                      "to 8 bit); transparent pixels keep their stored colour", stacklevel=3)
        keyed = False
    if keyed and mode == "L" and stored in ("L;2", "L;4") and isinstance(key, int):
        # 2- and 4-bit grey: Pillow scales the pixels to 0..255 (x 85, x 17) but not the key
        img.info["transparency"] = key * (85 if stored == "L;2" else 17)
    if mode == "RGB" and not keyed:
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
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ImageLoadError(
                f"integer pixel values {a.min():.0f}..{a.max():.0f} outside 0..65535 (mode {mode}; read as 16 bit)",
                p,
            )
        transparent = (a == float(key)) if isinstance(key, (int, float)) else None   # tRNS on the 16-bit values
        a = np.clip(np.rint(a * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        if transparent is not None:
            a[transparent] = 255                                 # composited on white, like every alpha
        return np.repeat(a[..., None], 3, axis=2)
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        if not np.isfinite(a).all():
            raise ImageLoadError(f"float image with {int((~np.isfinite(a)).sum())} NaN or infinite pixel(s)", p)
        if a.size and (a.min() < -0.5 or a.max() >= 255.5):
            raise ImageLoadError(f"float pixel values {a.min():.6g}..{a.max():.6g} outside [0, 1] and [0, 255]", p)
        if a.size and a.max() <= 1.0:
            a = a * 255.0
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or keyed
    if mode in ("L", "1") and not keyed:
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
    return _load_image(Path(path), None)


def load_image_and_bytes(path: str | os.PathLike) -> tuple[np.ndarray, bytes]:
    """``load_image`` and the file's bytes, read once: a digest of the bytes describes exactly what was decoded."""
    p = Path(path)
    try:
        data = p.read_bytes() if p.is_file() else None
    except OSError:
        data = None  # unreadable: _open_checked reports it as load_image does
    arr = _load_image(p, data)
    if data is None:  # decoded from the file although reading it failed just before: no bytes to give
        raise ImageLoadError("cannot read file", p)
    return arr, data


def _load_image(p: Path, data: bytes | None) -> np.ndarray:
    img = _open_checked(p, data)
    try:
        stored = _png_rawmode(img)
        img = _decode(img, p)
        try:
            img = ImageOps.exif_transpose(img)
        except Exception as e:  # malformed EXIF must not lose an otherwise good image
            warnings.warn(f"{p}: ignoring unreadable EXIF orientation ({e})", stacklevel=2)
        arr = _to_rgb_uint8(img, p, stored)
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
