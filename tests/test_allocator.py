"""glibc malloc tuning of the CLI (g2face_eval/allocator.py): large short-lived tensors stop faulting pages in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

PROBE = """
import json, resource, torch
from g2face_eval import allocator
state = allocator.tune_malloc()
torch.set_num_threads(1)
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(30):  # two live 77 MB tensors per step, as consecutive conv activations of EfficientNet-lite0
    x = torch.empty(16, 96, 112, 112); x.fill_(1.0); y = x * 2; del x, y
print(json.dumps({"state": state, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0}))
"""


def _probe(tuning: str) -> dict:
    env = {**os.environ, "G2FACE_MALLOC_TUNING": tuning, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tuning_stops_page_faults_of_large_tensors():
    tuned, default = _probe("1"), _probe("0")
    assert tuned["state"]["malloc_tuning"] is True and tuned["state"]["mmap_threshold"] == 1 << 30
    assert default["state"] == {"malloc_tuning": False}
    pages = 16 * 96 * 112 * 112 * 4 // 4096  # 18,816 per tensor
    assert default["faults"] > 30 * pages  # every block is a fresh mmap: its pages fault in again at every step
    assert tuned["faults"] < default["faults"] / 4  # blocks are reused from the heap (measured: ~1.13 M vs ~0.13 M)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_cli_applies_it_and_the_environment_records_it(monkeypatch, capsys):
    from g2face_eval import allocator, cli
    from g2face_eval.harness import tracking

    monkeypatch.delenv("G2FACE_MALLOC_TUNING", raising=False)
    assert cli.main(["weights", "list"]) == 0
    capsys.readouterr()
    assert allocator.applied()["malloc_tuning"] is True
    assert tracking.environment_info()["allocator"] == allocator.applied()
