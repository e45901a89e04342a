"""Attribute-preservation metrics between original and anonymized faces, from the face mesh
(``oracles.geometry``: ``MeshResult.landmarks (468,3)``, ``yaw/pitch/roll`` degrees, ``shape_offsets``).

* ``pose_error(pose_a, pose_b)`` -> (N,) degrees: mean over (yaw, pitch, roll) of the absolute angle
  difference, wrapped to [0, 180] (so 179 vs -179 is 2 deg). This is the per-axis MAE convention of head-pose
  benchmarks (e.g. AFLW2000 MAE), not the geodesic rotation distance; ``geodesic_error(R_a, R_b)`` gives the
  latter for rotation matrices when a caller has them.
* ``mesh_shape_distance(s_a, s_b)`` -> (N,) L2 distance between pose-normalised non-rigid mesh shapes
  (``MeshResult.shape_offsets``): the face's own shape and its expression together, not expression alone.
* ``landmark_nme(pred, gt, left=33, right=263)`` -> (N,) mean 2-D (x,y) point error divided by the
  ground-truth distance between the outer eye corners. In MediaPipe's 468-point mesh, 33 is the outer corner
  of the subject's right eye (image left) and 263 that of the subject's left eye. z is ignored.
* ``detection_rate(found)`` -> (N,) bool per image (rate = mean); the harness's decision is
  ``Detector.finds(output, subject_box)``: a face found at the subject's place.
"""

from __future__ import annotations

import numpy as np

MESH_OUTER_EYE_CORNERS = (33, 263)


def _f64(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def angle_diff(a, b) -> np.ndarray:
    """Absolute wrapped difference in degrees, in [0, 180]."""
    d = np.abs((_f64(a) - _f64(b) + 180.0) % 360.0 - 180.0)
    return d


def pose_error(pose_a, pose_b) -> np.ndarray:
    a, b = _f64(pose_a), _f64(pose_b)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"expected two (N,3) yaw/pitch/roll arrays, got {a.shape} and {b.shape}")
    return angle_diff(a, b).mean(1)


def geodesic_error(rot_a, rot_b) -> np.ndarray:
    """Geodesic angle (degrees) between (N,3,3) rotation matrices: arccos((tr(Ra^T Rb) - 1) / 2)."""
    ra, rb = _f64(rot_a), _f64(rot_b)
    tr = np.einsum("nji,nji->n", ra, rb)
    return np.degrees(np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0)))


def mesh_shape_distance(s_a, s_b) -> np.ndarray:
    a, b = _f64(s_a), _f64(s_b)
    if a.shape != b.shape:
        raise ValueError(f"mesh shape descriptors differ in shape: {a.shape} vs {b.shape}")
    return np.linalg.norm((a - b).reshape(len(a), -1), axis=1)


def landmark_nme(pred, gt, left: int = MESH_OUTER_EYE_CORNERS[0], right: int = MESH_OUTER_EYE_CORNERS[1]):
    p, g = _f64(pred)[..., :2], _f64(gt)[..., :2]
    if p.shape != g.shape or p.ndim != 3:
        raise ValueError(f"expected two (N,K,2|3) landmark arrays, got {p.shape} and {g.shape}")
    iod = np.linalg.norm(g[:, left] - g[:, right], axis=1)
    if (iod <= 0).any():
        raise ValueError("zero inter-ocular distance in ground truth")
    return np.linalg.norm(p - g, axis=2).mean(1) / iod


def detection_rate(found) -> np.ndarray:
    """Per-image detection outcome as bool; accepts bools, counts (faces found) or lists of faces."""
    out = []
    for f in found:
        if isinstance(f, (list, tuple)):
            out.append(len(f) > 0)
        else:
            out.append(bool(f))
    return np.asarray(out, dtype=bool)
