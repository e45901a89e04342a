"""Frozen CPU inference graphs for the oracles' fixed networks.

``FrozenOnCPU(net)(x)`` runs ``net`` on ``x``; on CPU (and with autograd off) through a TorchScript trace of
``net``, frozen and optimised for inference (convolutions prepacked for oneDNN, elementwise ops kept in its
blocked layout). For the small-image networks of the evaluation it is faster on CPU than eager (SFace 20-49 ->
16-18 ms per image by ``scripts/oracle_costs.py``, EfficientNet-lite0 trunk ~1.15x ad hoc; docs/BENCH.md) and
gives the same outputs up to float round-off (tests: ~1e-6 on SFace embeddings, ~1e-5 on EfficientNet features).

The trace is taken on the first CPU call's batch; the networks it is used for are convolution chains whose
graph does not depend on the batch size (tested at other sizes). Anything TorchScript cannot take falls back to
the eager network, once and for good; GPU inputs and autograd always use the eager network.
"""

from __future__ import annotations

import threading
import warnings

import torch
from torch import nn


class FrozenOnCPU:
    def __init__(self, net: nn.Module) -> None:
        self.net = net.eval()
        self.frozen: torch.jit.ScriptModule | None = None
        self._failed = False
        self._lock = threading.Lock()

    def _graph(self, example: torch.Tensor) -> torch.jit.ScriptModule | None:
        with self._lock:
            if self.frozen is None and not self._failed:
                try:
                    with warnings.catch_warnings(), torch.no_grad():
                        warnings.simplefilter("ignore")  # TorchScript's deprecation notices
                        traced = torch.jit.trace(self.net, example, check_trace=False)
                        self.frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
                except Exception:  # noqa: BLE001 - an optimisation only: the eager network stays correct
                    self._failed = True
            return self.frozen

    def __call__(self, x: torch.Tensor):
        if x.device.type == "cpu" and not torch.is_grad_enabled():
            graph = self._graph(x)
            if graph is not None:
                return graph(x)
        return self.net(x)
