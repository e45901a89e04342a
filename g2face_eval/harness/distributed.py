"""``evaluate`` on several processes: ``torchrun --nproc_per_node N -m g2face_eval evaluate ...``.

torch.distributed (env:// rendezvous from torchrun; nccl when the config's device is CUDA, gloo on CPU; the
record exchange always uses a gloo group since records are host objects).

1. Every rank builds the same setup as ``evaluate`` (config, oracles, methods, dataset sources: ids only).
2. The work is sharded by chunk: chunk ``i`` of a dataset belongs to rank ``i % world``. Each rank prepares
   its own chunks only (loading, face detection, the originals' embeddings, meshes and realism features) and
   runs every method on them (``evaluate.compute``), persisting each prepared chunk and each method's batch in
   the run's stores as it completes (atomic writes; ranks never write the same file). The last
   ``len(chunks) % world`` chunks, which would keep one rank working while the others wait, are shared: their
   owner prepares them, and after a barrier every rank runs its share of the methods on them
   (``evaluate.method_share``). The ``celeba_id`` gallery is sharded by chunk, then (after a barrier) read whole
   by every rank.
3. The ranks' lists of computed batches (provenance only) are gathered to rank 0.
4. Rank 0 then runs the ordinary ``evaluate``: every chunk and batch is found done, so aggregates, Fréchet
   statistics, bootstrap CIs, files and MLflow runs are produced by the same code as a single-process run --
   every metric equals the single-process result.

The results folder must be shared by the ranks (one machine, or a shared filesystem). A run killed at any
point keeps every batch persisted so far on every rank; rerunning the command (with any number of ranks)
skips them.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from g2face_eval.harness import config as C
from g2face_eval.harness import evaluate as E
from g2face_eval.harness.prepare import PrepStore
from g2face_eval.harness.records import BatchStore

TIMEOUT = timedelta(hours=4)


def world() -> tuple[int, int, int]:
    return (
        int(os.environ.get("RANK", "0")),
        int(os.environ.get("WORLD_SIZE", "1")),
        int(os.environ.get("LOCAL_RANK", "0")),
    )


def _init(cfg: dict):
    rank, n, local = world()
    dev = str(cfg["device"])
    use_cuda = dev.startswith("cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
        cfg["device"] = f"cuda:{local}"
    own = not dist.is_initialized()
    if own:
        # ranks wait for each other at the gallery barrier and while rank 0 aggregates: allow long waits
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=n, timeout=TIMEOUT)
    group = dist.new_group(backend="gloo", timeout=TIMEOUT) if use_cuda else None
    return rank, n, group, own


def evaluate_distributed(cfg: dict | None = None, **kw) -> dict | None:
    """Run on every rank; returns ``evaluate``'s result on rank 0 and None on the other ranks."""
    started = time.time()
    cfg = C.make_config(cfg or {})
    rank, n, group, own = _init(cfg)
    try:
        S = E.setup(cfg)
        # no .tmp sweep here (a store sweeps only in the process holding the run lock): rank 0's closing
        # ``evaluate`` sweeps, holding it; rank 0 takes the lock in ``begin_invocation``, before the barrier
        store, prep = BatchStore(S.run_dir), PrepStore(S.run_dir)
        # rank 0 records the invocation now, with the code that is about to compute (a run killed in the sharded
        # phase keeps it; a commit made while it runs is not mistaken for the code that computed)
        env, invocation = E.begin_invocation(S, started, n) if rank == 0 else (None, None)
        dist.barrier(group=group)
        done = E.compute(S, prep, store, rank=rank, world=n, sync=lambda: dist.barrier(group=group),
                         progress=rank == 0 and kw.get("progress", True) and not kw.get("quiet", False))
        gathered = [None] * n if rank == 0 else None
        dist.gather_object(done, gathered, dst=0, group=group)  # provenance only: the work is on disk
        res = None
        if rank == 0:
            shards = {f"{m}/{d}/{k}": r for r, part in enumerate(gathered) for m, d, k in part}
            res = E.evaluate(cfg, _provenance={"started": started, "world_size": n, "batches_computed": len(shards),
                                               "env": env, "invocation": invocation}, **kw)
            from g2face_eval.harness.records import atomic_write_json

            # which rank computed which batch in this invocation (provenance; resumed batches are absent)
            atomic_write_json(Path(res["run_dir"]) / "shards.json", {"world_size": n, "batches": shards})
        dist.barrier(group=group)
        return res
    finally:
        if own and dist.is_initialized():
            dist.destroy_process_group()
