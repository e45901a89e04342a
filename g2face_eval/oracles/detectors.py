"""Face detectors behind one interface: ``get_detector(name).detect(image_uint8_rgb) -> list[Face]``
(score-descending). Landmarks are 5 points in ArcFace order as seen in the image: [image-left eye (the
subject's right eye), image-right eye, nose tip, image-left mouth corner, image-right mouth corner].

* "yunet" (default): cv2.FaceDetectorYN with the zoo's YuNet; the input size is set per image. YuNet's
  landmark order (its "right eye" = the subject's right eye = image-left) already is the ArcFace order.
* "mtcnn": facenet_pytorch.MTCNN on CPU with the package's P/R/O-Net weights (verified through the zoo).
* "dlib_hog": dlib.get_frontal_face_detector + the 5-point shape predictor. dlib's 5 points are the two
  corners of each eye and the subnasale; eye centres are the corner means, and nose tip and mouth corners
  are read off the ArcFace template through the similarity fitted on (eye centres, subnasale).
Bad inputs (tiny, flat, no face) give an empty list.

``finds(image, subject_box)`` is the detectability decision the harness records: whether the detector finds a face
whose box overlaps the subject's box (the face being anonymized, found on the original) by IoU >= SUBJECT_MIN_IOU,
so a bystander elsewhere in the image or a detection in the background does not count as the subject's face.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from .. import zoo
from ..registry import Registry

MIN_SIDE = 16  # images smaller than this contain no detectable face
# A detection is the subject's face when its box overlaps the subject's box by at least this IoU. The same face seen
# by two of our detectors overlaps by IoU >= 0.52 (dlib's tighter boxes vs YuNet's; MTCNN >= 0.76; 160 prepared LFW
# and CelebA-HQ faces), so 0.3 leaves a margin for box conventions; another face in the image overlaps by ~0.
SUBJECT_MIN_IOU = 0.3


def box_iou(a, b) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ax, ay, aw, ah = (float(v) for v in a)
    bx, by, bw, bh = (float(v) for v in b)
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Face:
    box: np.ndarray  # (4,) x, y, w, h in pixels
    landmarks5: np.ndarray  # (5, 2) float, ArcFace order
    score: float


def _check_image(image: np.ndarray) -> bool:
    """True when the image is usable; raises on the wrong type/shape, returns False when too small."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"expected a uint8 (H,W,3) RGB image, got {getattr(image, 'dtype', type(image))} "
            f"{getattr(image, 'shape', '')}"
        )
    return min(image.shape[:2]) >= MIN_SIDE


class Detector:
    name = "base"

    def detect(self, image: np.ndarray) -> list[Face]:  # pragma: no cover - interface
        raise NotImplementedError

    def boxes(self, image: np.ndarray) -> list[np.ndarray]:
        """The (x, y, w, h) boxes ``detect`` returns; a detector may skip work only landmarks need."""
        return [f.box for f in self.detect(image)]

    def finds(self, image: np.ndarray, subject_box, min_iou: float = SUBJECT_MIN_IOU, likely: bool = True) -> bool:
        """Whether a face is found at the subject's place: some box overlaps ``subject_box`` by IoU >= min_iou.
        ``likely`` (e.g. whether another detector found it) may only change the cost, never the decision."""
        return any(box_iou(b, subject_box) >= min_iou for b in self.boxes(image))


DETECTORS: Registry[type[Detector]] = Registry("detector")


@DETECTORS.register("yunet")
class YuNetDetector(Detector):
    name = "yunet"

    def __init__(self, score_threshold: float = 0.6, nms_threshold: float = 0.3, top_k: int = 5000):
        self._net = zoo.load("yunet")
        self._net.setScoreThreshold(score_threshold)
        self._net.setNMSThreshold(nms_threshold)
        self._net.setTopK(top_k)
        self._lock = threading.Lock()

    def detect(self, image: np.ndarray) -> list[Face]:
        if not _check_image(image):
            return []
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        h, w = bgr.shape[:2]
        with self._lock:
            self._net.setInputSize((w, h))
            _, out = self._net.detect(bgr)
        if out is None:
            return []
        faces = [
            Face(
                box=r[:4].astype(np.float32).copy(),
                landmarks5=r[4:14].reshape(5, 2).astype(np.float32),
                score=float(r[14]),
            )
            for r in out
            # YuNet returns boxes like (1.2e30, -inf, 0, inf) on extreme aspect ratios (16x5000 px): not a face
            if np.isfinite(r[:15]).all() and np.abs(r[:14]).max() <= 4 * max(h, w)
        ]
        return sorted(faces, key=lambda f: -f.score)


