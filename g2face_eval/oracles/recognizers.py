"""Face recognizers behind one interface. Embeddings are float32, L2-normalised; similarity is cosine.

* "sface" (offline default): OpenCV's SFace on 112x112 crops aligned to the ArcFace template with our own
  Umeyama alignment (pixel-identical to SFace's alignCrop up to rounding). The ONNX graph runs batched in torch
  (models.identity.OnnxTorch, batch norms folded; on CPU a frozen TorchScript graph, models.frozen): the same
  features as cv2.FaceRecognizerSF.feature to ~1e-5 (tests/test_oracles.py); one CPU thread, batch 32: 16 vs 37 ms
  per crop (ad hoc, 2026-11-27).
* "dlib" (offline default): dlib ResNet on its own 150x150 chip: shape_predictor_5 run on a face rectangle
  derived from the detector's 5 landmarks, then dlib.get_face_chip(size=150, padding=0.25). The network itself
  runs as a batched torch port of dlib's .dat (oracles/dlib_resnet.py: same descriptors to ~1e-6, ~11x faster
  on CPU than the dlib wheel).
* "arcface_r50", "arcface_r100": insightface iresnet (user weights), 112x112 RGB in [-1, 1].
* "facenet_vggface2": facenet-pytorch InceptionResnetV1 (user weights), 160x160 crops aligned to the ArcFace
  template scaled to 160, standardised (x - 127.5) / 128.

``Recognizer.threshold`` is the cosine-similarity threshold at FAR 1e-3 measured on LFW View 2 by
``g2face-eval validate`` and stored in ``oracles/thresholds.json`` with the sha256 of the weight files it was
measured with (None when never validated, or validated with other weight files).

``Recognizer.fingerprint`` names what an embedding depends on besides the image and its landmarks: the
recognizer, ``EMBED_VERSION`` and its weight files' sha256. The caches of embeddings (the evaluation's, LFW
validation's) and the evaluation's configuration hash use it, so other weights never reuse stale embeddings.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np

from .. import zoo
from ..registry import Registry
from .alignment import align_arcface
from .detectors import Face

THRESHOLDS_FILE = Path(__file__).resolve().parent / "thresholds.json"
# part of every recognizer's fingerprint: raise it when a change of the alignment or network code changes
# embeddings beyond float round-off, so that cached embeddings are not reused
EMBED_VERSION = 1
DEFAULT_RECOGNIZERS = ("sface", "dlib")


def load_thresholds() -> dict:
    try:
        return json.loads(THRESHOLDS_FILE.read_text())
    except (OSError, ValueError):
        return {}


def weights_sha256(weights: tuple[str, ...]) -> dict[str, str]:
    return {w: zoo.digest(zoo.path(w)) for w in weights}


def fingerprint(name: str, weights_digests: dict[str, str] | None = None) -> str:
    """``Recognizer.fingerprint`` of the recognizer ``name`` (its weight files hashed unless given), without
    building the network."""
    if weights_digests is None:
        weights_digests = weights_sha256(RECOGNIZERS.get(name).weights)
    blob = json.dumps([name, EMBED_VERSION, sorted(weights_digests.items())])
    return f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


class Recognizer:
    name = "base"
    dim = 0
    weights: tuple[str, ...] = ()

    def align(self, image: np.ndarray, face: Face) -> np.ndarray:
        raise NotImplementedError

    def embed_aligned(self, crops: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    @functools.cached_property
    def weights_sha256(self) -> dict[str, str]:
        """sha256 of each weight file (zoo name -> digest), the files this recognizer was built from."""
        return weights_sha256(self.weights)

    @functools.cached_property
    def fingerprint(self) -> str:
        return fingerprint(self.name, self.weights_sha256)

    def embed(self, images: list[np.ndarray], faces: list[Face]) -> np.ndarray:
        if len(images) != len(faces):
            raise ValueError(f"{len(images)} images but {len(faces)} faces")
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_aligned([self.align(im, f) for im, f in zip(images, faces, strict=False)])

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Row-wise cosine similarity of two (N,D) embedding arrays."""
        a, b = _l2(np.atleast_2d(a)), _l2(np.atleast_2d(b))
        if a.shape != b.shape:
            raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
        return (a * b).sum(1)

    @property
    def threshold(self) -> float | None:
        """The validated threshold, or None: never validated, or validated with weight files other than these
        (an entry without ``weights_sha256`` predates the record and is taken as it is)."""
        entry = load_thresholds().get("recognizers", {}).get(self.name)
        if entry is None:
            return None
        measured_with = entry.get("weights_sha256")
        if measured_with is not None and measured_with != self.weights_sha256:
            return None
        return float(entry["threshold"])

    def __repr__(self) -> str:
        return f"<Recognizer {self.name} dim={self.dim}>"


RECOGNIZERS: Registry[type[Recognizer]] = Registry("recognizer")


