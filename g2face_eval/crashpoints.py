"""Test hook for crash-safety tests: ``G2FACE_CRASH_AT="<point>:<n>"`` makes the process SIGKILL itself the
n-th time (1-based) it reaches ``hit("<point>")`` -- the same effect as ``kill -9`` from outside, but at a
reproducible place. Unset (the normal case) it costs one dictionary lookup.

Points: ``batch_npz`` (evaluation: a batch's features written, its records not yet), ``batch_saved`` (a batch
fully persisted), ``prep_npz`` / ``prep_saved`` (evaluation: the same two steps for a chunk's prepared reference
data, ``harness.prepare.PrepStore``), ``train_step`` (training: after an optimiser step, before any checkpoint of
it), ``ckpt_swap`` (training: old checkpoint moved aside, new one not yet renamed into place). The ``<prefix>_npz``
/ ``<prefix>_saved`` pairs come from ``harness.records.RecordStore.save`` (``crash_prefix`` of each store).
"""

from __future__ import annotations

import os
import signal

ENV = "G2FACE_CRASH_AT"
_counts: dict[str, int] = {}


def hit(point: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, n = spec.rpartition(":")
    if name != point:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] == int(n):
        os.kill(os.getpid(), signal.SIGKILL)
