"""Generator of a bad-file corpus for image-loading tests (reusable by any test: ``make_corpus(tmp_path)``).

Every file is synthesised here (no dataset image is copied). ``make_corpus(dir)`` writes the files and returns
``{name: BadFile}``; ``BadFile.expect`` is ``"ok"`` (must load, ``check(array)`` verifies the conversion) or
``"error"`` (must raise ``ImageLoadError``; ``reason_has`` is a substring expected in the reason).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class BadFile:
    name: str
    path: Path
    expect: str  # "ok" | "error"
    reason_has: str = ""
    check: Callable[[np.ndarray], None] | None = None


def _gradient(h: int = 64, w: int = 48) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), np.full_like(xx, 128)], -1).astype(np.uint8)


def _jpeg_bytes(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def corrupt_jpeg_bytes(good: bytes, n: int = 200, seed: int = 0) -> bytes:
    """``good`` with the first ``n`` bytes of its entropy-coded data (right after the SOS segment) overwritten by
    junk free of 0xFF (so no marker is created), the length and the EOI marker kept: a corruption, not a
    truncation. Pillow decodes such a file to garbage pixels without a word. libjpeg warns ("Corrupt JPEG data")
    only when the junk leaves the Huffman decoder out of step with the rest of the scan, which depends on the
    junk (6 to 10 in 10 of such overwrites, measured): JPEG has no checksum, so some junk is undetectable.
    ``seed`` picks the junk; callers use one whose junk libjpeg does notice on their file."""
    sos = good.index(b"\xff\xda")
    start = sos + 2 + struct.unpack(">H", good[sos + 2 : sos + 4])[0]
    assert len(good) - 2 - start > n, "scan data shorter than the junk"
    junk = np.random.default_rng(seed).integers(0, 255, n, dtype=np.uint8).tobytes()  # 0..254
    out = good[:start] + junk + good[start + n :]
    assert len(out) == len(good) and out.endswith(b"\xff\xd9")
    return out


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def huge_png_bytes(w: int = 10000, h: int = 10000) -> bytes:
    """A valid 8-bit grayscale PNG of a constant image, written without ever materialising the pixels:
    one zlib stream of h rows (filter byte 0 + w zeros) compressed incrementally (~100 KB for 10000^2)."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (w + 1)
    parts = [comp.compress(row) for _ in range(h)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def _close(a: np.ndarray, b, tol: int) -> None:
    d = np.abs(a.astype(int) - np.asarray(b, dtype=int)).max()
    assert d <= tol, f"max abs difference {d} > {tol}"


def _is_rgb_u8(a: np.ndarray, h: int, w: int) -> None:
    assert a.dtype == np.uint8 and a.shape == (h, w, 3), (a.dtype, a.shape)


def make_corpus(root: str | Path) -> dict[str, BadFile]:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, BadFile] = {}

    def add(name: str, data: bytes, expect: str, reason_has: str = "", check=None) -> None:
        p = root / name
        p.write_bytes(data)
        out[name] = BadFile(name, p, expect, reason_has, check)

    def save(name: str, img: Image.Image, fmt: str, expect: str = "ok", check=None, **kw) -> None:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        add(name, buf.getvalue(), expect, "", check)

    g = _gradient()
    good_jpeg = _jpeg_bytes(g)

    # --- refusals -------------------------------------------------------------------------------------------
    add("zero_byte.jpg", b"", "error", "zero-byte")
    add("not_an_image.jpg", b"this is a text file, not a JPEG\n" * 20, "error", "not an image")
    # headers (SOI..SOS) kept, then 40 junk bytes and the file ends (no EOI marker): a truncation to libjpeg
    sos = good_jpeg.index(b"\xff\xda")
    rng = np.random.default_rng(0)
    junk = rng.integers(0, 255, 600, dtype=np.uint8).tobytes().replace(b"\xff", b"\x00")
    add("truncated_junk_scan.jpg", good_jpeg[: sos + 14] + junk[:40], "error", "truncated")
    add("corrupt_scan.jpg", corrupt_jpeg_bytes(good_jpeg, seed=2), "error", "corrupt image data")
    # JPEG cut in the middle of its scan data
    big = np.random.default_rng(2).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    big_jpeg = _jpeg_bytes(big)
    add("truncated.jpg", big_jpeg[: len(big_jpeg) // 2], "error", "truncated")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(buf, "PNG")
    png = buf.getvalue()
    add("truncated.png", png[: len(png) // 2], "error", "")
    add("one_pixel.png", _png_of(np.zeros((1, 1, 3), np.uint8)), "error", "too small")
    add("thin_15px.png", _png_of(np.zeros((15, 400, 3), np.uint8)), "error", "too small")
    add("huge_10000x10000.png", huge_png_bytes(10000, 10000), "error", "too large")

    # --- conversions ----------------------------------------------------------------------------------------
    gray = g[..., 0]
    save(
        "gray.png",
        Image.fromarray(gray),
        "PNG",
        check=lambda a: (_is_rgb_u8(a, 64, 48), _close(a, np.repeat(gray[..., None], 3, 2), 0)),
    )
    save(
        "gray.jpg",
        Image.fromarray(gray),
        "JPEG",
        quality=95,
        check=lambda a: (_is_rgb_u8(a, 64, 48), _close(a, np.repeat(gray[..., None], 3, 2), 6)),
    )
    # RGBA: left half opaque gradient, right half fully transparent red -> white
    rgba = np.dstack([g, np.full(g.shape[:2], 255, np.uint8)])
    rgba[:, 24:, :3] = (255, 0, 0)
    rgba[:, 24:, 3] = 0

    def chk_rgba(a):
        _is_rgb_u8(a, 64, 48)
        _close(a[:, :24], g[:, :24], 0)
        _close(a[:, 24:], np.full((64, 24, 3), 255), 0)

    save("rgba.png", Image.fromarray(rgba), "PNG", check=chk_rgba)
    # LA: gray 100 at half alpha over white -> 100*0.5 + 255*0.5 = 177.5 -> 178 (round half even gives 178)
    la = np.dstack([np.full((32, 32), 100, np.uint8), np.full((32, 32), 128, np.uint8)])
    save(
        "la.png",
        Image.frombytes("LA", (32, 32), la.tobytes()),
        "PNG",
        check=lambda a: (
            _is_rgb_u8(a, 32, 32),
            _close(a, np.full((32, 32, 3), 100 * 128 / 255 + 255 * 127 / 255), 1),
        ),
    )
    # palette image with 3 colours
    pal_idx = (np.arange(32 * 32).reshape(32, 32) % 3).astype(np.uint8)
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    pimg = Image.frombytes("P", (32, 32), pal_idx.tobytes())
    pimg.putpalette(colours.flatten().tolist() + [0] * (768 - 9))
    save("palette.png", pimg, "PNG", check=lambda a: (_is_rgb_u8(a, 32, 32), _close(a, colours[pal_idx], 0)))
    save("palette.gif", pimg, "GIF", check=lambda a: (_is_rgb_u8(a, 32, 32), _close(a, colours[pal_idx], 0)))
    # 16-bit grayscale PNG: values 0, 257*k, 65535 -> 0, k, 255 (exact scaling, not truncation or clipping)
    v16 = (np.arange(32 * 32).reshape(32, 32) % 256).astype(np.uint16) * 257
    v16[0, 0] = 65535
    v16[0, 1] = 32896  # 32896 * 255 / 65535 = 128.0
    exp16 = np.rint(v16.astype(float) * 255 / 65535)
    save(
        "gray16.png",
        Image.frombytes("I;16", (32, 32), v16.astype("<u2").tobytes()),
        "PNG",
        check=lambda a: (_is_rgb_u8(a, 32, 32), _close(a, np.repeat(exp16[..., None], 3, 2), 0)),
    )
    # 16-bit RGB PNG written by hand (Pillow cannot write it): high byte = value, low byte junk
    add("rgb16.png", _png16_rgb(g), "ok", check=lambda a: (_is_rgb_u8(a, 64, 48), _close(a, g, 1)))
    # CMYK JPEG of a flat colour
    flat = np.zeros((32, 32, 3), np.uint8)
    flat[:] = (200, 100, 50)
    save(
        "cmyk.jpg",
        Image.fromarray(flat).convert("CMYK"),
        "JPEG",
        quality=95,
        check=lambda a: (_is_rgb_u8(a, 32, 32), _close(a, flat, 6)),
    )
    # EXIF orientation 6 (rotate 90 CW to view): stored 48 wide x 64 high -> shown 64 wide x 48 high
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = g.copy()
    stored[:8, :8] = (255, 0, 0)  # marker in the stored top-left corner -> shown top-right

    def chk_exif(a):
        _is_rgb_u8(a, 48, 64)
        assert a[:8, -8:, 0].mean() > 200 and a[:8, -8:, 2].mean() < 60, "EXIF rotation not applied"

    save("exif_rot90.jpg", Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes(), check=chk_exif)
    save("good.jpg", Image.fromarray(g), "JPEG", quality=95, check=lambda a: _close(a, g, 8))
    save("progressive.jpg", Image.fromarray(g), "JPEG", quality=95, progressive=True, check=lambda a: _close(a, g, 8))
    # float and 32-bit integer TIFFs: finite floats and integers in 0..65535 load, the rest has no honest value
    fl = np.full((32, 32), 0.5, np.float32)
    save("float.tif", Image.fromarray(fl), "TIFF", check=lambda a: _close(a, np.full((32, 32, 3), 128), 0))
    for name, bad in (("float_nan.tif", np.nan), ("float_inf.tif", np.inf)):
        fb = fl.copy()
        fb[3, 4] = bad
        buf = io.BytesIO()
        Image.fromarray(fb).save(buf, "TIFF")
        add(name, buf.getvalue(), "error", "NaN or infinite")
    for name, v in (("float_65535.tif", 65535.0), ("float_negative.tif", -3.0)):   # not [0,1] nor [0,255]
        fb = fl.copy()
        fb[0, 0] = v
        buf = io.BytesIO()
        Image.fromarray(fb).save(buf, "TIFF")
        add(name, buf.getvalue(), "error", "outside [0, 1] and [0, 255]")
    f255 = np.full((32, 32), 200.0, np.float32)
    save("float_0_255.tif", Image.fromarray(f255), "TIFF", check=lambda a: _close(a, np.full((32, 32, 3), 200), 0))
    # PNG tRNS colour key (RGB and grayscale): the keyed colour is transparent -> composited on white
    ck = np.zeros((32, 32, 3), np.uint8)
    ck[8:24, 8:24] = (200, 100, 50)
    exp_ck = np.full((32, 32, 3), 255, np.uint8)
    exp_ck[8:24, 8:24] = (200, 100, 50)
    save("rgb_colour_key.png", Image.fromarray(ck), "PNG", transparency=(0, 0, 0), check=lambda a: _close(a, exp_ck, 0))
    gk = np.zeros((32, 32), np.uint8)
    gk[8:24, 8:24] = 90
    exp_gk = np.where(gk[..., None] == 0, 255, 90).repeat(3, axis=2).astype(np.uint8)
    save("gray_colour_key.png", Image.fromarray(gk), "PNG", transparency=0, check=lambda a: _close(a, exp_gk, 0))
    # the key matched on the stored values: 16-bit grayscale (key 4660 of 0..65535) and 1-bit
    g16 = np.full((32, 32), 4660, np.uint16)
    g16[8:24, 8:24] = 32896                                   # -> 128 in 8 bit
    exp_g16 = np.where(g16[..., None] == 4660, 255, 128).repeat(3, axis=2).astype(np.uint8)
    save("gray16_colour_key.png", Image.fromarray(g16), "PNG", transparency=4660,
         check=lambda a: _close(a, exp_g16, 0))
    b1 = np.zeros((32, 32), bool)
    b1[:, 16:] = True
    save("bilevel_colour_key.png", Image.fromarray(b1), "PNG", transparency=0,
         check=lambda a: _close(a, np.full((32, 32, 3), 255), 0))   # black keyed -> white, white stays white
    # 2-bit grey, key 1: Pillow scales the pixels (x 85) but not the key; left half keyed -> white, right 2 -> 170
    row2 = bytes([0b01010101] * 4 + [0b10101010] * 4)
    exp2 = np.full((32, 32, 3), 255, np.uint8)
    exp2[:, 16:] = 170
    add("gray2_colour_key.png", _png_keyed([row2] * 32, 32, 32, 2, 0, struct.pack(">H", 1)), "ok",
        check=lambda a: _close(a, exp2, 0))
    # 16-bit RGB with a key whose components are <= 255 (stored value 100, i.e. 8-bit 0): Pillow reduces the pixels
    # to 8 bit first, so the key is ignored (with a warning) rather than matched against pixels of 8-bit value 100
    row16 = b"".join(struct.pack(">HHH", v, v, v) for v in [100] * 16 + [25700] * 16)
    exp_rgb16k = np.zeros((32, 32, 3), np.uint8)
    exp_rgb16k[:, 16:] = 100
    add("rgb16_colour_key.png", _png_keyed([row16] * 32, 32, 32, 16, 2, struct.pack(">HHH", 100, 100, 100)), "ok",
        check=lambda a: _close(a, exp_rgb16k, 0))
    i32 = np.full((32, 32), 65535, np.int32)
    save("int32.tif", Image.fromarray(i32), "TIFF", check=lambda a: _close(a, np.full((32, 32, 3), 255), 0))
    for name, v in (("int32_70000.tif", 70000), ("int32_negative.tif", -1)):
        ib = i32.copy()
        ib[0, 0] = v
        buf = io.BytesIO()
        Image.fromarray(ib).save(buf, "TIFF")
        add(name, buf.getvalue(), "error", "outside 0..65535")
    return out


def _png_of(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _png_keyed(rows: list[bytes], w: int, h: int, bit_depth: int, colour_type: int, trns: bytes) -> bytes:
    """A PNG of the given packed rows with a tRNS colour key (what Pillow cannot write: 16-bit RGB, 2-bit grey)."""
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"tRNS", trns)
            + _png_chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + r for r in rows))) + _png_chunk(b"IEND", b""))


def _png16_rgb(arr8: np.ndarray) -> bytes:
    h, w, _ = arr8.shape
    a16 = (arr8.astype(np.uint16) * 256 + 0x5A).astype(
        ">u2"
    )  # low byte junk: must not push values past 255 nor wrap
    raw = b"".join(b"\x00" + a16[y].tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )
