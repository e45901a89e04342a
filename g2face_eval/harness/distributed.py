"""``evaluate`` on several processes: ``torchrun --nproc_per_node N -m g2face_eval evaluate ...``.

torch.distributed (env:// rendezvous from torchrun; nccl when the config's device is CUDA, gloo on CPU; the
record exchange always uses a gloo group since records are host objects).

1. Every rank builds the same setup as ``evaluate`` (config, oracles, methods, dataset sources: ids only).
2. The work is sharded by chunk: chunk ``i`` of a dataset belongs to rank ``i % world``. Each rank prepares
   its own chunks only (loading, face detection, the originals' embeddings, meshes and realism features) and
   runs every method on them (``evaluate.compute`` without saving). The ``celeba_id`` gallery is prepared once
   per rank (it is needed whole by every rank for identification; a few hundred images).
3. Prepared-chunk entries and per-image records/feature vectors are gathered to rank 0 (``gather_object``),
   which persists them in the run's stores.
4. Rank 0 then runs the ordinary ``evaluate``: every chunk and batch is found done, so aggregates, Fréchet
   statistics, bootstrap CIs, files and MLflow runs are produced by the same code as a single-process run --
   every metric equals the single-process result.

Batches already in the store (an interrupted run being resumed) are skipped on every rank.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from g2face_eval.harness import config as C
from g2face_eval.harness import evaluate as E
from g2face_eval.harness.prepare import PrepStore
from g2face_eval.harness.records import BatchStore


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
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=n)
    group = dist.new_group(backend="gloo") if use_cuda else None
    return rank, n, group, own


def evaluate_distributed(cfg: dict | None = None, **kw) -> dict | None:
    """Run on every rank; returns ``evaluate``'s result on rank 0 and None on the other ranks."""
    cfg = C.make_config(cfg or {})
    rank, n, group, own = _init(cfg)
    try:
        S = E.setup(cfg)
        store, prep = BatchStore(S.run_dir), PrepStore(S.run_dir)  # read-only on ranks > 0
        work = E.compute(S, prep, store, rank=rank, world=n, save=False, progress=False)
        gathered = [None] * n if rank == 0 else None
        dist.gather_object(work, gathered, dst=0, group=group)
        res = None
        if rank == 0:
            shards = {}
            for r, part in enumerate(gathered):
                for dname, entries in part["gallery"].items():
                    for key, df, arrays in entries:
                        if not prep.done(dname, key):
                            prep.save(dname, key, df, arrays)
                for dname, key, df, arrays in part["prep"]:
                    if not prep.done(dname, key):
                        prep.save(dname, key, df, arrays)
                for mname, dname, bkey, df, feats in part["batches"]:
                    shards[f"{mname}/{dname}/{bkey}"] = r
                    if not store.done(mname, dname, bkey):
                        store.save(mname, dname, bkey, df, feats)
            res = E.evaluate(cfg, **kw)
            from g2face_eval.harness.records import atomic_write_json

            # which rank computed which batch in this invocation (provenance; resumed batches are absent)
            atomic_write_json(Path(res["run_dir"]) / "shards.json", {"world_size": n, "batches": shards})
        dist.barrier(group=group)
        return res
    finally:
        if own and dist.is_initialized():
            dist.destroy_process_group()