@DETECTORS.register("mtcnn")
class MTCNNDetector(Detector):
    name = "mtcnn"

    def __init__(self, min_face_size: int = 20, thresholds=(0.6, 0.7, 0.7)):
        for net in ("pnet", "rnet", "onet"):
            zoo.path(f"mtcnn_{net}")  # verify the package weights MTCNN is about to load itself
        from facenet_pytorch import MTCNN

        self._net = MTCNN(
            keep_all=True,
            device="cpu",
            min_face_size=min_face_size,
            thresholds=list(thresholds),
            post_process=False,
        )

    def detect(self, image: np.ndarray) -> list[Face]:
        if not _check_image(image):
            return []
        import torch

        with torch.no_grad():
            boxes, probs, points = self._net.detect(np.ascontiguousarray(image), landmarks=True)
        if boxes is None:
            return []
        faces = []
        for b, p, lm in zip(boxes, probs, points, strict=False):
            box = np.array([b[0], b[1], b[2] - b[0], b[3] - b[1]], dtype=np.float32)
            faces.append(
                Face(box=box, landmarks5=np.asarray(lm, dtype=np.float32).reshape(5, 2), score=float(p))
            )
        return sorted(faces, key=lambda f: -f.score)


# canonical positions (ArcFace 112 template frame) of the dlib points: eye centres and the subnasale
_DLIB_CANON = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0, 77.0]], dtype=np.float64)


def dlib_shape_to_arcface5(pts: np.ndarray) -> np.ndarray:
    """dlib 5-point shape (0,1: image-right eye corners; 2,3: image-left eye corners; 4: subnasale)
    -> 5 ArcFace-order points."""
    from .alignment import ARCFACE_TEMPLATE_112, apply_transform, similarity_transform

    pts = np.asarray(pts, dtype=np.float64).reshape(5, 2)
    eye_l, eye_r, subnasale = pts[2:4].mean(0), pts[0:2].mean(0), pts[4]
    m = similarity_transform(_DLIB_CANON, np.stack([eye_l, eye_r, subnasale]))
    rest = apply_transform(m, ARCFACE_TEMPLATE_112[2:])
    return np.vstack([eye_l, eye_r, rest]).astype(np.float32)


def max_square_iou(side: float, box) -> float:
    """The largest IoU a ``side`` x ``side`` box can have with ``box`` (x, y, w, h), over all positions."""
    w, h = float(box[2]), float(box[3])
    inter = min(side, w) * min(side, h)
    union = side * side + w * h - inter
    return inter / union if union > 0 else 0.0


