"""Fitting the offline 3D landmark morphable model (the project's stand-in for Deep3DFaceRecon + BFM).

Pipeline (``python -m g2face_eval.models.geometry_fit``):

1. ``extract_meshes``: run the mediapipe face mesh (468 3D points, legacy ``solutions.face_mesh``, static
   mode) on the identity-labelled CelebA images (upscaled x2, since the faces are small in 178x218) and on
   the celebahq256 *train* split (sorted ids minus the last 500 = test; never used for fitting), plus
   the horizontally flipped celebahq256 train images (augmentation for the regressor). Results are cached
   as npz under ``settings.cache_dir()/geometry``.
2. ``fit_morphable_model``: Procrustes (similarity) pose removal to a reference shape; identity basis =
   PCA of per-identity mean shapes (CelebA identities, 30 images each); expression basis = PCA of
   within-identity residuals after projecting out the identity basis.
3. ``fit_coefficients``: per-image coefficients (id, exp) + pose (yaw, pitch, roll, scale, tx, ty) for
   every cached celebahq256 train mesh -> distillation targets.
4. ``train_regressor``: the differentiable CNN in ``geometry.py`` regresses these targets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .. import settings

CELEBA_ID = "celeba_id"
CELEBAHQ = "celebahq256"
N_TEST = 500  # celebahq256: last 500 sorted ids are the test split


def cache_root() -> Path:
    p = settings.cache_dir() / "geometry"
    p.mkdir(parents=True, exist_ok=True)
    return p


def datasets_root() -> Path:
    r = settings.datasets_root()
    if r is None:
        r = settings.REPO_ROOT.parent / "shared" / "datasets"
    return Path(r)


def celebahq_files(root: Path, split: str) -> list[Path]:
    files = sorted((root / CELEBAHQ / "images").glob("*.*"), key=lambda p: p.stem)
    if split == "train":
        return files[:-N_TEST]
    if split == "test":
        return files[-N_TEST:]
    return files


def celeba_id_files(root: Path) -> list[tuple[str, Path]]:
    out = []
    for d in sorted((root / CELEBA_ID / "images").iterdir()):
        if d.is_dir():
            out += [(d.name, f) for f in sorted(d.glob("*.*"))]
    return out


class MeshRunner:
    """Thin wrapper on the mediapipe face mesh returning (468,3) pixel coordinates (z in x-pixel units)."""

    def __init__(self):
        os.environ.setdefault("GLOG_minloglevel", "2")
        from mediapipe.python.solutions import face_mesh

        from g2face_eval.oracles.geometry import verify_mesh_weights

        verify_mesh_weights()  # sha256 of the tflite files the graph loads, before building it
        self._fm = face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=False,
                                      min_detection_confidence=0.5)

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        h, w = rgb.shape[:2]
        res = self._fm.process(np.ascontiguousarray(rgb))
        if not res.multi_face_landmarks:
            return None
        lm = res.multi_face_landmarks[0].landmark
        a = np.array([[p.x * w, p.y * h, p.z * w] for p in lm], dtype=np.float32)
        return a


def _read_rgb(path: Path) -> np.ndarray:
    import cv2

    im = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if im is None:
        raise OSError(f"cannot read {path}")
    return np.ascontiguousarray(im[:, :, ::-1])


def extract_meshes(which: str, root: Path | None = None, log=print) -> Path:
    """Run mediapipe over a dataset; cache npz with ids, landmarks (N,468,3), ok (N,), [labels]."""
    import cv2

    root = root or datasets_root()
    out = cache_root() / f"meshes_{which}.npz"
    if out.exists():
        return out
    runner = MeshRunner()
    ids, labels, lms, ok = [], [], [], []
    if which == CELEBA_ID:
        items = celeba_id_files(root)
    elif which in ("celebahq256_train", "celebahq256_train_flip", "celebahq256_test"):
        split = "test" if which.endswith("test") else "train"
        items = [("", p) for p in celebahq_files(root, split)]
    else:
        raise ValueError(which)
    t0 = time.time()
    for i, (lab, p) in enumerate(items):
        rgb = _read_rgb(p)
        scale = 1.0
        if which == CELEBA_ID:
            scale = 2.0
            rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        if which.endswith("flip"):
            rgb = np.ascontiguousarray(rgb[:, ::-1])
        a = runner(rgb)
        ids.append(p.stem)
        labels.append(lab)
        ok.append(a is not None)
        lms.append((a / scale) if a is not None else np.zeros((468, 3), np.float32))
        if i % 500 == 0:
            log(f"[geometry_fit] {which}: {i}/{len(items)} ({time.time() - t0:.0f}s)")
    np.savez_compressed(out, ids=np.array(ids), labels=np.array(labels),
                        landmarks=np.stack(lms).astype(np.float32), ok=np.array(ok))
    log(f"[geometry_fit] {which}: {sum(ok)}/{len(ok)} faces meshed in {time.time() - t0:.0f}s -> {out}")
    return out


def load_meshes(which: str) -> dict:
    p = extract_meshes(which)
    d = np.load(p)
    return {k: d[k] for k in d.files}


# ------------------------------------------------------------------------------------------ Procrustes
def umeyama(a, x):
    """Batched similarity fit x ~ s R a + t. a: (B,N,3) or (N,3); x: (B,N,3).
    Returns s (B,), R (B,3,3), t (B,3)."""
    import torch

    a = a.expand_as(x) if a.dim() == 2 else a
    ma, mx = a.mean(1, keepdim=True), x.mean(1, keepdim=True)
    ac, xc = a - ma, x - mx
    cov = xc.transpose(1, 2) @ ac / a.shape[1]
    u, d, vt = torch.linalg.svd(cov)
    sgn = torch.sign(torch.det(u) * torch.det(vt))
    e = torch.ones_like(d)
    e[:, 2] = sgn
    r = u @ torch.diag_embed(e) @ vt
    var_a = (ac ** 2).sum(-1).mean(1)
    s = (d * e).sum(1) / var_a
    t = mx[:, 0] - s[:, None] * (r @ ma.transpose(1, 2))[..., 0]
    return s, r, t


def _normalise(shape):
    shape = shape - shape.mean(-2, keepdim=True)
    return shape / (shape ** 2).sum(-1).mean(-1, keepdim=True).sqrt()[..., None]


def generalised_procrustes(x, iters: int = 6):
    """x: (B,468,3) -> canonical mean (468,3) (frontal/upright frame, centred, unit RMS radius)."""
    import torch

    mean = _normalise(x[0])
    for _ in range(iters):
        s, r, t = umeyama(mean, x)
        y = ((x - t[:, None]) @ r) / s[:, None, None]
        mean = _normalise(y.mean(0))
    # canonical axes: x from cheek 234 (image left) to cheek 454; y from forehead 10 to chin 152; z = x X y
    ax = mean[454] - mean[234]
    ax = ax / ax.norm()
    ay = mean[152] - mean[10]
    ay = ay - (ay @ ax) * ax
    ay = ay / ay.norm()
    az = torch.linalg.cross(ax, ay)
    rot = torch.stack([ax, ay, az])  # rows = new axes
    return _normalise(mean @ rot.T)


def to_model_frame(mean, x):
    """Similarity-align meshes x (B,468,3) to ``mean``: model-frame shapes and (s, R, t)."""
    s, r, t = umeyama(mean, x)
    y = ((x - t[:, None]) @ r) / s[:, None, None]
    return y, s, r, t


def pca(data, k):
    """data (M,P) centred -> (basis (k,P) orthonormal rows, std (k,))."""
    import torch

    u, d, vt = torch.linalg.svd(data, full_matrices=False)
    k = min(k, vt.shape[0])
    proj = data @ vt[:k].T
    return vt[:k], proj.std(0).clamp_min(1e-8)


FISHER_MIN = 0.25  # identity directions: between-identity variance >= 0.25 x within-identity variance


def separate_identity_expression(d, labels, n_id, n_exp, k_reduce: int = 120, log=print):
    """Split shape deviations d (M,P) (model frame, mean removed) into identity and expression bases.

    The mediapipe meshes span only ~40 effective dimensions, so a plain PCA of the 100 identity means
    with 80 components would swallow every expression direction too. Identity subspace = the generalised
    eigen-directions of (between-identity covariance, within-identity covariance) with ratio >= FISHER_MIN,
    ordered by PCA of the identity means inside it; expression = PCA of within-identity residuals in the
    orthogonal complement. Unused slots (up to n_id / n_exp) get zero basis rows (coefficient always 0).
    """
    import torch

    red, _ = pca(d, k_reduce)  # (K,P)
    z = d @ red.T
    uniq = sorted(set(labels.tolist()))
    masks = [torch.from_numpy(labels == u) for u in uniq]
    im = torch.stack([z[mk].mean(0) for mk in masks])
    res = torch.cat([z[mk] - im[i] for i, mk in enumerate(masks)])
    sb = im.T @ im / len(im)
    sw = res.T @ res / len(res) + 1e-12 * torch.eye(len(red), dtype=d.dtype)
    li = torch.linalg.inv(torch.linalg.cholesky(sw))
    ev, w = torch.linalg.eigh(li @ sb @ li.T)
    ev, w = ev.flip(0), w.flip(1)
    k = int(min(n_id, (ev >= FISHER_MIN).sum().item()))
    v = (li.T @ w[:, :k]) if k else torch.zeros(len(red), 0, dtype=d.dtype)
    q, _ = torch.linalg.qr(red.T @ v)  # (P,k) orthonormal id subspace
    # order inside the subspace by PCA of the identity means
    idm = (im @ red) @ q  # (ids,k)
    _, _, vt = torch.linalg.svd(idm - idm.mean(0), full_matrices=False)
    id_dirs = (q @ vt.T).T  # (k,P)
    id_std = ((im @ red) @ id_dirs.T).std(0).clamp_min(1e-8)
    r_full = res @ red
    r_full = r_full - (r_full @ id_dirs.T) @ id_dirs
    exp_dirs, exp_std = pca(r_full, n_exp)
    p = d.shape[1]
    id_basis = torch.zeros(n_id, p, dtype=d.dtype)
    id_basis[:k] = id_dirs
    ids = torch.ones(n_id, dtype=d.dtype)
    ids[:k] = id_std
    exp_basis = torch.zeros(n_exp, p, dtype=d.dtype)
    exp_basis[:len(exp_dirs)] = exp_dirs
    exs = torch.ones(n_exp, dtype=d.dtype)
    exs[:len(exp_dirs)] = exp_std
    log(f"[geometry_fit] identity subspace: {k} Fisher directions (ratio >= {FISHER_MIN}; top ratios "
        f"{[round(x, 2) for x in ev[:5].tolist()]}), expression: {len(exp_dirs)} PCA components")
    return id_basis, ids, exp_basis, exs


def fit_morphable_model(log=print):
    """MorphableModel buffers from the cached CelebA-identity meshes (+ celebahq256 train for the mean)."""
    import torch

    from .geometry import N_EXP, N_ID, MorphableModel

    cid = load_meshes(CELEBA_ID)
    hq = load_meshes("celebahq256_train")
    x_id = torch.from_numpy(cid["landmarks"][cid["ok"]]).double()
    labels = cid["labels"][cid["ok"]]
    x_hq = torch.from_numpy(hq["landmarks"][hq["ok"]]).double()
    mean = generalised_procrustes(torch.cat([x_id, x_hq]))
    y, *_ = to_model_frame(mean, x_id)
    y = y.reshape(len(y), -1)
    m = mean.reshape(-1)
    id_basis, id_std, exp_basis, exp_std = separate_identity_expression(y - m, labels, N_ID, N_EXP, log=log)
    mm = MorphableModel()
    mm.mean.copy_(m)
    mm.id_basis.copy_(id_basis)
    mm.id_std.copy_(id_std)
    mm.exp_basis.copy_(exp_basis)
    mm.exp_std.copy_(exp_std)
    log(f"[geometry_fit] morphable model: {len(set(labels.tolist()))} identities, {len(y)} id meshes; "
        f"id top std {id_std[:3].tolist()}, exp top std {exp_std[:3].tolist()}")
    return mm.float()


def fit_coefficients(mm, x, image_size: int, iters: int = 4, ridge: float = 1e-6):
    """Per-mesh coefficients (B,150): alternate similarity pose and ridge projection on the bases."""
    import torch

    from .geometry import ANGLES, EXP, ID, N_COEF, SCALE, TRANS, matrix_to_euler

    x = x.double()
    mean = mm.mean.double().view(-1, 3)
    idb, ids = mm.id_basis.double(), mm.id_std.double()
    exb, exs = mm.exp_basis.double(), mm.exp_std.double()
    cur = mean.expand(len(x), -1, -1)
    for _ in range(iters):
        s, r, t = umeyama(cur, x)
        # umeyama fits x ~ s R cur + t with cur's own centroid; model shapes are centred in mean frame
        y = ((x - t[:, None]) @ r) / s[:, None, None]
        d = (y - mean).reshape(len(x), -1)
        c_id = ids * (d @ idb.T) / (ids ** 2 + ridge)
        c_exp = exs * (d @ exb.T) / (exs ** 2 + ridge)
        cur = (mean.reshape(-1) + (c_id * ids) @ idb + (c_exp * exs) @ exb).view(len(x), -1, 3)
    s, r, t = umeyama(cur, x)
    c = torch.zeros(len(x), N_COEF, dtype=torch.float64)
    c[:, ID], c[:, EXP] = c_id, c_exp
    c[:, ANGLES] = matrix_to_euler(r)
    c[:, SCALE] = s / image_size
    c[:, TRANS] = t[:, :2] / image_size - 0.5
    return c.float()


def load_images(files, flip: bool = False, size: int = 128):
    """uint8 (N,3,size,size) tensor, resized from 256 with the regressor's own (antialiased bilinear) op."""
    import torch
    import torch.nn.functional as F

    out = torch.empty(len(files), 3, size, size, dtype=torch.uint8)
    for i0 in range(0, len(files), 64):
        ims = [_read_rgb(f) for f in files[i0:i0 + 64]]
        x = torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).float()
        if flip:
            x = x.flip(-1)
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[i0:i0 + 64] = x.round().clamp(0, 255).to(torch.uint8)
    return out


