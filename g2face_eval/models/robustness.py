"""Robustness of G2Face's hidden payload to JPEG re-encoding: bit error rate and authenticated recovery.

``payload_robustness(method, images, keys)`` anonymizes the faces once, then for each condition

* ``none``: the anonymized float images as returned (the direct anonymize -> recover path),
* ``uint8``: rounded to 8 bits (what a lossless PNG stores),
* ``jpeg<q>``: 8 bits, then JPEG-encoded and decoded with OpenCV (``cv2.imencode('.jpg', IMWRITE_JPEG_QUALITY
  q)``, 4:2:0 chroma subsampling, OpenCV's default),

recovers with the right keys and reports per condition: the payload bit error rate (hard bits extracted by the
hiding network vs the bits hidden at anonymization; mean / median / p90 over images) and the recovery success
rate (``Output.ok``: the keyed payload decoded and authenticated). A wrong-key recovery of the ``none``
images checks that recovery fails closed. ``method`` is any reversible ``Anonymizer`` whose ``anonymize``
returns the hidden bits and whose ``recover`` returns the extracted hard bits in the same positions (G2Face:
``G2FaceAnonymizer`` or the shipped ``ResizedG2Face``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

DEFAULT_QUALITIES = (95, 90, 75)


def jpeg_roundtrip(images01: torch.Tensor, quality: int) -> torch.Tensor:
    """(B,3,H,W) [0,1] RGB -> JPEG (OpenCV, given quality) -> decoded (B,3,H,W) [0,1] RGB (on the input device)."""
    import cv2

    from g2face_eval.imaging import to_tensor, to_uint8

    out = []
    for im in to_uint8(images01):
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(im, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise RuntimeError(f"OpenCV JPEG encoding failed at quality {quality}")
        out.append(cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    return to_tensor(out).to(images01.device)


def uint8_roundtrip(images01: torch.Tensor) -> torch.Tensor:
    from g2face_eval.imaging import to_tensor, to_uint8

    return to_tensor(list(to_uint8(images01))).to(images01.device)


def _summary(ber: list[float], ok: list[bool | None]) -> dict:
    b = np.asarray(ber, dtype=np.float64)
    oks = [o for o in ok if o is not None]
    return {"n": int(b.size), "ber_mean": float(b.mean()), "ber_median": float(np.median(b)),
            "ber_p90": float(np.percentile(b, 90)), "ber_min": float(b.min()), "ber_max": float(b.max()),
            "recovery_success_rate": float(np.mean(oks)) if oks else None,
            "recovered": int(sum(oks)) if oks else None}


def payload_robustness(method, images01: torch.Tensor, keys: Sequence[bytes],
                       qualities: Sequence[int] = DEFAULT_QUALITIES, batch_size: int = 16,
                       wrong_key_check: bool = True) -> dict:
    """BER and recovery success per condition (``none``, ``uint8``, ``jpeg<q>``); see the module docstring.

    Returns {"conditions": {name: summary}, "per_image": {name: [ber, ...]}, "wrong_key_ok_rate": float}."""
    conds = ["none", "uint8", *[f"jpeg{int(q)}" for q in qualities]]
    ber: dict[str, list[float]] = {c: [] for c in conds}
    ok: dict[str, list[bool | None]] = {c: [] for c in conds}
    wrong_ok: list[bool] = []
    n = images01.shape[0]
    for s in range(0, n, batch_size):
        x, k = images01[s:s + batch_size], list(keys[s:s + batch_size])
        a = method.anonymize(x, k)
        if a.bits is None:
            raise ValueError(f"{getattr(method, 'name', method)} does not report hidden bits")
        hidden = a.bits.float()
        for c in conds:
            if c == "none":
                y = a.images
            elif c == "uint8":
                y = uint8_roundtrip(a.images)
            else:
                y = jpeg_roundtrip(a.images, int(c[4:]))
            r = method.recover(y, k)
            ber[c] += (r.bits.float().to(hidden.device) != hidden).float().mean(1).tolist()
            ok[c] += r.ok.tolist() if r.ok is not None else [None] * len(k)
        if wrong_key_check:
            w = method.recover(a.images, [b"wrong:" + kk for kk in k])
            if w.ok is not None:
                wrong_ok += w.ok.tolist()
    return {"conditions": {c: _summary(ber[c], ok[c]) for c in conds}, "per_image": ber,
            "wrong_key_ok_rate": float(np.mean(wrong_ok)) if wrong_ok else None}


def run_shipped(n: int = 64, datasets_root: str | Path | None = None, qualities: Sequence[int] = DEFAULT_QUALITIES,
                out: str | Path | None = None, run_key: str = "jpeg-robustness", device: str = "cpu") -> dict:
    """The measurement of the model card: the shipped ``g2face`` method (keyed payload, 256 px in/out) on the
    first ``n`` faces of the celebahq256 test split (the harness's default ``spread`` subset), JSON to ``out``."""
    import time

    from g2face_eval import atomic, methods
    from g2face_eval.anonymizer import derive_keys
    from g2face_eval.data.datasets import open_dataset
    from g2face_eval.imaging import to_tensor

    t0 = time.perf_counter()
    ds = open_dataset("celebahq256", datasets_root, split="test", limit=n)
    samples = [ds.load(i) for i in ds.ids()]
    x = to_tensor([s.image for s in samples])
    ids = [s.id for s in samples]
    g = methods.build("g2face", device=device)
    res = payload_robustness(g, x, derive_keys(run_key, ids), qualities)
    inner = getattr(g, "inner", g)
    res.update({"method": "g2face (shipped checkpoint)", "config": g.config(), "dataset": "celebahq256",
                "split": "test", "n_faces": len(ids), "ids": ids, "run_key": run_key,
                "payload": inner.payload.describe() if hasattr(inner.payload, "describe") else inner.payload.mode,
                "jpeg_encoder": "OpenCV cv2.imencode, IMWRITE_JPEG_QUALITY, default 4:2:0",
                "wall_s": time.perf_counter() - t0})
    if out is not None:
        atomic.write_text(Path(out), json.dumps(res, indent=2))
    return res


def table(res: dict) -> str:
    """Markdown table of ``payload_robustness`` results."""
    lines = ["| condition | faces | BER mean | BER median | BER p90 | recovered (authenticated) |",
             "|---|---|---|---|---|---|"]
    for c, s in res["conditions"].items():
        rec = "n/a" if s["recovery_success_rate"] is None else (
            f"{s['recovered']}/{s['n']} ({100 * s['recovery_success_rate']:.1f} %)")
        lines.append(f"| {c} | {s['n']} | {100 * s['ber_mean']:.2f} % | {100 * s['ber_median']:.2f} % | "
                     f"{100 * s['ber_p90']:.2f} % | {rec} |")
    return "\n".join(lines)
