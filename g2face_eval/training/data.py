"""Training data: the celebahq256 *train* split (sorted ids minus the last 500 test ids) at the configured
resolution, preloaded once as a uint8 tensor (cached as .npy under ``settings.cache_dir()/training``). The
datasets root: the one given (``--data-root``), else ``$G2FACE_DATASETS``, else ``<repo>/../shared/datasets``.

Batches are deterministic functions of (seed, epoch, step): the epoch permutation comes from a generator
seeded with (seed, epoch), random horizontal flips (official: RandomHorizontalFlip) from (seed, epoch, step).
Each global batch is cut into ``shards`` equal slices (rank-major, then micro-batch), so a data-parallel run
with W ranks x A micro-batches sees exactly the samples of a one-process run with W*A micro-batches.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from g2face_eval import settings


def _seed(*parts: int) -> int:
    h = hashlib.sha256(("/".join(str(int(p)) for p in parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def generator(*parts: int, device: str | torch.device = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(_seed(*parts))
    return g


def _datasets_root(root: str | Path | None) -> Path:
    """``root`` when given (``--data-root``), else ``$G2FACE_DATASETS``, else ``<repo>/../shared/datasets``."""
    if root is not None:
        return Path(root)
    r = settings.datasets_root()
    return r if r is not None else settings.shared_datasets_fallback()


def load_train_images(size: int, root: str | Path | None = None, limit: int | None = None,
                      cache: bool = True, log=print) -> torch.Tensor:
    """(N,3,size,size) uint8 RGB, celebahq256 train split (first ``limit`` sorted ids when given)."""
    root = _datasets_root(root)
    try:
        from g2face_eval.data.datasets import open_dataset

        ds = open_dataset("celebahq256", root, split="train")
        files = [ds.path(i) for i in ds.ids()]
    except ImportError:  # pragma: no cover - datasets module absent
        allf = sorted((root / "celebahq256" / "images").glob("*.jpg"), key=lambda p: p.stem)
        files = allf[:-500]
    if limit:
        files = files[:limit]
    # keyed by the files themselves (resolved paths, sizes, mtimes): another datasets root with the same names,
    # or a replaced image, is another cache entry
    h = hashlib.sha256()
    for f in files:
        st = Path(f).stat()
        h.update(f"{Path(f).resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    cpath = settings.cache_dir() / "training" / f"celebahq256_train_{size}_{len(files)}_{h.hexdigest()[:16]}.npy"
    if cache and cpath.exists():
        try:
            return torch.from_numpy(np.load(cpath))
        except (OSError, ValueError) as e:  # damaged entry: rebuilt below
            log(f"[data] rebuilding an unreadable cache entry {cpath}: {e}")
    from g2face_eval.data.io import load_image

    out = np.empty((len(files), 3, size, size), np.uint8)
    for i0 in range(0, len(files), 64):
        ims = np.stack([load_image(f) for f in files[i0:i0 + 64]])
        x = torch.from_numpy(ims).permute(0, 3, 1, 2).float()
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[i0:i0 + 64] = x.round().clamp(0, 255).to(torch.uint8).numpy()
    if cache:  # atomic: torchrun ranks load concurrently, and an interrupted write leaves no truncated entry
        from g2face_eval import atomic

        def write(t: str) -> None:
            with open(t, "wb") as fh:
                np.save(fh, out)

        atomic.write_via(cpath, write)
    log(f"[data] celebahq256 train: {len(out)} images at {size}px")
    return torch.from_numpy(out)


class ShardedBatches:
    """Deterministic global batches over a preloaded uint8 tensor; ``batch(epoch, step, shard, shards)``
    returns the [-1,1] float images of one shard of the global batch (drop_last, like the official loader)."""

    def __init__(self, images_u8: torch.Tensor, global_batch: int, seed: int, flip: bool = True,
                 fixed: bool = False):
        if global_batch < 1:
            raise ValueError(f"global batch {global_batch} < 1")
        if len(images_u8) < global_batch:
            raise ValueError(f"{len(images_u8)} training images < global batch {global_batch}")
        self.images, self.global_batch, self.seed = images_u8, global_batch, seed
        self.flip, self.fixed = flip, fixed

    @property
    def steps_per_epoch(self) -> int:
        return len(self.images) // self.global_batch

    def indices(self, epoch: int, step_in_epoch: int) -> torch.Tensor:
        if self.fixed:  # always the first global batch (overfitting checks)
            return torch.arange(self.global_batch)
        if not 0 <= step_in_epoch < self.steps_per_epoch:
            raise ValueError(f"step {step_in_epoch} of a data epoch: {len(self.images)} images give "
                             f"{self.steps_per_epoch} global batches of {self.global_batch} per epoch")
        perm = torch.randperm(len(self.images), generator=generator(self.seed, 11, epoch))
        return perm[step_in_epoch * self.global_batch:(step_in_epoch + 1) * self.global_batch]

    def batch(self, epoch: int, step_in_epoch: int, shard: int = 0, shards: int = 1) -> torch.Tensor:
        if self.global_batch % shards:
            raise ValueError(f"global batch {self.global_batch} not divisible into {shards} shards")
        idx = self.indices(epoch, step_in_epoch)
        flips = torch.rand(self.global_batch, generator=generator(self.seed, 12, epoch, step_in_epoch)) < 0.5
        n = self.global_batch // shards
        sl = slice(shard * n, (shard + 1) * n)
        x = self.images[idx[sl]].float() / 127.5 - 1.0
        if self.flip:
            f = flips[sl]
            x = torch.where(f[:, None, None, None], x.flip(-1), x)
        return x
