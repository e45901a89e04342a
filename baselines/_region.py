"""Face-region masks for the classic baselines.

The region a baseline modifies is, in order of preference:

1. the per-image face mask the caller passes (``face_masks``, (B,1,H,W) float {0,1}; the harness derives it
   from a dataset's face-parsing masks), or
2. the box of the highest-scoring face found by the YuNet detector oracle
   (``g2face_eval.oracles.detectors.get_detector("yunet")``), enlarged by ``box_margin`` of its size.

When neither exists (no mask given and no face detected) the whole image is treated as the face region: the
fail-safe choice for an anonymizer (``info["no_face"]`` lists those images).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from g2face_eval.data.datasets import FACE_REGION_CLASSES
from g2face_eval.imaging import to_uint8

# CelebAMask-HQ parsing classes that make up the face region: the harness's one definition
# (``g2face_eval.data.datasets.FACE_REGION_CLASSES``, the same object): skin, nose, glasses, eyes, brows, mouth,
# lips. Ears, hair, hat, jewellery, neck, cloth and background stay outside.
FACE_PARSING_CLASSES: tuple[int, ...] = FACE_REGION_CLASSES

_DETECTOR = None


def _detector():
    global _DETECTOR
    if _DETECTOR is None:
        from g2face_eval.oracles.detectors import get_detector

        _DETECTOR = get_detector("yunet")
    return _DETECTOR


def parsing_to_face_mask(parsing: np.ndarray) -> np.ndarray:
    """A face-parsing label map (H,W) ints (CelebAMask-HQ classes) or an already binary mask -> (H,W) float32
    {0,1} face-region mask."""
    p = np.asarray(parsing)
    if p.ndim == 3:
        p = p[..., 0]
    if p.dtype == bool:
        return p.astype(np.float32)
    if p.max() <= 1:  # already binary
        return (p > 0).astype(np.float32)
    if p.max() == 255 and np.isin(p, (0, 255)).all():  # binary stored as 0/255
        return (p > 0).astype(np.float32)
    return np.isin(p, FACE_PARSING_CLASSES).astype(np.float32)


def box_mask(h: int, w: int, box: np.ndarray | None, margin: float = 0.1) -> np.ndarray:
    """(H,W) float32 mask of an (x,y,w,h) box enlarged by ``margin`` of its size on each side; all ones when
    ``box`` is None."""
    if box is None:
        return np.ones((h, w), np.float32)
    x, y, bw, bh = (float(v) for v in box)
    x0 = int(np.floor(max(0.0, x - margin * bw)))
    y0 = int(np.floor(max(0.0, y - margin * bh)))
    x1 = int(np.ceil(min(float(w), x + bw * (1 + margin))))
    y1 = int(np.ceil(min(float(h), y + bh * (1 + margin))))
    m = np.zeros((h, w), np.float32)
    if x1 > x0 and y1 > y0:
        m[y0:y1, x0:x1] = 1.0
    else:
        m[:] = 1.0
    return m


def detect_face_masks(images: torch.Tensor, margin: float = 0.1) -> tuple[torch.Tensor, list[int]]:
    """(B,1,H,W) masks from the YuNet box of each image's best face, and the indices with no face found."""
    det = _detector()
    arrs = to_uint8(images)
    masks, missing = [], []
    for i, img in enumerate(arrs):
        faces = det.detect(img)
        if not faces:
            missing.append(i)
            masks.append(box_mask(img.shape[0], img.shape[1], None))
        else:
            masks.append(box_mask(img.shape[0], img.shape[1], np.asarray(faces[0].box), margin))
    return torch.from_numpy(np.stack(masks))[:, None].to(images.device), missing


def check_param(name: str, value, *, minimum: float = 0.0, maximum: float = math.inf, integer: bool = False):
    """A baseline's numeric option, checked where it is given: a finite number in [minimum, maximum] (an integer
    where asked), else a ValueError naming it (NaN, inf, 7.9 blocks, a negative margin)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not (math.isfinite(v) and minimum <= v <= maximum) or (integer and v != int(v)):
        kind = "an integer" if integer else "a finite number"
        top = "" if maximum == math.inf else f" and <= {maximum:g}"
        raise ValueError(f"{name} must be {kind} >= {minimum:g}{top}, got {value!r}")
    return int(v) if integer else v


def face_region(
    images: torch.Tensor, face_masks: torch.Tensor | None, margin: float = 0.1
) -> tuple[torch.Tensor, dict]:
    """The (B,1,H,W) {0,1} region to modify, and diagnostics for ``Output.info``."""
    if face_masks is not None:
        m = (face_masks >= 0.5).to(images.dtype).to(images.device)  # >= 0.5: face (Anonymizer.anonymize)
        return m, {"region": "face_mask"}
    m, missing = detect_face_masks(images, margin)
    return m.to(images.dtype), {"region": "yunet_box", "no_face": missing}


def bbox_of(mask2d: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) bounding box (exclusive ends) of a (H,W) mask, or None when empty."""
    ys = torch.nonzero(mask2d.any(dim=1)).flatten()
    xs = torch.nonzero(mask2d.any(dim=0)).flatten()
    if ys.numel() == 0 or xs.numel() == 0:
        return None
    return int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1


def composite(images: torch.Tensor, modified: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Pixels inside the region from ``modified``, outside exactly from ``images``."""
    return torch.where(region > 0.5, modified.clamp(0, 1), images)
