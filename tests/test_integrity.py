"""Integrity and isolation: sha256 mismatches are refused naming the file and both digests; pickled code never
runs on any checkpoint-loading path; ``evaluate`` completes with the network blocked."""

from __future__ import annotations

import ast
import dataclasses
import os
import pathlib
import pickle
import re
import shutil
import socket
import subprocess
import sys
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


# --------------------------------------------------------------------------------------------------------------
# MediaPipe face mesh: the tflite files mediapipe loads itself are verified before its graph is built
# --------------------------------------------------------------------------------------------------------------
MESH_TFLITE = ("mediapipe_face_detection_short_range", "mediapipe_face_mesh")  # what the legacy graph opens


@pytest.fixture
def mp_events(monkeypatch, tmp_path):
    """Records zoo.path calls ("verify:<name>") and builds of mediapipe's FaceMesh graph ("build"), in order."""
    from mediapipe.python.solutions import face_mesh as mp_face_mesh

    monkeypatch.setenv("G2FACE_CACHE_DIR", str(tmp_path / "cache"))
    events: list[str] = []
    real_path, real_build = zoo.path, mp_face_mesh.FaceMesh

    def spy_path(name):
        events.append(f"verify:{name}")
        return real_path(name)

    def spy_build(*a, **k):
        events.append("build")
        return real_build(*a, **k)

    monkeypatch.setattr(zoo, "path", spy_path)
    monkeypatch.setattr(mp_face_mesh, "FaceMesh", spy_build)
    return events


def _copy_mesh_files(root: Path, tamper: str | None) -> None:
    """Copies of the mesh tflite files under ``root`` at their package-relative paths; ``tamper``: flip a byte."""
    for name in MESH_TFLITE:
        spec = zoo.WEIGHTS.get(name)
        data = bytearray(zoo.location(name).read_bytes())
        if name == tamper:
            data[len(data) // 2] ^= 0xFF
        dst = root / spec.relpath
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(bytes(data))


def test_face_mesh_verifies_every_tflite_before_building(mp_events):
    from g2face_eval.oracles.geometry import FaceMesh

    FaceMesh(detector=None)
    assert "build" in mp_events
    verified_before = {e.split(":", 1)[1] for e in mp_events[: mp_events.index("build")] if e.startswith("verify:")}
    assert set(MESH_TFLITE) <= verified_before, mp_events


@pytest.mark.parametrize("tamper", [*MESH_TFLITE, None])
def test_face_mesh_refuses_tampered_package_tflite(tamper, mp_events, tmp_path, monkeypatch):
    """The zoo pointed at a fake mediapipe package folder holding copies of the files, one of them modified."""
    from g2face_eval.oracles.geometry import FaceMesh

    fake = tmp_path / "site" / "mediapipe"
    _copy_mesh_files(fake, tamper)
    real_dir = zoo.package_dir
    monkeypatch.setattr(zoo, "package_dir", lambda pkg: fake if pkg == "mediapipe" else real_dir(pkg))
    if tamper is None:  # intact copies pass
        FaceMesh(detector=None)
        assert mp_events[-1] == "build"
        return
    spec = zoo.WEIGHTS.get(tamper)
    with pytest.raises(zoo.WeightIntegrityError) as e:
        FaceMesh(detector=None)
    assert e.value.name == tamper and e.value.path == fake / spec.relpath and e.value.expected == spec.sha256
    assert "build" not in mp_events  # refused before mediapipe opened anything


@pytest.mark.parametrize("where", ["mediapipe", "bazel-bin/mediapipe"])
@pytest.mark.parametrize("tampered", [True, False])
def test_face_mesh_refuses_tampered_shadowing_tflite(where, tampered, mp_events, tmp_path, monkeypatch):
    """mediapipe tries ./mediapipe/modules/... and ./bazel-bin/mediapipe/modules/... before the installed package,
    so a copy there is what it loads: a modified one is refused, an identical one accepted."""
    from g2face_eval.oracles.geometry import FaceMesh

    monkeypatch.chdir(tmp_path)
    _copy_mesh_files(tmp_path / where, "mediapipe_face_detection_short_range" if tampered else None)
    if not tampered:
        FaceMesh(detector=None)
        assert mp_events[-1] == "build"
        return
    with pytest.raises(zoo.WeightIntegrityError) as e:
        FaceMesh(detector=None)
    assert e.value.path == tmp_path / where / "modules/face_detection/face_detection_short_range.tflite"
    assert "build" not in mp_events


def test_face_mesh_tflite_list_matches_what_mediapipe_opens(tmp_path):
    """Under strace: the .tflite files FaceMesh's graph really opens are exactly the verified zoo entries."""
    if shutil.which("strace") is None:
        pytest.skip("strace not installed")
    code = "from g2face_eval.oracles.geometry import FaceMesh; FaceMesh(detector=None)"
    log = tmp_path / "trace"
    env = {**os.environ, "PYTHONPATH": str(PKG.parent), "G2FACE_CACHE_DIR": str(tmp_path / "cache")}
    cmd = ["strace", "-f", "-ff", "-e", "trace=open,openat", "-o", str(log), sys.executable, "-c", code]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0 and "ptrace" in r.stderr.lower():
        pytest.skip(f"strace cannot trace here: {r.stderr.strip()[-200:]}")
    assert r.returncode == 0, r.stderr[-2000:]
    opened = set()
    for f in tmp_path.glob("trace.*"):  # one file per thread: no "<unfinished ...>" splits
        for m in re.finditer(r'open(?:at)?\(.*?"([^"]+\.tflite)".*\) = \d+', f.read_text()):
            opened.add(Path(m.group(1)).resolve())
    assert opened == {zoo.location(n).resolve() for n in MESH_TFLITE}


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
    if getattr(_training_resume, "rewrite_digests", True):
        # an attacker who also rewrites the digests (train_state's in the weights' metadata, the weights' record):
        # the sha256 layer passes, weights_only=True must still refuse the pickle
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        m = ck / "model.safetensors"
        with safe_open(str(m), "pt") as f:
            meta = dict(f.metadata())
        meta["train_state_sha256"] = zoo.sha256_file(ck / "train_state.pt")
        save_file(load_file(str(m)), str(m), metadata=meta)
        zoo.write_record(m)
    tr.load(ck)


def test_swapped_training_state_is_refused_by_its_digest(tmp_path, monkeypatch):
    """A resume state swapped without the digest recorded in the weights' metadata is refused before it is
    unpickled at all."""
    marker = tmp_path / "PWNED"
    p = _evil_checkpoint(tmp_path / "x" / "evil.pt", marker)
    monkeypatch.setattr(_training_resume, "rewrite_digests", False, raising=False)
    with pytest.raises(zoo.WeightIntegrityError, match="train_state.pt"):
        _training_resume(p, monkeypatch)
    assert not marker.exists()


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
