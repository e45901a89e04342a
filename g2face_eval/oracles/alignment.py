"""5-point face alignment: similarity transform (Umeyama, own code) to the ArcFace 112x112 template, and an
FFHQ-style crop from the same 5 landmarks. Landmarks are (5,2) float pixels in ArcFace order
[image-left eye (subject's right), image-right eye, nose tip, image-left mouth corner, image-right mouth
corner]. Images are uint8 (H,W,3); the channel order is preserved."""

from __future__ import annotations

import cv2
import numpy as np

#: insightface / OpenCV SFace template for 112x112 crops (same numbers as cv2.FaceRecognizerSF.alignCrop).
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)


def similarity_transform(src5: np.ndarray, dst5: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping src -> dst
    (Umeyama 1991). Returns a (2,3) float64 matrix for cv2.warpAffine."""
    src = np.asarray(src5, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst5, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"need matching (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("landmarks contain NaN or inf")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s_c, d_c = src - mu_s, dst - mu_d
    var_s = (s_c**2).sum() / len(src)
    if var_s <= 1e-12:
        raise ValueError("degenerate source landmarks (all points coincide)")
    cov = d_c.T @ s_c / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / var_s
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def apply_transform(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return p @ m[:, :2].T + m[:, 2]


def template(size: int = 112) -> np.ndarray:
    return ARCFACE_TEMPLATE_112 * (size / 112.0)


def arcface_matrix(landmarks5: np.ndarray, size: int = 112) -> np.ndarray:
    return similarity_transform(landmarks5, template(size))


def align_arcface(image: np.ndarray, landmarks5: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp to the ArcFace template (bilinear, black border): matches cv2.FaceRecognizerSF.alignCrop."""
    m = arcface_matrix(landmarks5, size)
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)


def ffhq_quad(landmarks5: np.ndarray) -> np.ndarray:
    """The FFHQ crop rectangle (4 corners: top-left, bottom-left, bottom-right, top-right) from the 5 points,
    following the FFHQ recipe (eye centres and mouth-corner mean)."""
    lm = np.asarray(landmarks5, dtype=np.float64).reshape(5, 2)
    eye_left, eye_right = lm[0], lm[1]
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[3] + lm[4]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    n = np.hypot(*x)
    if n < 1e-9:
        raise ValueError("degenerate landmarks for an FFHQ crop")
    x /= n
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def ffhq_crop(image: np.ndarray, landmarks5: np.ndarray, size: int = 256) -> np.ndarray:
    """FFHQ-style aligned square crop of any size (reflect padding outside the image)."""
    quad = ffhq_quad(landmarks5)
    img, q = image, quad.copy()
    side = np.hypot(*(quad[3] - quad[0]))
    shrink = side / size
    if shrink > 2.0:  # pre-shrink with area filtering to avoid aliasing
        f = 1.0 / np.floor(shrink)
        img = cv2.resize(image, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        q = quad * np.array([img.shape[1] / image.shape[1], img.shape[0] / image.shape[0]])
    src = q[:3].astype(np.float32)
    dst = np.array([[0, 0], [0, size], [size, size]], dtype=np.float32)
    m = cv2.getAffineTransform(src, dst)
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
