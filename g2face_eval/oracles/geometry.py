"""Face geometry oracle: MediaPipe face mesh (legacy ``mediapipe.python.solutions.face_mesh``,
static_image_mode=True) -> 468 landmarks in the original image's pixel coordinates, head pose and an
expression descriptor.

* The mesh misses small faces, so the face is first found with YuNet, a square crop of twice the face box
  (padded with the border colour where it leaves the image) is upscaled to 384x384 and meshed; landmarks
  are mapped back to the original image (x, y in pixels; z = MediaPipe's relative depth times the crop
  scale, i.e. also in pixels, larger = further from the camera). If YuNet finds no face the whole image
  is tried (already-cropped faces). No face -> ``None``. Given the subject's face (the harness passes the face
  found on the original, also for its anonymized output), the mesh is taken at that face only (see ``landmarks``).
* Head pose: a rigid (rotation + uniform scale + translation) Procrustes / Umeyama fit of ``CANONICAL``
  (a neutral frontal mesh, see below) onto the 468 3D landmarks; the rotation R (canonical -> observed,
  axes x right, y down, z away from the camera) is decomposed as R = Rz(roll) Ry(yaw) Rx(pitch), in degrees.
  Mirroring the image flips the signs of yaw and roll and keeps pitch.
* Non-rigid shape (``MeshResult.shape_offsets``, the harness's ``mesh_shape_distance``): the landmarks mapped into the
  canonical frame by the inverse of that fit (pose and scale removed), minus ``CANONICAL``; a (468*3,) vector in
  units of the canonical shape (inter-ocular ~ 1). It holds the face's own shape as well as its expression (an 8 %
  wider face with the same expression moves it about half as much as the differences between photos of one
  person), so it is not an expression-only measure. It does follow expression: on 125 held-out CelebA-HQ faces the
  pairwise distances rank with the differences of their parsing masks' inner-mouth area (Spearman 0.48; the head
  pose of the same meshes 0.04; ``tests/test_oracles.py``). The shipped geometry prior's morphable model cannot
  split it into identity and expression: fitted to 200 held-out meshes, its identity part (20 directions) has a
  median RMS per point of 0.0015 against 0.056 for its expression part (0.08 % of the squared norm), so that
  "expression part" is this same shape in other units (tried in session 14: Pearson 0.999999 with this distance on
  3,770 records).
* ``CANONICAL`` was built with ``build_canonical`` from 64 CelebA-HQ faces and their mirror images
  (generalised Procrustes mean, centred, inter-ocular distance 1); its frontal pose is that mean's, and
  mirroring makes it yaw/roll-neutral.
"""

from __future__ import annotations

import base64
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .. import zoo

CROP_SIZE = 384
EYE_OUTER = (33, 263)  # subject's right / left eye outer corners in MediaPipe's topology