class _TorchRecognizer(Recognizer):
    """A torch network run in batches on stacked aligned crops: ``(N, H, W, 3)`` uint8 RGB -> ``_prepare`` ->
    the network's input as its zoo entry declares it (``zoo.InputSpec.normalize``) -> (N, dim) features,
    L2-normalised."""

    size = 112  # aligned crop side (ArcFace template scaled to it)
    batch_size = 32
    # on CPU, run as a frozen TorchScript graph (models.frozen): worth it for graphs of many small elementwise ops
    # between depthwise convolutions (SFace, same embeddings to ~1e-6); plain eager otherwise (no gain measured for
    # the dlib port)
    freeze_on_cpu = False

    def __init__(self) -> None:
        from ..models.frozen import FrozenOnCPU

        self._net = zoo.load(self.weights[0])
        self._run = FrozenOnCPU(self._net) if self.freeze_on_cpu else self._net
        self.input_spec = zoo.WEIGHTS.get(self.weights[0]).input

    def align(self, image: np.ndarray, face: Face) -> np.ndarray:
        return align_arcface(image, face.landmarks5, self.size)

    def _prepare(self, x):
        return self.input_spec.normalize(x.float(), 255.0, channel_dim=3).permute(0, 3, 1, 2).contiguous()

    def embed_aligned(self, crops: list[np.ndarray]) -> np.ndarray:
        import torch

        out = []
        for i in range(0, len(crops), self.batch_size):
            with torch.inference_mode():
                x = self._prepare(torch.from_numpy(np.stack(crops[i : i + self.batch_size])))
                out.append(self._run(x).float().numpy())
        return _l2(np.concatenate(out)) if out else np.zeros((0, self.dim), np.float32)


@RECOGNIZERS.register("sface")
class SFaceRecognizer(_TorchRecognizer):
    name, dim, weights = "sface", 128, ("sface",)
    freeze_on_cpu = True

    def embed_aligned(self, crops: list[np.ndarray]) -> np.ndarray:
        import cv2

        sized = [
            c if c.shape[:2] == (112, 112) else cv2.resize(c, (112, 112), interpolation=cv2.INTER_LINEAR) for c in crops
        ]
        return super().embed_aligned(sized)

    def _prepare(self, x):  # the graph takes RGB [0, 255] and normalises it itself
        return self.input_spec.normalize(x.permute(0, 3, 1, 2).float(), 255.0)


def landmarks_to_dlib_rect(landmarks5: np.ndarray) -> tuple[int, int, int, int]:
    """A dlib-HOG-like square (left, top, right, bottom) from 5 ArcFace-order landmarks."""
    lm = np.asarray(landmarks5, dtype=np.float64)
    eye_mid, mouth_mid = lm[:2].mean(0), lm[3:].mean(0)
    side = 1.25 * (np.linalg.norm(lm[1] - lm[0]) + np.linalg.norm(mouth_mid - eye_mid))
    c = (eye_mid + mouth_mid) / 2 + np.array([0.0, 0.03 * side])
    l, t = c - side / 2
    return int(round(l)), int(round(t)), int(round(l + side)), int(round(t + side))


@RECOGNIZERS.register("dlib")
class DlibRecognizer(_TorchRecognizer):
    name, dim, weights = "dlib", 128, ("dlib_resnet", "dlib_shape5")

    def __init__(self) -> None:
        super().__init__()
        self._sp = zoo.load("dlib_shape5")

    def align(self, image: np.ndarray, face: Face) -> np.ndarray:
        import dlib

        img = np.ascontiguousarray(image)
        rect = dlib.rectangle(*landmarks_to_dlib_rect(face.landmarks5))
        shape = self._sp(img, rect)
        return np.asarray(dlib.get_face_chip(img, shape, size=150, padding=0.25))

    def _prepare(self, x):  # the port takes dlib's (N, 150, 150, 3) RGB chips in [0, 255] as they are
        return self.input_spec.normalize(x.float(), 255.0, channel_dim=3)


@RECOGNIZERS.register("arcface_r50")
class ArcFaceR50(_TorchRecognizer):
    name, dim, weights = "arcface_r50", 512, ("arcface_iresnet50",)


@RECOGNIZERS.register("arcface_r100")
class ArcFaceR100(_TorchRecognizer):
    name, dim, weights = "arcface_r100", 512, ("arcface_iresnet100",)


@RECOGNIZERS.register("facenet_vggface2")
class FaceNetVGGFace2(_TorchRecognizer):
    name, dim, weights, size = "facenet_vggface2", 512, ("facenet_vggface2",), 160


def available_recognizers() -> list[str]:
    """Recognizers whose weights are all present and verified."""
    return [n for n, cls in RECOGNIZERS.items() if all(zoo.available(w) for w in cls.weights)]


_cache: dict[str, Recognizer] = {}


def get_recognizer(name: str) -> Recognizer:
    """A (shared) recognizer by name; raises zoo.WeightMissingError when its weights are absent."""
    if name not in _cache:
        _cache[name] = RECOGNIZERS.get(name)()
    return _cache[name]