def _targets(mm, which: str, root: Path):
    import torch

    d = load_meshes(which)
    files = celebahq_files(root, "test" if which.endswith("test") else "train")
    assert [f.stem for f in files] == d["ids"].tolist(), which
    ok = d["ok"].copy()
    lim = int(os.environ.get("G2FACE_GEO_LIMIT", "0"))  # smoke runs only
    if lim:
        ok[lim:] = False
    x = torch.from_numpy(d["landmarks"][ok])
    c = fit_coefficients(mm, x, 256)
    return [f for f, k in zip(files, ok, strict=True) if k], x, c


def evaluate(prior, images_u8, lm_ref, c_ref, batch: int = 100):
    """Held-out errors: per-angle mean |error| (deg) vs the mediapipe-fitted pose; mean NME vs mediapipe."""
    import torch

    from .geometry import ANGLES, nme

    prior.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(images_u8), batch):
            preds.append(prior.coefficients(images_u8[i:i + batch].float() / 127.5 - 1))
    c = torch.cat(preds)
    lm = prior.landmarks3d(c)[..., :2] * 256
    err = ((c[:, ANGLES] - c_ref[:, ANGLES]) * 180 / np.pi).abs().mean(0)
    return {"yaw_mae_deg": err[0].item(), "pitch_mae_deg": err[1].item(), "roll_mae_deg": err[2].item(),
            "nme_interocular": nme(lm, lm_ref).mean().item(), "n": len(c)}