# built by build_canonical (float16, zlib, base64)
_CANONICAL_B64 = (
    "eNoV1vdbFNcCgGEUiVEsqLFQpQm77M7szOycKYgaRTFgjcSoiGIjXkHB3vu130SQqGBDQYRdtk05ZwoWFFHQeIUEEzUaY8MSo94o"
    "JqLB527+hO+X9/le7X5KG8WdX9fgd1Fc/nDyD3GAAxfOQuemAkOqsqu9zeGjJHc7B3vIe9UNaHUcvjNHNUql25dqL6TOXTNP3hSb"
    "vpkHLgqNO6qBn+Dvew10dxf0esgsdF7oOZV965wT8Du72WUJGMGtcLZtO8ud73EtbzExFFU7wok8+Yzup08A8+B62FqyCmVBS/E2"
    "ZSX8X8Q7NRoR5r7yKfifY22IUUdXXoVh6teV3dWeqr28VtWVGUGZWg48jN+WF/K5uI92Be0yP9ctaCrTqllQCjkDrYh4Za9yyfRd"
    "IdDlAYM9F8XbdI37uBwMNts9QikId02QSsCUcn/0PfMDdr9yD34B3XcsN+CKTatVZ0dMlvqKj5wlkp85TjonNQ/YI47TEo5NMO53"
    "PK+0oxplmrbEE6kN1K46GP21/jeZIdjUHeJh+azS3fYIHQKt2HS9F0jgQ8Rd+GdimTuQyBVfwmLgwbLgCXDEnK0Va6k2RcrHrgvn"
    "YaL2XngDda1UjFIGnHS6rmij9FumHPROzxbea0Yt0DxVz9P6UJtdo8FywSxOBgHut9Is8KftW2Gs5SfBCUtAPywcWpjLxuHwGNhs"
    "7iT8iFnhC3EXuF6a5O2tqyxxngWTXd3dErekf62L4Jod213V7DWnxWVhE5y1zivMfEeElMqM7r9cWsY07HkpVTEXD0+Re7JLI45D"
    "P7qL7aXuZyvh8/MbiXJ5qNybeWU8LQcx042prjBykugvdSTGuF+5SokVYhJ84+lb2VVJcn1SHioPiUsQ0jVn1QDjY/U7/Zw9Um3S"
    "wj0D4A32ramL+I3mlOrFD3qAVCqlnyTFJSqEIcYWbZoMiS5SG0w8nKNlKVWmO0Ka1OSeKL4z0nCb/lYcYz2o1YsPsGvqfWGAoR4F"
    "idr+JPhUjDqRKTVJ++ztnRugWdqsb7Cz1ltaoXIBG277kiARJR12jXP3q1qNnnCNwq/yecck2RQX7DRpZ9ACLFtMKHLIZ/X5RD4f"
    "J81BReFzPXNsbyCn+XAjQKx2gPuU/Ut/VZHLPtMWMmmMQ5+o/kn3hh/4UsJWjohNsj9cbB/pzNY7odXWXCUULY1ciz5CEw9mwi+Y"
    "uaZcncUH0VOF2vg0chT6nffQdiWDvwZ+b/+nvk9a/21zfA1RBPug4KN75MFoe36hlIq+C0/QHyo+ZDtoVoKPP4MblW7lv6C9SsKJ"
    "RmW+EncoU41Rnkb7VflqtWyQmoJIQ9s3KmUQednXyrnCxS44KX3kvkDdFkb540qd+Ew5zy2md6KZ/B/UOiE3fix2Vcth13I1koR6"
    "7v/BnS1mStyevPgUc5WcFd9CXdWbLUVsjrCfWVpxUbjFfGcLFpPZGfYM8RbbvcJXyuCyYn+WC8GtmKFwJbgdkwdTQG7MRiTTB2Or"
    "teVEMnHJfUm2C6uEnspVe5P4Hv27LF1eA5INNdqvdAQ9w9VJ+VT4IN3llpiLO64WwtERxzKpI1zX5YE0Bt4TwpzvxfzdHeL/HrB0"
    "50RejhzsGcZvib2HJrBxRAFcjN+xXYKTuAY8XJWxhcUlKI0MLPHVBlIjzInCE36asb8UaxsiuJUIbjA1CjVyfckG5WdQY0nSn1P3"
    "6K5aGPOS3KCn0MvZLcov1jZDvRAh2AS3EIhlw7/Fg1iGtN3TZhiG+kstykbnObhHzXQNV3T1D+dOtUh9YWc0XO29f5O2HH1u8a3S"
    "xTdMkPZQPmLupWIyMJSh/vLs0HGwQF5z7IgUCqeWjRQXwLXlHaq6SYv45+JSfLD4s/uw+56c4T6DJaJQ5yXLOfiVOwnX4AzRZskV"
    "zlTGEp3QU/tmYps8QxyNIotooQ1a7dGe07DAdUp9hb40RmupygGjwfSP3nvZjWhN3AFTLLFbruE7eI3NotdCU+kakAVXFu9gVsLT"
    "Ee/YKESa+1h1qB57Dzj1s8rLdH91Z2V3tpd6vLyW1ZWWwExuPjyC37Qu4dfiPtwV9LX5OY+haUwrZ0FjyHTwOqLFjjBE3xeCMQkk"
    "ei6R9+l6t8saCfLsMlEBTK50qgJsL+8FbjJNWGPcXrwWNZhWGjDFztWr6yImUj3F35xFVG9zjKRRYTF54hhu3tHxxr2mJ15jzzMz"
    "tAWeKG6wds4Rz/9jbBrhULeKRdZqpbPtBTgOfPApfCAYxH9CHvUaW4RHEAvEVtoGXNgy2g0KzQu4Y9oYm0CVYT8K5+gR2juhhT6l"
    "lYjRzICTNlcDN1pvMuWA915j2ziTFmSezudpvamN2FiwUiDIaSDE3cH6L9DNvpuYZbkmqLQD9MFMNMdUG8fRdrDe/MHSjFHwLZkH"
    "Yo+P9vbeqawwnwczXT1xmRvW/wZGcq2OUqyG/dU5CrOySc575kZmnYOhpjCusF3UGmbu/nbWc0zWkSxrIEtGnKA70wG25zysKOW/"
    "tIYwj43fWyOZVONILJqcKH5E9SBGu5uxSq+uI+hnnshKf4ZzRZb3sWbEDRSmc66qIOMz9op+xR7F/qSFeOLoO+xLUycyT6uQ6skP"
    "elepjEo/SYhLWQj7GV9zk2WF6Ey9g3MO53LZim66TUySrrtHk4FxVriVfyV+bj3AnRcfY03sL0KYoQ70EXsUjaAfieDEHKpBOmrv"
    "bl7v1XUDn25PsN7mDih1WKRhCkEgjMpzTXD3i1+GnnINxC2vruOsKXGBThNXjRZhM8lR++zyaX4lUcAbqJmoJjzdMsXWAgHnyyWD"
    "KO4Ql8i28JUVi9jH3DImg3HyqepbugftE+8gZsaoXl0/ptPsyc5s/mO0wbqICUFrI9cDP1RwMJdOZ9JN2fwofAg9hrgYn0EmgRe8"
    "TJcxM/kb4ADdG809WmBNQOv3FFLj0X/DB/HNii/pQ5sU7vhv9EYlpvwW2KdMPHGVyVEKD81hY5Vb0R3j22l1bAibgggDZ/X3WhpI"
    "huG49AGr91r6mLnALaO3gtn8X9RiYmH8JOwyt5hdz1VTHrRl//f4PPEryW3Njm+lLvN/WQ6xG4lDjKfiOnGPeWQzkePYFfYF5F2W"
    "rehEzeK+iH1uPQpOxiTTm4AjppBOBakxW0EVXRZ7kttEjCQa8DrZIawgeihN9gayFS0qy7FuBgmGaq6ZjqRnY52UocIH6j63yuww"
    "LfXKeZPo5zVzkCWRz4ttBlNYjMinN+EPbZfpNO4GHszWYfnFJeArMqCkHZdEJZmHEE/5RcZ+VIDtU8HFRHEjqBTwAxdKNjF3Qa1l"
    "KN9KPaD9uSjmNbmGH0evYrcxT63vDeeJUKFSOEHEep/mDenCpkrrLAHGRBREvVF2OM/Qe9VZrmHMKfWZcxd7UH1iZzhCPbpvE7cc"
    "jbO0jxfEt0wQ9+AfJ1mTjBtOgBDZL3QsnS9Lx4qpYDi3LInMhlvKfeM7SIv5R+ROfKDYhBd5nRyP13md7Ghu9Do5Hp+AqzCNrLEs"
    "EIrjTMTH6LJxu9fJ6WQygoVW4j0k7HGWU3C36xT7GqUZo7kvlHzj/wFZuib2"
)


