"""models.frozen.FrozenOnCPU: a frozen TorchScript graph on CPU inference, the eager network otherwise."""

import torch
from torch import nn

from g2face_eval.models.frozen import FrozenOnCPU


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.PReLU(8), nn.Conv2d(8, 4, 3, stride=2)).eval()


def test_frozen_graph_on_cpu_inference_same_outputs_any_batch():
    net = _net()
    run = FrozenOnCPU(net)
    x = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        got = run(x[:2])  # traced on a batch of 2 ...
        assert isinstance(run.frozen, torch.jit.ScriptModule)
        got5 = run(x)  # ... and run at 5
        want = net(x)
    torch.testing.assert_close(got, want[:2], atol=1e-5, rtol=0)
    torch.testing.assert_close(got5, want, atol=1e-5, rtol=0)


def test_autograd_uses_the_eager_network():
    run = FrozenOnCPU(_net())
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    run(x).sum().backward()  # the frozen graph has no parameters to differentiate
    assert run.frozen is None and x.grad is not None


class _Untraceable(nn.Module):
    def forward(self, x):
        return {"n": int(x.shape[0]), "y": x * 2}  # a non-tensor output: torch.jit.trace refuses it


def test_untraceable_network_falls_back_to_eager_once():
    run = FrozenOnCPU(_Untraceable())
    x = torch.rand(3, 2)
    with torch.no_grad():
        first, second = run(x), run(x)
    assert run.frozen is None and run._failed
    assert first["n"] == second["n"] == 3 and torch.equal(second["y"], x * 2)