def _features(reg, ims_u8, batch: int = 100):
    import torch

    reg.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(ims_u8), batch):
            out.append(reg.frozen_features(ims_u8[i:i + batch].float() / 127.5 - 1).half())
    return torch.cat(out)


def train_regressor(prior, minutes: float = 10.0, batch: int = 64, lr: float = 1e-3, seed: int = 0,
                    log=print, root: Path | None = None, keep_stats: bool = False):
    """Distil mediapipe into the regressor. The ImageNet trunk's blocks 0..7 stay frozen (their 8x8x80 output
    at 128 px is computed once), blocks 8..15, the 1x1 head conv and the MLP head are trained with
    standardised-coefficient MSE + 0.2 x landmark L1 (pixels at 128) against the mediapipe meshes, for a wall
    time budget (cosine lr). Data: celebahq256 train split + its horizontal flips (flipped images meshed
    separately by mediapipe)."""
    import torch
    import torch.nn.functional as F

    root = root or datasets_root()
    torch.manual_seed(seed)
    mm = prior.model
    f_tr, x_tr, c_tr = _targets(mm, "celebahq256_train", root)
    f_fl, x_fl, c_fl = _targets(mm, "celebahq256_train_flip", root)
    t0 = time.time()
    reg = prior.regressor
    fcache = cache_root() / f"regressor_features_{len(f_tr)}_{len(f_fl)}.pt"
    if fcache.exists():
        feats = torch.load(fcache, weights_only=True)
    else:
        feats = torch.cat([_features(reg, load_images(f_tr)), _features(reg, load_images(f_fl, flip=True))])
        torch.save(feats, fcache)
    lms = torch.cat([x_tr, x_fl])[..., :2] / 256.0
    cs = torch.cat([c_tr, c_fl])
    log(f"[geometry_fit] regressor data: {len(feats)} images (celebahq256 train + flips), frozen features "
        f"{tuple(feats.shape[1:])} in {time.time() - t0:.0f}s")
    if not keep_stats:
        std = cs.std(0)
        reg.out_mean.copy_(cs.mean(0))
        reg.out_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))
    trainable = [p for i, b in enumerate(reg.trunk._blocks) if i > reg.FROZEN_UNTIL for p in b.parameters()]
    trainable += list(reg.trunk._conv_head.parameters()) + list(reg.trunk._bn1.parameters())
    params = [{"params": trainable, "lr": lr},
              {"params": list(reg.reduce.parameters()) + list(reg.head.parameters()), "lr": lr}]
    opt = torch.optim.AdamW(params, weight_decay=1e-4)
    n = len(feats)
    spe = n // batch
    t0, step, epoch = time.time(), 0, 0
    budget = minutes * 60
    reg.train()
    done = False
    while not done:
        perm = torch.randperm(n)
        for b in range(spe):
            el = time.time() - t0
            if el > budget:
                done = True
                break
            for g in opt.param_groups:
                g["lr"] = lr * 0.5 * (1 + np.cos(np.pi * min(el / budget, 1.0)))
            idx = perm[b * batch:(b + 1) * batch]
            out = reg.from_features(feats[idx].float())
            c = out * reg.out_std + reg.out_mean
            loss_c = F.mse_loss(out, (cs[idx] - reg.out_mean) / reg.out_std)
            loss_l = (mm.posed(c)[..., :2] - lms[idx]).abs().mean() * 128
            loss = loss_c + 0.2 * loss_l
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % 100 == 0:
                log(f"[geometry_fit] epoch {epoch} step {step} loss {loss.item():.4f} "
                    f"coef {loss_c.item():.4f} lm_px128 {loss_l.item():.3f} ({time.time() - t0:.0f}s)")
        else:
            epoch += 1
    reg.eval()
    return {"steps": step, "epochs": round(step / spe, 2), "seconds": round(time.time() - t0), "batch": batch,
            "lr": lr, "n_train_images": n, "frozen_blocks": f"0..{reg.FROZEN_UNTIL}"}