@dataclass
class MeshResult:
    landmarks: np.ndarray  # (468, 3) float32: x, y pixels; z relative depth in pixels
    yaw: float
    pitch: float
    roll: float
    shape_offsets: np.ndarray  # (468*3,) float32 pose-normalised offsets from CANONICAL (shape + expression)
    box: np.ndarray | None = None  # the detector box used (x, y, w, h) or None


def _decode(b64: str) -> np.ndarray | None:
    if not b64:
        return None
    raw = zlib.decompress(base64.b64decode(b64))
    return np.frombuffer(raw, dtype=np.float16).astype(np.float64).reshape(468, 3)


CANONICAL = _decode(_CANONICAL_B64)


def umeyama3d(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (s, R, t) minimising ||dst - (s R src + t)||^2 (no reflection)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    var_s = (sc**2).sum() / len(src)
    u, sig, vt = np.linalg.svd(dc.T @ sc / len(src))
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    r = u @ np.diag(d) @ vt
    s = float((sig * d).sum() / var_s)
    return s, r, mu_d - s * r @ mu_s


def euler_from_rotation(r: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees for R = Rz(roll) Ry(yaw) Rx(pitch)."""
    yaw = np.degrees(np.arcsin(np.clip(-r[2, 0], -1, 1)))
    pitch = np.degrees(np.arctan2(r[2, 1], r[2, 2]))
    roll = np.degrees(np.arctan2(r[1, 0], r[0, 0]))
    return float(yaw), float(pitch), float(roll)


def normalise_shape(lm: np.ndarray) -> np.ndarray:
    """Centre and scale to unit inter-ocular (outer corner) distance; keeps the orientation."""
    lm = np.asarray(lm, np.float64)
    c = lm - lm.mean(0)
    return c / max(np.linalg.norm(c[EYE_OUTER[1]] - c[EYE_OUTER[0]]), 1e-9)


# The tflite files MediaPipe opens itself while the legacy face_mesh graph below (face_landmark_front_cpu.binarypb,
# refine_landmarks=False) is built: its FaceDetectionShortRangeCpu subgraph loads face_detection_short_range.tflite
# and its FaceLandmarkCpu subgraph face_landmark.tflite (face_landmark_with_attention.tflite only with
# refine_landmarks=True). An strace of the construction shows exactly these two opened, both during start_run in
# the constructor, none later in process().
MESH_WEIGHTS = ("mediapipe_face_detection_short_range", "mediapipe_face_mesh")


def verify_mesh_weights() -> list[Path]:
    """Verify (sha256, through the zoo) every tflite file the face mesh graph will load; call before building it.

    MediaPipe resolves a model path ``mediapipe/modules/...`` by trying, in this order, the current directory,
    ``bazel-bin/`` under it, then the installed package; a copy in either of the first two shadows the package
    file, so it is verified as well (it must carry the same digest). Returns the verified package files."""
    out = []
    for name in MESH_WEIGHTS:
        p = zoo.path(name)
        spec = zoo.WEIGHTS.get(name)
        rel = Path("mediapipe") / (spec.relpath or spec.filename)
        for shadow in (Path.cwd() / rel, Path.cwd() / "bazel-bin" / rel):
            if not shadow.exists() or shadow.resolve() == p.resolve():
                continue
            if not shadow.is_file():
                raise zoo.WeightError(f"weight {name!r}: {str(shadow)!r} shadows the package file and is not a file")
            zoo.verify_file(name, shadow)
        out.append(p)
    return out


class FaceMesh:
    def __init__(self, detector: str | None = "yunet", crop_size: int = CROP_SIZE):
        verify_mesh_weights()  # before the graph is built: building it loads the models
        from mediapipe.python.solutions import face_mesh

        self._mesh = face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=False, min_detection_confidence=0.5
        )
        self._lock = threading.Lock()
        self.crop_size = crop_size
        self.detector_name = detector  # the detectors.get_detector name whose first face the mesh is run on
        self._detector = None

    def _detect(self, image):
        if self.detector_name is None:
            return []
        if self._detector is None:
            from .detectors import get_detector

            self._detector = get_detector(self.detector_name)
        return self._detector.detect(image)

    def _run(self, rgb: np.ndarray) -> np.ndarray | None:
        with self._lock:
            res = self._mesh.process(np.ascontiguousarray(rgb))
        if not res.multi_face_landmarks:
            return None
        lm = res.multi_face_landmarks[0].landmark
        return np.array([(p.x, p.y, p.z) for p in lm], dtype=np.float64)

    def landmarks(
        self, image: np.ndarray, faces: list | None = None, subject=None
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(468,3) landmarks in image pixels and the box used, or (None, None). ``faces``: this image's detections
        by ``detector_name`` when the caller already has them (score-descending, as ``detect`` returns them).
        ``subject``: the face to mesh (a ``detectors.Face``, e.g. found on the original of an anonymized image):
        the crop is taken around its box, the whole image is not tried, and a mesh that is not that face (its
        landmarks' bounding box overlaps the subject's box by IoU < ``detectors.SUBJECT_MIN_IOU``) is not found."""
        if (
            not isinstance(image, np.ndarray)
            or image.dtype != np.uint8
            or image.ndim != 3
            or image.shape[2] != 3
        ):
            raise ValueError("expected a uint8 (H,W,3) RGB image")
        h, w = image.shape[:2]
        if min(h, w) < 16:
            return None, None
        if subject is not None:
            faces = [subject]
        elif faces is None:
            faces = self._detect(image)
        if faces:
            x, y, bw, bh = faces[0].box
            side = 2.0 * max(bw, bh)
            cx, cy = x + bw / 2, y + bh / 2
            x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
            s = int(round(side))
            pad = max(0, -x0, -y0, x0 + s - w, y0 + s - h)
            src = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else image
            crop = src[y0 + pad : y0 + pad + s, x0 + pad : x0 + pad + s]
            scale = self.crop_size / s
            crop = cv2.resize(
                crop,
                (self.crop_size, self.crop_size),
                interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC,
            )
            lm = self._run(crop)
            if lm is not None:
                out = np.empty_like(lm)
                out[:, 0] = lm[:, 0] * s + x0
                out[:, 1] = lm[:, 1] * s + y0
                out[:, 2] = lm[:, 2] * s
                if subject is not None and not _is_subject(out, subject.box):
                    return None, None
                return out.astype(np.float32), np.asarray(faces[0].box, np.float32)
        if subject is not None:
            return None, None
        # whole image (already-cropped faces), upscaled when small
        f = max(1.0, self.crop_size / max(h, w))
        img = (
            cv2.resize(image, (round(w * f), round(h * f)), interpolation=cv2.INTER_CUBIC) if f > 1 else image
        )
        lm = self._run(img)
        if lm is None:
            return None, None
        out = np.stack([lm[:, 0] * w, lm[:, 1] * h, lm[:, 2] * w], 1)
        return out.astype(np.float32), None

    def analyze(self, image: np.ndarray, faces: list | None = None, subject=None) -> MeshResult | None:
        lm, box = self.landmarks(image, faces, subject)
        if lm is None:
            return None
        return result_from_landmarks(lm, box)


def _is_subject(lm: np.ndarray, subject_box) -> bool:
    """Whether a mesh is the subject's face: its landmarks' 2D bounding box overlaps the subject's detector box by
    IoU >= SUBJECT_MIN_IOU (the subject's own mesh overlaps its YuNet box by IoU >= 0.65 on 200 prepared LFW,
    CelebA-HQ and UTKFace faces)."""
    from .detectors import SUBJECT_MIN_IOU, box_iou

    (x0, y0), (x1, y1) = lm[:, :2].min(0), lm[:, :2].max(0)
    return box_iou((x0, y0, x1 - x0, y1 - y0), subject_box) >= SUBJECT_MIN_IOU


def result_from_landmarks(lm: np.ndarray, box=None) -> MeshResult:
    if CANONICAL is None:
        raise RuntimeError("geometry.CANONICAL is not built")
    s, r, t = umeyama3d(CANONICAL, lm)
    yaw, pitch, roll = euler_from_rotation(r)
    back = (np.asarray(lm, np.float64) - t) @ r / s  # inverse similarity: into the canonical frame
    expr = (back - CANONICAL).reshape(-1).astype(np.float32)
    return MeshResult(np.asarray(lm, np.float32), yaw, pitch, roll, expr, box)


def build_canonical(images: list[np.ndarray], mesh: FaceMesh | None = None, iters: int = 3) -> np.ndarray:
    """Generalised Procrustes mean of the meshes of ``images`` and their mirror images (see module doc)."""
    mesh = mesh or FaceMesh()
    shapes = []
    for im in images:
        for img in (im, np.ascontiguousarray(im[:, ::-1])):
            lm, _ = mesh.landmarks(img)
            if lm is not None:
                shapes.append(normalise_shape(lm))
    mean = normalise_shape(np.mean(shapes, 0))
    for _ in range(iters):
        aligned = []
        for sh in shapes:
            s, r, t = umeyama3d(sh, mean)
            aligned.append(s * sh @ r.T + t)
        mean = normalise_shape(np.mean(aligned, 0))
    return mean


def encode_canonical(shape: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(np.asarray(shape, np.float16).tobytes(), 9)).decode()


_mesh_cache: dict[str, FaceMesh] = {}


def get_face_mesh() -> FaceMesh:
    if "default" not in _mesh_cache:
        _mesh_cache["default"] = FaceMesh()
    return _mesh_cache["default"]
