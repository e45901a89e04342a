"""Data-parallel plumbing: torchrun (env:// rendezvous; nccl on GPU, gloo on CPU) or one process.

Gradients are averaged with bucketed ``all_reduce`` after each backward phase instead of wrapping the
modules in ``DistributedDataParallel``: G2Face runs its generator twice per step (anonymise + recover) and the
discriminator needs R1's double backward, both awkward for DDP's autograd hooks. The result is the same
data-parallel update (identical initial parameters broadcast from rank 0, per-rank batch-mean losses,
gradients averaged over ranks).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def init(device: str = "auto") -> DistInfo:
    """Initialise from torchrun's environment (RANK/WORLD_SIZE/LOCAL_RANK) when present."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local, dev)


def cleanup(sync: bool = False) -> None:
    """Tear the process group down. ``sync`` (the normal end of a run): a barrier first, so that no rank
    destroys its gloo context while a peer still communicates (seen once as a SIGABRT, "terminate called without
    an active exception", in a rank of the two-rank test); the error path skips it (a failed peer never arrives)."""
    if dist.is_available() and dist.is_initialized():
        if sync and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def broadcast_module(module: torch.nn.Module, info: DistInfo) -> None:
    if not info.distributed:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, 0)


def average_gradients(params, info: DistInfo, bucket_mb: float = 25.0) -> None:
    """All-reduce (mean) the .grad of ``params`` in flat buckets; missing grads count as zeros."""
    if not info.distributed:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    limit = int(bucket_mb * (1 << 20) / 4)
    bucket: list[torch.Tensor] = []
    size = 0

    def flush():
        nonlocal bucket, size
        if not bucket:
            return
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        flat /= info.world
        off = 0
        for g in bucket:
            g.copy_(flat[off:off + g.numel()].view_as(g))
            off += g.numel()
        bucket, size = [], 0

    for p in params:
        bucket.append(p.grad)
        size += p.grad.numel()
        if size >= limit:
            flush()
    flush()


def all_mean(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Average scalar logs over ranks."""
    if not info.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if info.device.type == "cuda":
        t = t.to(info.device)
    dist.all_reduce(t)
    t /= info.world
    return dict(zip(keys, t.cpu().tolist(), strict=True))


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
