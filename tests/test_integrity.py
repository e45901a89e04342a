"""Integrity and isolation: sha256 mismatches are refused naming the file and both digests; pickled code never
runs on any checkpoint-loading path; ``evaluate`` completes with the network blocked."""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import pickle
import socket
from pathlib import Path

import pytest
import torch

from g2face_eval import zoo

PKG = Path(zoo.__file__).resolve().parent


class _Evil:
    """Unpickling this object creates ``marker`` (stand-in for arbitrary code execution)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(str(self.marker)),))


def _evil_checkpoint(path: Path, marker: Path, extra: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"w": torch.zeros(2), "payload": _Evil(marker), **(extra or {})}, path)
    # sanity: the file really runs code under a plain (unsafe) unpickle
    torch.load(path, weights_only=False)
    assert marker.exists(), "the malicious fixture does not work"
    marker.unlink()
    return path


def test_wrong_sha256_names_file_and_both_digests(tmp_path, monkeypatch):
    monkeypatch.setenv("G2FACE_WEIGHTS_DIR", str(tmp_path / "w"))
    spec = zoo.WEIGHTS.get("g2face_official")
    f = tmp_path / "w" / spec.filename
    f.parent.mkdir()
    f.write_bytes(b"not the released weights")
    actual = zoo.sha256_file(f)
    monkeypatch.setitem(zoo.WEIGHTS._items, spec.name, dataclasses.replace(spec, sha256="cd" * 32))
    with pytest.raises(zoo.WeightIntegrityError) as e:
        zoo.path("g2face_official")
    msg = str(e.value)
    assert str(f) in msg or spec.filename in msg
    assert "cd" * 32 in msg and actual in msg
    with pytest.raises(zoo.WeightIntegrityError):
        zoo.load("g2face_official")  # the loader is never reached


def _zoo_load(p: Path, monkeypatch):
    monkeypatch.setenv("G2FACE_WEIGHTS_DIR", str(p.parent))
    spec = zoo.WEIGHTS.get("g2face_official")
    target = p.parent / spec.filename
    p.rename(target)
    # digest matches: only the unpickling safety stands between the file and code execution
    monkeypatch.setitem(
        zoo.WEIGHTS._items, spec.name, dataclasses.replace(spec, sha256=zoo.sha256_file(target))
    )
    zoo.load("g2face_official")


def _official_loader(p: Path, monkeypatch):
    from g2face_eval.models.official import load_g2face

    load_g2face(p)


def _generator_init(p: Path, monkeypatch):
    from g2face_eval.training.loop import load_generator_state

    load_generator_state(str(p))


def _training_resume(p: Path, monkeypatch):
    from g2face_eval.training.loop import TrainConfig, Trainer

    cfg = TrainConfig(
        size=32,
        tiny_width=8,
        batch=2,
        steps=1,
        warmup_epochs=0,
        identity="sface",
        geometry="none",
        perceptual="none",
        mlflow=False,
        ckpt_every=0,
        device="cpu",
    )
    tr = Trainer(cfg, images=torch.rand(4, 3, 32, 32) * 2 - 1, log=lambda *_: None)
    ck = tr.save(p.parent / "ck")
    p.replace(ck / "train_state.pt")  # a tampered resume state next to valid safetensors weights
    tr.load(ck)


LOADERS = {
    "zoo_torch_load": lambda p, mp: zoo.torch_load(p),
    "zoo_state_dict_file": lambda p, mp: zoo.load_state_dict_file(p),
    "zoo_load_verified_weight": _zoo_load,
    "official_g2face_loader": _official_loader,
    "training_init_generator": _generator_init,
    "training_resume_state": _training_resume,
}


@pytest.mark.parametrize("path", list(LOADERS))
def test_malicious_pickle_refused(path, tmp_path, monkeypatch):
    marker = tmp_path / "PWNED"
    p = _evil_checkpoint(tmp_path / "x" / "evil.pt", marker)
    with pytest.raises(pickle.UnpicklingError):
        LOADERS[path](p, monkeypatch)
    assert not marker.exists(), f"{path}: pickled code ran"


def test_every_torch_load_is_weights_only():
    """Static guard for loading paths not exercised above (metrics backbones, geometry prior, bench):
    every torch.load in the package passes weights_only=True; no pickle.load / allow_pickle=True."""
    bad = []
    for f in PKG.rglob("*.py"):
        tree = ast.parse(f.read_text(), str(f))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            owner = getattr(fn.value, "id", "") if isinstance(fn, ast.Attribute) else ""
            kw = {k.arg: k.value for k in node.keywords}
            if name == "load" and owner == "torch":
                v = kw.get("weights_only")
                if not (isinstance(v, ast.Constant) and v.value is True):
                    bad.append(f"{f.relative_to(PKG)}:{node.lineno} torch.load without weights_only=True")
            if name in ("load", "loads") and owner in ("pickle", "cloudpickle", "dill"):
                bad.append(f"{f.relative_to(PKG)}:{node.lineno} {owner}.{name}")
            v = kw.get("allow_pickle")
            if isinstance(v, ast.Constant) and v.value is True:
                bad.append(f"{f.relative_to(PKG)}:{node.lineno} allow_pickle=True")
    assert not bad, bad


def test_evaluate_offline(tmp_path, monkeypatch):
    """evaluate (embedded default dataset, two methods, small limit) with every socket connection refused."""
    attempts = []

    def refuse(*a, **k):
        attempts.append(a[1:] if a else k)
        raise OSError("network access blocked by test_evaluate_offline")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from g2face_eval.harness import evaluate as E

    torch.set_num_threads(1)
    res = E.evaluate(
        {
            "methods": ["pixelate_8", "blur_s4"],
            "limit": 2,
            "recognizers": ["sface"],
            "detectors": ["yunet"],
            "results_dir": str(tmp_path / "results"),
            "cache_dir": str(tmp_path / "cache"),
            "reports_dir": str(tmp_path / "reports"),
            "bootstrap_samples": 20,
            "latency_repeats": 1,
            "samples_per_grid": 1,
        },
        progress=False,
        quiet=True,
    )
    assert (res["records"].status == "ok").all() and len(res["records"]) == 4
    assert (res["run_dir"] / "aggregate.parquet").is_file()
    assert not attempts, attempts
