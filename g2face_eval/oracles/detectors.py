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
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from .. import zoo
from ..registry import Registry

MIN_SIDE = 16  # images smaller than this contain no detectable face


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

    def any_face(self, image: np.ndarray, likely: bool = True) -> bool:
        """Whether ``detect`` finds at least one face (the detection-rate decision), always the same decision;
        a detector may answer it more cheaply. ``likely`` is a hint (e.g. another detector found a face) that
        may only change the cost."""
        return bool(self.detect(image))


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


@DETECTORS.register("dlib_hog")
class DlibHOGDetector(Detector):
    """dlib's HOG frontal face detector (``scan_fhog_pyramid<pyramid_down<6>>``, 5 filters, 80x80 window).

    ``any_face`` gives the decision of ``detect`` more cheaply when a face is big. dlib scans every level of an
    image pyramid it builds itself (``upsample`` x ``pyramid_up``, then ``pyramid_down<6>`` again and again, both
    a bilinear ``resize_image``, the latter to ``5n // 6``) and reports a face iff some window on some level
    scores >= the threshold (non-maximum suppression only thins a non-empty set). So, when a face is likely, it
    first runs dlib on the coarse tail of that pyramid, rebuilt with dlib's own ``resize_image`` (the same
    images, hence the same features and scores), and scans the whole pyramid only when the tail has no face. A
    tail is used only when it has no level the full scan lacks (dlib counts levels by ``rect_down`` of the image
    rectangle until a side is < 64). Tested against ``detect`` and dlib's own scores on real faces and degraded
    copies (tests/test_oracles.py).
    """

    name = "dlib_hog"
    MIN_LAYER = 64  # scan_fhog_pyramid's min_pyramid_layer_width/height in dlib's serialized frontal detector
    RATE = 6  # pyramid_down<6>

    def __init__(self, upsample: int = 1, adjust_threshold: float = 0.0, coarse_side: int = 192):
        import dlib

        self._det = dlib.get_frontal_face_detector()
        self._sp = zoo.load("dlib_shape5")
        self.upsample, self.adjust = upsample, adjust_threshold
        self.coarse_side = coarse_side  # the tail starts at the first level whose shorter side is <= this
        self._plans: dict[tuple[int, int], tuple[list[tuple[int, int]], list[tuple[int, int]]]] = {}

    @classmethod
    def _num_levels(cls, h: int, w: int) -> int:
        """dlib's ``create_fhog_pyramid`` level count for an (h, w) image."""
        import dlib

        pyr, rect, levels = dlib.pyramid_down(cls.RATE), dlib.rectangle(0, 0, w - 1, h - 1), 0
        while True:
            rect, levels = pyr.rect_down(rect), levels + 1
            if rect.width() < cls.MIN_LAYER or rect.height() < cls.MIN_LAYER or levels >= 1000:
                return levels

    def _plan(self, h: int, w: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """The sizes dlib's pyramid takes for an (h, w) image: each ``pyramid_up`` step, then pyramid levels
        1..k down to the tail's first level k; no levels when there is no usable tail (scan everything)."""
        key = (h, w)
        if key not in self._plans:
            import dlib

            pyr2, ups = dlib.pyramid_down(2), []
            for _ in range(self.upsample):  # dlib's pyramid_up: bilinear resize to rect_up's extent
                up = pyr2.rect_up(dlib.rectangle(0, 0, w - 1, h - 1))
                h, w = up.bottom() + 1, up.right() + 1
                ups.append((h, w))
            downs, total = [(h, w)], self._num_levels(h, w)
            while min(downs[-1]) > self.coarse_side and len(downs) < total:
                dh, dw = downs[-1]
                downs.append(((self.RATE - 1) * dh // self.RATE, (self.RATE - 1) * dw // self.RATE))
            k = len(downs) - 1
            if k == 0 or self._num_levels(*downs[-1]) > total - k:
                downs = downs[:1]  # the tail would scan a level the full pyramid lacks: no shortcut
            self._plans[key] = (ups, downs[1:])
        return self._plans[key]

    def detect(self, image: np.ndarray) -> list[Face]:
        if not _check_image(image):
            return []
        import dlib

        img = np.ascontiguousarray(image)
        rects, scores, _ = self._det.run(img, self.upsample, self.adjust)
        faces = []
        for r, s in zip(rects, scores, strict=False):
            shape = self._sp(img, r)
            pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
            box = np.array([r.left(), r.top(), r.width(), r.height()], dtype=np.float32)
            faces.append(Face(box=box, landmarks5=dlib_shape_to_arcface5(pts), score=float(s)))
        del dlib
        return sorted(faces, key=lambda f: -f.score)

    def any_face(self, image: np.ndarray, likely: bool = True) -> bool:
        if not _check_image(image):
            return False
        import dlib

        img = np.ascontiguousarray(image)
        ups, downs = self._plan(*img.shape[:2])
        if not likely or not downs:
            return bool(self._det.run(img, self.upsample, self.adjust)[0])
        level0 = img
        for h, w in ups:
            level0 = dlib.resize_image(level0, h, w)
        tail = level0
        for h, w in downs:  # pyramid levels 1..k, as dlib's pyramid_down<6> builds them
            tail = dlib.resize_image(tail, h, w)
        if self._det.run(tail, 0, self.adjust)[0]:
            return True
        return bool(self._det.run(level0, 0, self.adjust)[0])  # no face on the tail: scan every level


_cache: dict[str, Detector] = {}


def get_detector(name: str = "yunet", **kw) -> Detector:
    """A detector by name ("yunet", "mtcnn", "dlib_hog"); default-configured ones are shared."""
    cls = DETECTORS.get(name)
    if kw:
        return cls(**kw)
    if name not in _cache:
        _cache[name] = cls()
    return _cache[name]