@DETECTORS.register("dlib_hog")
class DlibHOGDetector(Detector):
    """dlib's HOG frontal face detector (``scan_fhog_pyramid<pyramid_down<6>>``, 5 filters sharing one 80x80
    window) and the 5-point shape predictor for landmarks; ``boxes`` skips the shape predictor.

    ``finds`` has an exact shortcut for a negative decision, taken when a face is unlikely (``likely=False``).
    dlib scans every level of an image pyramid that it builds itself: ``upsample`` x ``pyramid_up``, then
    ``pyramid_down<6>`` again and again, both bilinear ``resize_image`` calls (to ``rect_up``'s extent and to
    ``5n // 6``), down to a level with a side < 64. A window on level L gives a box of about 37 x 1.2^L px (for
    upsample 1; about 41 x 1.2^L px where the box crosses the image's top or left edge), so the fine levels,
    which are most of the work, only give boxes too small to overlap the subject's box by ``min_iou``.
    Non-maximum suppression only removes boxes. So when dlib, run on pyramid level k (rebuilt with dlib's own
    ``resize_image``: the same image, hence the same features and scores) finds nothing at all on levels k, k+1,
    ..., no box of the full scan can reach ``min_iou``, and the decision is "not found". Any other outcome falls
    back to the full scan. ``box_side_bound`` bounds the box size per level with a margin; ``tests/test_oracles.py``
    checks the decisions against the full scan, also for the largest subject box each of dlib's boxes still matches
    (faces at many scales and across the image's edges).
    """

    name = "dlib_hog"
    MIN_LAYER = 64  # scan_fhog_pyramid's min_pyramid_layer_width/height in dlib's serialized frontal detector
    RATE = 6  # pyramid_down<6>
    # box side on level 0 of the scanned (upsampled) image: 72-74 px (dlib's rect_up of the window's object box), and
    # 80-82 px on a side whose corner lies outside the image (dlib's fhog_to_image moves a negative coordinate by
    # -cell/2 instead of +cell/2, one 8 px cell more); the bound takes 84 px, grown by 1.2 per level, plus 2 px of
    # rounding, and halves it per upsample
    BOX_LEVEL0, BOX_SLACK = 84.0, 2.0

    def __init__(self, upsample: int = 1, adjust_threshold: float = 0.0):
        import dlib

        self._det = dlib.get_frontal_face_detector()
        self._sp = zoo.load("dlib_shape5")
        self.upsample, self.adjust = upsample, adjust_threshold
        self._plans: dict[tuple[int, int], tuple[list[tuple[int, int]], list[tuple[int, int]]]] = {}

    def _rects(self, image: np.ndarray) -> tuple[np.ndarray, list, list]:
        img = np.ascontiguousarray(image)
        rects, scores, _ = self._det.run(img, self.upsample, self.adjust)
        return img, list(rects), list(scores)

    @staticmethod
    def _box(r) -> np.ndarray:
        return np.array([r.left(), r.top(), r.width(), r.height()], dtype=np.float32)

    def boxes(self, image: np.ndarray) -> list[np.ndarray]:
        if not _check_image(image):
            return []
        _, rects, _ = self._rects(image)
        return [self._box(r) for r in rects]

    def detect(self, image: np.ndarray) -> list[Face]:
        if not _check_image(image):
            return []
        img, rects, scores = self._rects(image)
        faces = []
        for r, s in zip(rects, scores, strict=False):
            shape = self._sp(img, r)
            pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
            faces.append(Face(box=self._box(r), landmarks5=dlib_shape_to_arcface5(pts), score=float(s)))
        return sorted(faces, key=lambda f: -f.score)

    def box_side_bound(self, level: int) -> float:
        """An upper bound on the width and height (px, input image) of a box found on pyramid level ``level``."""
        return (self.BOX_LEVEL0 * (self.RATE / (self.RATE - 1)) ** level + self.BOX_SLACK) / 2**self.upsample

    @classmethod
    def _num_levels(cls, h: int, w: int) -> int:
        """dlib's ``create_fhog_pyramid`` level count for an (h, w) image."""
        import dlib

        pyr, rect, levels = dlib.pyramid_down(cls.RATE), dlib.rectangle(0, 0, w - 1, h - 1), 0
        while True:
            rect, levels = pyr.rect_down(rect), levels + 1
            if rect.width() < cls.MIN_LAYER or rect.height() < cls.MIN_LAYER or levels >= 1000:
                return levels

    def _pyramid(self, h: int, w: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """The sizes dlib's pyramid takes for an (h, w) image: each ``pyramid_up`` step, then every level."""
        if (h, w) not in self._plans:
            import dlib

            pyr2, ups, (uh, uw) = dlib.pyramid_down(2), [], (h, w)
            for _ in range(self.upsample):  # dlib's pyramid_up: bilinear resize to rect_up's extent
                up = pyr2.rect_up(dlib.rectangle(0, 0, uw - 1, uh - 1))
                uh, uw = up.bottom() + 1, up.right() + 1
                ups.append((uh, uw))
            levels = [(uh, uw)]
            for _ in range(1, self._num_levels(uh, uw)):
                lh, lw = levels[-1]
                levels.append(((self.RATE - 1) * lh // self.RATE, (self.RATE - 1) * lw // self.RATE))
            self._plans[(h, w)] = (ups, levels)
        return self._plans[(h, w)]

    def _first_reachable_level(self, h: int, w: int, subject_box, min_iou: float) -> int:
        """The first pyramid level whose boxes may overlap ``subject_box`` by ``min_iou``; 0 when the tail from
        there would not be dlib's own tail (then there is no shortcut)."""
        _, levels = self._pyramid(h, w)
        small = min(float(subject_box[2]), float(subject_box[3]))
        k = 0
        # the largest IoU grows with the box side up to the subject's shorter side: below it, a level whose
        # largest possible box cannot reach min_iou has no box that can
        while k < len(levels) and self.box_side_bound(k) <= small and max_square_iou(
            self.box_side_bound(k), subject_box
        ) < min_iou:
            k += 1
        if k == 0 or k >= len(levels) or self._num_levels(*levels[k]) != len(levels) - k:
            return 0
        return k

    def finds(self, image: np.ndarray, subject_box, min_iou: float = SUBJECT_MIN_IOU, likely: bool = True) -> bool:
        if not _check_image(image):
            return False
        if not likely:
            img = np.ascontiguousarray(image)
            k = self._first_reachable_level(*img.shape[:2], subject_box, min_iou)
            if k:
                import dlib

                ups, levels = self._pyramid(*img.shape[:2])
                for h, w in ups + levels[1 : k + 1]:  # level k, as dlib's pyramid builds it
                    img = dlib.resize_image(img, h, w)
                if not self._det.run(img, 0, self.adjust)[0]:
                    return False  # nothing on levels >= k, and the finer levels' boxes are too small: exact
        return super().finds(image, subject_box, min_iou)


_cache: dict[str, Detector] = {}


def get_detector(name: str = "yunet", **kw) -> Detector:
    """A detector by name ("yunet", "mtcnn", "dlib_hog"); default-configured ones are shared."""
    cls = DETECTORS.get(name)
    if kw:
        return cls(**kw)
    if name not in _cache:
        _cache[name] = cls()
    return _cache[name]