def build_all(out: Path, minutes: float, log=print, resume: Path | None = None) -> dict:
    """Fit the morphable model, distil the regressor, evaluate on the held-out split, save. ``resume``:
    continue the regressor training of an existing checkpoint (same morphable model)."""
    import torch

    from .geometry import GeometryPrior

    torch.set_num_threads(int(os.environ.get("G2FACE_THREADS", "2")))
    root = datasets_root()
    if resume is not None:
        prior = GeometryPrior.load(resume)
        prev = prior.meta.get("train", {})
    else:
        prior = GeometryPrior()
        prior.model.load_state_dict(fit_morphable_model(log=log).state_dict())
        prior.regressor.trunk.load_pretrained()
        prev = {}
    info = train_regressor(prior, minutes=minutes, log=log, root=root, keep_stats=resume is not None)
    if prev:
        info = {"stages": [prev, info]}
    f_te, x_te, c_te = _targets(prior.model, "celebahq256_test", root)
    res = evaluate(prior, load_images(f_te), x_te[..., :2], c_te)
    meta = {"train": info, "heldout_celebahq256_test": res, "fisher_min": FISHER_MIN,
            "data": "mediapipe face mesh on celeba_id (100 ids x 30, x2 upscaled) + celebahq256 train split "
                    "(first 3500 sorted ids) and its horizontal flips; test = last 500 sorted ids "
                    "(never fitted)"}
    prior.meta = meta
    prior.save(out, meta)
    log(f"[geometry_fit] held-out: {json.dumps(res)} -> {out}")
    return meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m g2face_eval.models.geometry_fit")
    ap.add_argument("stage", choices=["extract", "fit", "all"], default="all", nargs="?")
    ap.add_argument("--minutes", type=float, default=10.0, help="regressor training time budget")
    ap.add_argument("--out", default=None, help="output safetensors (default: the shipped checkpoint)")
    ap.add_argument("--resume", default=None, help="continue training the regressor of this checkpoint")
    args = ap.parse_args(argv)
    if args.stage in ("extract", "all"):
        for w in (CELEBA_ID, "celebahq256_train", "celebahq256_test", "celebahq256_train_flip"):
            extract_meshes(w)
            sys.stdout.flush()
    if args.stage in ("fit", "all"):
        from .geometry import CHECKPOINT

        build_all(Path(args.out) if args.out else CHECKPOINT, args.minutes,
                  log=lambda m: print(m, flush=True), resume=Path(args.resume) if args.resume else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
