"""``evaluate`` on several processes: ``torchrun --nproc_per_node N -m g2face_eval evaluate ...``.

torch.distributed (env:// rendezvous from torchrun; nccl when the config's device is CUDA, gloo on CPU; the
record exchange always uses a gloo group since records are host objects).

1. Every rank prepares the datasets and oracles exactly as ``evaluate`` does (same prepared item list, so the
   same batches and batch keys as a single process).
2. The (method, dataset, batch) work is sharded: batch ``i`` of a (method, dataset) belongs to rank
   ``i % world``. Each rank runs ``_run_batch`` on its batches only -- anonymization, recovery and every
   per-image metric, plus the Fréchet feature vectors of its images.
3. Per-image records and feature vectors are gathered to rank 0 (``gather_object``), which persists them in
   the run's ``BatchStore``.
4. Rank 0 then runs the ordinary ``evaluate``: every batch is found done, so aggregates, Fréchet statistics
   (from the gathered per-image features), bootstrap CIs, files and MLflow runs are produced by the same code
   as a single-process run -- every metric equals the single-process result.

Batches already in the store (an interrupted run being resumed) are skipped on every rank. Limitation: the
dataset preparation (face detection, reference embeddings/features) is replicated on every rank, not sharded;
its embeddings and reference features are cached by content, so rank 0's final pass reuses them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from g2face_eval import settings
from g2face_eval.harness import config as C
from g2face_eval.harness import evaluate as E
from g2face_eval.harness.records import ArrayCache, BatchStore, ImageCache


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


def shard_batches(cfg: dict, rank: int, n: int) -> tuple[list, BatchStore]:
    """This rank's share of the (method, dataset, batch) work not already persisted: a list of
    ``(method, dataset, batch key, records DataFrame, feature arrays)``."""
    from g2face_eval import methods as M

    method_names = C.resolve_methods(cfg)
    for m in method_names:
        M.METHODS.get(m)
    cache_root = Path(cfg.get("cache_dir") or settings.cache_dir()).expanduser()
    icache, acache = ImageCache(cache_root / "outputs"), ArrayCache(cache_root / "arrays")
    oracles = E.Oracles(cfg, acache)
    cfg_resolved = {**cfg, "methods": method_names, "thresholds": dict(sorted(oracles.thresholds.items()))}
    name, chash = C.run_name(cfg_resolved), C.config_hash(cfg_resolved)
    store = BatchStore(Path(cfg["results_dir"]).expanduser() / name)
    device = str(cfg["device"])
    master = f"{cfg['key']}:{cfg['seed']}"
    preparer = E.Preparer(int(cfg["image_size"]))
    prepared = {d: E.prepare_dataset(d, cfg, preparer) for d in cfg["datasets"]}
    contexts = {d: E.DatasetContext(p, oracles) for d, p in prepared.items()}
    out = []
    for mname in method_names:
        method = E.build_method(mname, cfg, device)
        mhash = C.method_hash(method.config())
        runner = E.MethodRunner(mname, method, mhash, icache, acache, device)
        for dname, pdata in prepared.items():
            for i, batch in enumerate(E._batches(pdata.items, int(cfg["batch_size"]))):
                if i % n != rank:
                    continue
                ids = [it.id for it in batch]
                bkey = BatchStore.batch_key([chash, mhash, *ids])
                if store.done(mname, dname, bkey):
                    continue
                df, feats = E._run_batch(runner, method, batch, contexts[dname], oracles, master, dname)
                df.insert(1, "dataset", dname)
                df.insert(2, "method", mname)
                df.insert(3, "status", df.pop("status") if "status" in df else "ok")
                out.append((mname, dname, bkey, df, feats))
    return out, store


def evaluate_distributed(cfg: dict | None = None, **kw) -> dict | None:
    """Run on every rank; returns ``evaluate``'s result on rank 0 and None on the other ranks."""
    cfg = C.make_config(cfg or {})
    rank, n, group, own = _init(cfg)
    try:
        work, store = shard_batches(cfg, rank, n)
        gathered = [None] * n if rank == 0 else None
        dist.gather_object(work, gathered, dst=0, group=group)
        res = None
        if rank == 0:
            shards = {}
            for r, part in enumerate(gathered):
                for mname, dname, bkey, df, feats in part:
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
