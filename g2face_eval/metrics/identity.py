"""Identity metrics on recognizer embeddings / similarities (recognizer-agnostic: pass the recognizer's own
FAR-1e-3 threshold, ``recognizer.threshold``).

Per-sample outputs (numpy) feed ``bootstrap.ci``; the harness logs them under
``metric_name("deid_success_rate", rec)`` etc.

* ``cosine_similarity(a, b)`` -> (N,) row-wise cosine (rows need not be normalised).
* ``protection_success(sim, threshold)`` -> (N,) bool, ``sim < threshold`` (de-identified). Rate = mean.
* ``recovered_success(sim, threshold)`` -> (N,) bool, ``sim >= threshold`` (identity restored; a tie counts as
  the same person, in the attacker's favour: ``validation.operating_threshold`` puts the recorded threshold
  above the FAR-defining negative for this rule).
* ``identification_hits(probe, probe_labels, gallery, gallery_labels, ks=(1, 5))`` -> {k: (N,) bool}:
  closed-set identification by cosine similarity. Ranking is per identity: an identity's score is its best
  gallery image's similarity; a probe's rank is 1 + the number of *other* identities scoring strictly higher
  than its true identity (ties go to the attacker, i.e. are counted as hits — the conservative choice for a
  privacy benchmark; scores within ``RANK_TIE_TOL`` = 1e-12, the products' round-off, are ties). With one
  gallery image per identity this is the usual CMC rank.
* ``identification_ranks(...)`` -> (N,) int ranks (1-based).
* ``bit_error_rate(sent, decoded)`` -> (N,) fraction of differing bits per row.
"""

from __future__ import annotations

import numpy as np


def _f64(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def cosine_similarity(a, b) -> np.ndarray:
    a, b = _f64(a), _f64(b)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (N,D) arrays of equal shape, got {a.shape} and {b.shape}")
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-12)


def _sims(sim) -> np.ndarray:
    s = _f64(sim).ravel()
    if not np.isfinite(s).all():
        raise ValueError("similarities contain NaN or inf")
    return s


def protection_success(sim, threshold: float) -> np.ndarray:
    return _sims(sim) < float(threshold)


def recovered_success(sim, threshold: float) -> np.ndarray:
    return _sims(sim) >= float(threshold)


def protection_success_rate(sim, threshold: float) -> float:
    s = protection_success(sim, threshold)
    return float(s.mean()) if s.size else float("nan")


def mean_similarity(sim) -> float:
    s = _sims(sim)
    return float(s.mean()) if s.size else float("nan")


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


RANK_TIE_TOL = 1e-12  # cosine similarities closer than this count as equal in identification_ranks


def identification_ranks(probe, probe_labels, gallery, gallery_labels, *, chunk: int = 1024) -> np.ndarray:
    p = _normalise(_f64(probe))
    g = _normalise(_f64(gallery))
    pl = np.asarray(probe_labels)
    gl = np.asarray(gallery_labels)
    if p.ndim != 2 or g.ndim != 2 or p.shape[1] != g.shape[1]:
        raise ValueError(f"expected (N,D) probe and (M,D) gallery, got {p.shape} and {g.shape}")
    if len(pl) != len(p) or len(gl) != len(g):
        raise ValueError("labels must have one entry per embedding")
    if len(p) and not len(g):
        raise ValueError("closed-set identification needs a non-empty gallery")
    ids, g_idx = np.unique(
        gl, return_inverse=True
    )  # identities sorted; g_idx: identity index per gallery row
    pos = np.searchsorted(ids, pl)
    pos_c = np.clip(pos, 0, len(ids) - 1)
    if len(pl) and not (ids[pos_c] == pl).all():
        missing = pl[ids[pos_c] != pl][:3]
        raise ValueError(f"closed-set identification: probe labels absent from gallery, e.g. {list(missing)}")
    order = np.argsort(g_idx, kind="stable")
    starts = np.searchsorted(g_idx[order], np.arange(len(ids)))
    ranks = np.empty(len(p), dtype=np.int64)
    for s in range(0, len(p), chunk):
        sim = p[s : s + chunk] @ g[order].T  # (n, M) gallery sorted by identity
        per_id = np.maximum.reduceat(sim, starts, axis=1)  # (n, K) best score per identity
        true = per_id[np.arange(len(sim)), pos_c[s : s + chunk]]
        # strictly better identities only (a tie goes to the attacker), with the float64 products' round-off
        # (~1e-16) not counted as better: a score equal in exact arithmetic is a tie
        ranks[s : s + chunk] = 1 + (per_id > true[:, None] + RANK_TIE_TOL).sum(1)
    return ranks


def identification_hits(probe, probe_labels, gallery, gallery_labels, ks=(1, 5)) -> dict[int, np.ndarray]:
    r = identification_ranks(probe, probe_labels, gallery, gallery_labels)
    return {int(k): r <= int(k) for k in ks}


def bit_error_rate(sent, decoded) -> np.ndarray:
    """Per-row BER between (N,L) bit arrays (bool or 0/1). Rows the decoder failed on should be passed as the
    harness's chosen fallback (e.g. random bits -> ~0.5); this function never guesses."""
    a = np.asarray(_f64(sent) if hasattr(sent, "detach") else sent)
    b = np.asarray(_f64(decoded) if hasattr(decoded, "detach") else decoded)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (N,L) bit arrays of equal shape, got {a.shape} and {b.shape}")
    for x in (a, b):
        if not np.isin(x.astype(np.float64), (0.0, 1.0)).all():
            raise ValueError("bit arrays must contain only 0/1")
    return (a.astype(bool) != b.astype(bool)).mean(1)
