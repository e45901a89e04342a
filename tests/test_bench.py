"""g2face-eval bench: fast-path fidelity, host-sync freedom, FLOP count vs the official reference, CLI output.

CPU only (all in a few minutes on 2 shared cores). The GPU sweep is scripts/gpu_bench.sh (see docs/BENCH.md).
"""

from __future__ import annotations

import contextlib
import json
import math
import types
import weakref

import numpy as np
import pytest
import torch

from g2face_eval import bench
from g2face_eval.models.g2face import G2FaceConfig


@pytest.fixture(scope="module")
def tiny_pipe():
    return bench.build_pipeline("tiny", "cpu", seed=0)


def _inputs(p, b=2, seed=3):
    x = torch.rand(b, 3, p.cfg.size, p.cfg.size, generator=torch.Generator().manual_seed(seed))
    return x, [f"key-{i}".encode() for i in range(b)]


# ------------------------------------------------------------------------------------------- fidelity
@pytest.fixture(scope="module")
def reference_and_fast(tiny_pipe):
    """The fp32 reference path (``G2FaceAnonymizer(fast=False)``, official payload, keyed noise, on its own copy
    of the networks) and the bench fast path (``fast.anonymize_tensors``) on the same weights and keys."""
    from g2face_eval.anonymizer import key_seed

    p = tiny_pipe
    ref = p.ref
    assert not ref.fast and p.fast.fast and ref.model is not p.fast.model
    x, keys = _inputs(p)
    seeds = torch.tensor([key_seed(k) for k in keys], dtype=torch.int64)
    with torch.no_grad():
        r_anon = ref.anonymize(x, keys)
        r_rec = ref.recover(r_anon.images, keys)
        f_img, f_bits = p.anonymize(x, seeds)
        f_rec_img, f_rec_bits = p.recover(f_img, seeds)
    return dict(ref_anon=r_anon, ref_rec=r_rec, fast=(f_img, f_bits), fast_rec=(f_rec_img, f_rec_bits), x=x,
                seeds=seeds)


def test_fast_path_matches_reference_path(reference_and_fast):
    d = reference_and_fast
    f_img, f_bits = d["fast"]
    assert torch.equal(f_bits, d["ref_anon"].bits), "hidden payload bits differ from the reference path"
    psnr = bench.psnr_db(f_img, d["ref_anon"].images).min().item()
    assert psnr >= 40.0, f"anonymized image PSNR fast vs reference {psnr:.1f} dB < 40"
    # recovered payload bits (hard extractor decisions) identical
    assert torch.equal(d["fast_rec"][1], d["ref_rec"].bits)
    psnr_r = bench.psnr_db(d["fast_rec"][0], d["ref_rec"].images).min().item()
    assert psnr_r >= 40.0, f"recovered image PSNR fast vs reference {psnr_r:.1f} dB < 40"


def test_fast_bit2float_equals_official_decoder(tiny_pipe):
    from g2face_eval.models.payload import OfficialPayload

    g = torch.Generator().manual_seed(0)
    bits = torch.randint(0, 2, (4, tiny_pipe.cfg.id_dim, 32), generator=g).float()
    bits[0, :4, 1:9] = 0  # E == 0 (official: 2^-127 (1+m), not IEEE denormals)
    bits[1, :4, 1:9] = 1  # E == 255 -> inf -> 0
    ref = OfficialPayload(tiny_pipe.cfg.id_dim).decode(bits.reshape(4, -1), is_bits=True).embeddings
    ours = tiny_pipe.bit2float(bits)
    assert torch.equal(ours, ref)


def test_channels_last_fp32_keeps_bits_and_psnr(tiny_pipe):
    res = bench.fidelity(tiny_pipe, torch.device("cpu"), ["fp32_cl"])
    r = res["fp32_cl"]
    assert r["hidden_bits_identical"] and r["recovered_bits_identical"], r
    assert r["psnr_db_vs_fp32"] >= 40.0, r


def test_bf16_autocast_fidelity_is_measured(tiny_pipe):
    """bf16 autocast is NOT required to be bit-exact (see docs/BENCH.md): the generator's output moves by
    ~40-45 dB and a few recovered bits flip. The priors and payload stay fp32, so the hidden bits are
    exact."""
    r = bench.fidelity(tiny_pipe, torch.device("cpu"), ["bf16"])["bf16"]
    print("bf16 vs fp32 (tiny, CPU):", r)
    assert r["hidden_bits_identical"]
    assert math.isfinite(r["psnr_db_vs_fp32"]) and r["psnr_db_vs_fp32"] > 25.0
    assert r["recovered_bit_agreement"] > 0.95


# ------------------------------------------------------------------------------------------- host sync
@pytest.mark.parametrize("config", ["tiny", "official"])
def test_fast_path_has_no_host_sync(config):
    """On the meta device every CPU tensor that meets the computation is a host->device copy, every
    .item()/.tolist() a host read; torch.tensor(python data) and syncing aten ops are flagged by name."""
    ev = bench.sync_check(config, "meta", batch=2)
    assert ev == {"anonymize": [], "recover": []}, ev


@pytest.mark.parametrize("amp,cl", [(None, False), (torch.bfloat16, True)])
def test_compiled_paths_trace_as_one_graph(tiny_pipe, amp, cl):
    """torch.compile sees each device path as one graph, apart from the one intended break: the identity prior,
    which stays eager so the hidden bits are exact. Any other break (e.g. the FIR layers' host-built matrices,
    which broke the graph at every Blur / Upsample and made dynamo recompile StyledConv per resolution until its
    recompile limit left the rest eager) would split it. Traced by dynamo with the eager backend (no inductor
    build), for the bench's tensor API and the Anonymizer's compiled segments."""
    from g2face_eval.models import stylegan2 as sg

    p = tiny_pipe
    assert sg.FIR_UNDER_COMPILE == "stencil"
    x, _ = _inputs(p)
    s = torch.arange(2, dtype=torch.int64)
    p.amp_dtype, p.channels_last = amp, cl
    bench.set_memory_format(p.model, torch.channels_last if cl else torch.contiguous_format)
    try:
        with torch.no_grad():
            y = p.anonymize(x, s)[0]
            ex = torch._dynamo.explain(p.anonymize)(x, s)
            reasons = [str(b.reason) for b in ex.break_reasons]
            # the call is nested (anonymize_tensors -> _seg_priors -> _identity), so dynamo reports that one break
            # once per enclosing frame
            assert ex.graph_break_count == 2 and ex.graph_count == 3, reasons
            assert all("G2FaceAnonymizer._identity" in r and "torch.compiler.disable" in r for r in reasons), reasons
            ex = torch._dynamo.explain(p.recover)(y, s)
            assert (ex.graph_count, ex.graph_break_count) == (1, 0), [str(b.reason)[:300] for b in ex.break_reasons]
            f = p.fast
            xm = x * 2 - 1
            coeffs, ident = f._seg_priors(xm)
            bits = f.payload.encode(ident, fast=True)
            for fn, args in ((f._seg_anon, (xm, coeffs, bits, s)), (f._seg_extract, (y * 2 - 1,))):
                ex = torch._dynamo.explain(fn)(*args)
                assert (ex.graph_count, ex.graph_break_count) == (1, 0), [str(b.reason)[:300]
                                                                          for b in ex.break_reasons]
    finally:
        p.amp_dtype, p.channels_last = None, False
        bench.set_memory_format(p.model, torch.contiguous_format)
        torch._dynamo.reset()


def test_sync_detector_catches_known_patterns():
    x = torch.ones(4, device="meta")
    cpu_const = torch.arange(4.0)
    det = bench.HostSyncDetector("meta")
    with det:
        y = x * cpu_const.to(x.device)                     # module-level CPU constant moved per call
        y = y * torch.tensor(2.0, device=x.device)         # python scalar -> device tensor
        y.sum().item()                                     # host read (raises on meta; recorded)
    ev = " | ".join(det.events)
    assert "device transfer" in ev and "torch.tensor(python data" in ev and "_local_scalar_dense" in ev, ev
    det = bench.HostSyncDetector("cpu")
    with det:
        torch.ones(3).sum().item()
        torch.ones(3).nonzero()                            # data-dependent shape (syncs on CUDA)
        torch.ones(3).cpu().tolist()
    ev = " | ".join(det.events)
    assert "_local_scalar_dense" in ev and "aten::nonzero" in ev, ev


# ------------------------------------------------------------------------------------------- FLOPs
def test_official_flops_match_reference():
    """Official reference (FlopCounterMode, native ops = upfirdn2d counted as conv): anonymize 290.29,
    recover 298.69 GFLOP per image; generator breakdown pyramid 156.78 / modconvs 90.57 / fusion 19.31. Our
    official form counts the same; the fast path as it runs does exactly the two folded 1x1 convolutions less
    (fusion masks at 128 px over 256 injection channels into 256, at 64 px over 512 into 512) and the
    injections' own 1x1 convolutions there, plus its lookup tables' small matrix products."""
    f = bench.pipeline_flops("official")
    assert f["anonymize_gflop_per_image_official_form"] == pytest.approx(290.29, rel=0.002)
    assert f["recover_gflop_per_image_official_form"] == pytest.approx(298.69, rel=0.002)
    folded = (2 * 256 * 256 * 128 ** 2 + 2 * 512 * 512 * 64 ** 2) / 1e9                 # 4.295 GFLOP
    injections = 2 * (2 * 1 * 256 * 128 ** 2 + 2 * 4 * 512 * 64 ** 2) / 1e9            # two per level
    # the tables, once per call: patterns x injection weights (two per level), then x the mask conv's weights
    tables = (2 * 2 * (2 * 1 * 256) + 2 * 2 * 256 * 256 + 2 * 2 * (16 * 4 * 512) + 2 * 16 * 512 * 512) / 1e9
    for op in ("anonymize", "recover"):
        assert f[f"{op}_gflop_per_image"] == pytest.approx(
            f[f"{op}_gflop_per_image_official_form"] - folded - injections + tables, abs=1e-6)
    br = f["anonymize_breakdown_gflop"]
    assert br["pyramid_encoder"] == pytest.approx(156.78, rel=0.002)
    assert br["fusion_masks"] == pytest.approx(19.31 - folded, rel=0.002)
    assert br["generator"] == pytest.approx(266.98 - folded - injections + tables, rel=0.002)
    assert br["identity_prior"] == pytest.approx(12.62, rel=0.02)
    assert br["geometry_prior"] == pytest.approx(10.68, rel=0.02)


def test_configs_resolve():
    assert bench.config_by_name("official")[0] == G2FaceConfig()
    cfg, note = bench.config_by_name("shipped")
    assert cfg.size >= 64 and note
    with pytest.raises(ValueError):
        bench.config_by_name("nope")
    assert bench.parse_variant("bf16_cl_graph") == {"amp": torch.bfloat16, "cl": True, "compile": False,
                                                    "graph": True}
    with pytest.raises(ValueError):
        bench.parse_variant("int8")


# ------------------------------------------------------------------------------------------- CLI
def test_cli_minimal_sweep_writes_valid_json(tmp_path):
    from g2face_eval.oracles import recognizers as R

    out = tmp_path / "bench"
    rc = bench.cli(["--device", "cpu", "--configs", "tiny", "--batches", "1", "--variants", "fp32",
                    "--repeats", "3", "--warmup", "0", "--methods", "identity,pixelate_16",
                    "--out", str(out), "--results-dir", str(tmp_path), "--no-checks"])
    assert rc == 0
    doc = json.loads((out / "bench.json").read_text())
    assert doc["schema"] == bench.SCHEMA and doc["status"] == "complete"
    for k in ("device", "settings", "configs", "flops", "matmul_rate", "results", "reference", "metric_suite"):
        assert k in doc, k
    assert doc["matmul_rate"]["tflops"] > 0
    rows = doc["results"]
    assert rows and all(set(bench.ROW_FIELDS) <= set(r) for r in rows)
    ok = [r for r in rows if r["status"] == "ok"]
    suites = {r["suite"] for r in ok}
    assert {"g2face", "baseline", "metric"} <= suites, rows
    for r in ok:
        t = r["times_ms"]
        assert len(t) == 3 and r["median_ms"] == pytest.approx(float(np.median(t)), abs=1e-3)
        assert r["p90_ms"] == pytest.approx(float(np.percentile(t, 90)), abs=1e-3)
        assert r["images_per_second"] == pytest.approx(r["batch"] / (r["median_ms"] / 1e3))
        # the cell's own peak: an increase over the level before its timed calls, not the process's RSS
        assert r["memory_kind"] in ("rss_peak_increase", "unavailable"), r
        if r["memory_kind"] == "rss_peak_increase":
            assert 0 <= r["peak_memory_mb"] < r["memory_baseline_mb"], r
    g = [r for r in ok if r["suite"] == "g2face"]
    assert {r["op"] for r in g} == {"anonymize", "recover"}
    assert {r["name"] for r in g} == {"g2face", "g2face_reference"}  # fast path and fp32 reference path
    assert all(r["gflop_per_image"] > 0 and r["floor_ms"] > 0 and r["ratio_to_floor"] > 0 for r in g)
    # a ratio below 1 is flagged, never reported as if the floor held
    assert all((r["floor_note"] or "").startswith("INVALID") == (r["ratio_to_floor"] < 1) for r in g)
    # the metric suite times the harness's own oracles (whatever of them is installed), FLOPs counted on real inputs
    m = {r["name"]: r for r in ok if r["suite"] == "metric"}
    assert {"psnr", "ssim"} <= set(m) and "embed_arcface_r50_112" not in m, sorted(m)
    for rec in R.available_recognizers():
        if rec in R.DEFAULT_RECOGNIZERS:
            r = m[f"embed_{rec}"]
            assert r["gflop_per_image"] > 0.1 and r["flop_error"] is None and r["runs_on"] == "cpu", r
    assert all(r["flop_error"] is None for r in m.values())
    assert all(r["gflop_per_image"] or "no FLOPs counted" in r["floor_note"] for r in m.values())
    assert set(doc["metric_suite"]["oracles"]) == set(m)
    # an oracle the harness would run but cannot here (a user file missing) is a skipped row with the reason,
    # never just absent: LPIPS and the FID features are timed or skipped
    skipped = {r["name"]: r for r in rows if r["suite"] == "metric" and r["status"] == "skipped"}
    assert set(skipped) == set(doc["metric_suite"]["skipped"])
    assert all(r["error"].startswith("unavailable: ") and r["runs_on"] is None for r in skipped.values())
    assert {"lpips_alex", "features_inception_fid", "features_effnet_lite0"} <= set(m) | set(skipped)
    assert not set(m) & set(skipped)
    assert (out / "bench_latency.png").stat().st_size > 1000
    assert (tmp_path / "mlflow.db").exists()
    # the MLflow copy of bench.json is the final document (figure and run recorded)
    logged = json.loads(next((tmp_path / "mlartifacts").rglob("bench.json")).read_text())
    assert logged["figure"] == doc["figure"] and logged["mlflow_uri"] == doc["mlflow_uri"] and doc["mlflow_uri"]


def test_cli_skips_gpu_only_variants_on_cpu(tmp_path):
    out = tmp_path / "b"
    bench.cli(["--device", "cpu", "--configs", "tiny", "--batches", "1", "--variants", "fp32_graph",
               "--suites", "g2face", "--ops", "anonymize", "--out", str(out), "--no-mlflow", "--no-plot",
               "--no-checks"])
    rows = json.loads((out / "bench.json").read_text())["results"]
    assert [r["status"] for r in rows] == ["skipped"]


def test_cli_ingest_of_a_gpu_json(tmp_path):
    """--ingest logs a bench JSON produced on the lent GPU (any file name; here the committed H200 compile
    cells) into its own run folder: the JSON (with the official reference numbers added when they were
    missing), the latency figure, an MLflow run with its metrics."""
    import sqlite3
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "docs/gpu_runs/h200_2026-11-26/bench_compile_b32.json"
    out = tmp_path / "ingested"
    assert bench.cli(["--ingest", str(src), "--out", str(out), "--results-dir", str(tmp_path)]) == 0
    got, orig = json.loads((out / "bench.json").read_text()), json.loads(src.read_text())
    assert got["results"] == orig["results"] and got["device"] == orig["device"]
    if bench.load_reference("NVIDIA H200"):      # the official H200 numbers, missing on the device machine
        assert orig.get("reference") is None and got["reference"]["anonymize_ms"]["32"] == 117.22
    assert (out / "bench_latency.png").stat().st_size > 1000
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        keys = {k for (k,) in db.execute("select key from metrics")}
    assert "g2face/g2face/official/anonymize/bf16_compile/b32/median_ms" in keys
    assert "matmul_tflops" in keys


def test_record_step_records_errors_and_goes_on():
    steps: dict = {}
    assert bench.record_step(steps, "ok", lambda: {"x": 1})["x"] == 1
    err = bench.record_step(steps, "bad", lambda: 1 / 0)
    assert err["error"].startswith("ZeroDivisionError") and "wall_s" in err
    assert set(steps) == {"ok", "bad"} and steps["ok"]["wall_s"] >= 0


def test_matmul_rate_other_precision_restores_tf32_flag():
    import torch

    from g2face_eval import bench

    before = torch.backends.cuda.matmul.allow_tf32
    r = bench.matmul_rate(torch.device("cpu"), seconds=0.05, dtype=torch.float32, tf32=not before)
    assert r["dtype"] == "float32" and r["tflops"] > 0 and r["reps"] >= 3  # TF32 exists only on CUDA
    assert torch.backends.cuda.matmul.allow_tf32 == before


# ------------------------------------------------------------------------------------------- audit fixes
FAKE_TIMING = {"median_ms": 10.0, "p90_ms": 12.0, "wall_median_ms": 10.5, "times_ms": [10.0, 12.0],
               "peak_memory_mb": 100.0, "memory_kind": "cuda_allocated_peak_increase", "memory_baseline_mb": 900.0,
               "peak_reserved_mb": 400.0}


def _bench(tmp_path, *argv) -> bench.Bench:
    return bench.Bench(bench.parse_args(["--device", "cpu", "--no-mlflow", *argv]), tmp_path)


def _cell(suite="g2face", name="g2face", batch=1):
    return bench.Cell(suite, name, "tiny", "anonymize", "fp32", batch)


def test_cpu_floor_rate_is_the_best_of_several_kernels():
    r = bench.matmul_rate(torch.device("cpu"), seconds=0.2)
    names = set(r["kernels"])
    assert sum(k.startswith("matmul_") for k in names) >= 2 and any(k.startswith("conv3x3") for k in names), r
    assert r["kernel"] in names and r["tflops"] == max(r["kernels"].values()) > 0


def test_ratio_below_one_is_flagged_as_an_invalid_floor(monkeypatch, tmp_path):
    b = _bench(tmp_path)
    b.doc["matmul_rate"] = {"tflops": 0.1, "kernel": "matmul_1024"}           # floor of 1 GFLOP = 10 ms
    monkeypatch.setattr(bench, "time_fn", lambda fn, dev, w, r: dict(FAKE_TIMING, median_ms=5.0))
    row = b.measure(_cell(), lambda: None, gflop_per_image=1.0)
    assert row["ratio_to_floor"] == pytest.approx(0.5) and row["floor_note"].startswith("INVALID floor"), row
    assert "matmul_1024" in row["floor_note"]
    monkeypatch.setattr(bench, "time_fn", lambda fn, dev, w, r: dict(FAKE_TIMING, median_ms=20.0))
    row = b.measure(_cell(), lambda: None, gflop_per_image=1.0)
    assert row["ratio_to_floor"] == pytest.approx(2.0) and row["floor_note"] is None


def test_rows_keep_reserved_peak_memory_note_and_baseline(monkeypatch, tmp_path):
    b = _bench(tmp_path)
    monkeypatch.setattr(bench, "time_fn", lambda fn, dev, w, r: dict(FAKE_TIMING))
    row = b.measure(_cell(), lambda: None)
    assert (row["peak_reserved_mb"], row["memory_baseline_mb"]) == (400.0, 900.0)
    note = dict(FAKE_TIMING, peak_memory_mb=float("nan"), memory_kind="unavailable", memory_note="clear_refs: EACCES")
    monkeypatch.setattr(bench, "time_fn", lambda fn, dev, w, r: dict(note))
    row = b.measure(_cell(), lambda: None, flop_error="FLOP count failed: X")
    assert row["memory_note"] == "clear_refs: EACCES" and row["flop_error"] == "FLOP count failed: X"
    saved = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert saved[0]["peak_reserved_mb"] == 400.0 and saved[1]["memory_note"] == "clear_refs: EACCES"


def test_time_fn_peak_memory_is_the_cells_own():
    """CPU: the increase during the timed calls (VmHWM reset, free heap handed back first), not the process's
    resident peak: a call that allocates nothing reads ~0 even after the process held much more."""
    cpu = torch.device("cpu")
    big = torch.ones(96 * 2 ** 18)  # 96 MiB touched, then freed: history the figure must not include
    del big
    idle = bench.time_fn(lambda: None, cpu, 1, 2)
    if idle["memory_kind"] == "unavailable":
        pytest.skip(f"resident-set peak cannot be reset here: {idle['memory_note']}")
    assert idle["memory_kind"] == "rss_peak_increase" and idle["peak_memory_mb"] < 16, idle
    assert idle["memory_baseline_mb"] > 50                                    # torch itself is resident
    busy = bench.time_fn(lambda: torch.ones(32 * 2 ** 18).add_(1), cpu, 1, 2)  # 32 MiB per call
    assert 30 <= busy["peak_memory_mb"] < 80, busy


def test_reference_copy_is_made_only_when_used():
    p = bench.build_pipeline("tiny", "meta")
    assert p._ref is None                                   # attach() builds the fast path only
    ref = p.ref
    assert ref is p.ref and not ref.fast and ref.model is not p.fast.model
    p.drop_reference()
    assert p._ref is None


def test_one_pipeline_resident_at_a_time(monkeypatch, tmp_path):
    class Stub:  # a stand-in pipeline (weak-referenceable)
        def __init__(self, name):
            self.note, self.cfg, self.identity, self.geometry = name, G2FaceConfig.tiny(), None, None

    refs, seen = [], []

    def build(config, device, seed=0):
        p = Stub(config)
        refs.append(weakref.ref(p))
        return p

    monkeypatch.setattr(bench, "build_pipeline", build)
    b = _bench(tmp_path, "--configs", "tiny,small")
    monkeypatch.setattr(b, "_g2face_config", lambda p, config, variants: seen.append(
        (config, [r() is not None for r in refs])))
    b.g2face(compiled=False)
    assert seen == [("tiny", [True]), ("small", [False, True])]
    assert b._pipes == {} and all(r() is None for r in refs)
    b.g2face(compiled=True)                                  # no compile variant: nothing built again
    assert len(refs) == 2


def test_baselines_run_on_the_bench_device(monkeypatch, tmp_path):
    from g2face_eval import methods

    class Fake:
        device = None

        def to(self, device):
            self.device = torch.device(device)
            return self

        def anonymize(self, x, keys, face_masks=None):
            return x

    fake = Fake()
    monkeypatch.setattr(methods, "build", lambda name: fake)
    monkeypatch.setattr(methods.METHODS, "names", lambda *a, **k: ["fake"])   # --methods names are checked
    b = _bench(tmp_path, "--methods", "fake", "--batches", "1", "--repeats", "1", "--warmup", "0")
    b.baselines()
    assert fake.device == b.device
    assert [r["status"] for r in b.doc["results"]] == ["ok"]


def test_cuda_index_becomes_the_current_device(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(torch.device(d)))
    monkeypatch.setattr(bench, "device_info", lambda d: {"type": d.type})
    bench.Bench(bench.parse_args(["--device", "cuda:1"]), tmp_path)
    assert calls == [torch.device("cuda:1")]
    bench.Bench(bench.parse_args(["--device", "cpu"]), tmp_path)
    assert calls == [torch.device("cuda:1")]                # CPU unaffected


def test_oracle_flops_are_counted_or_the_error_recorded():
    lin = torch.nn.Linear(8, 8)
    gf, err, note = bench.oracle_flops({"call": lambda b: (lambda: lin(torch.ones(b, 8)))})
    assert gf == pytest.approx(2 * 8 * 8 / 1e9) and err is None and note is None
    gf, err, note = bench.oracle_flops({"call": lambda b: (lambda: 1 / 0)})
    assert gf is None and err.startswith("FLOP count failed: ZeroDivisionError")
    gf, err, note = bench.oracle_flops({"call": lambda b: (lambda: torch.ones(3) + 1)})
    assert gf is None and err is None and "no FLOPs counted" in note


def test_frozen_graphs_are_counted_through_their_network():
    from g2face_eval.models.frozen import FrozenOnCPU

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).eval()
    f = FrozenOnCPU(net)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        f(x)                                                  # traced and frozen
    gf, err, _ = bench.oracle_flops({"call": lambda b: (lambda: f(x))})
    assert err is None and gf == pytest.approx(2 * 8 * 3 * 9 * 14 * 14 / 1e9)
    assert FrozenOnCPU.__call__ is not None and f.frozen is not None  # patch undone, graph kept


def test_prior_flops_attributed_through_the_called_method(monkeypatch):
    """A geometry prior entered through ``coefficients`` (a method, not ``__call__``: the shipped GeometryPrior)
    is attributed, and the parts add up to the whole."""
    from g2face_eval.models.geometry import GeometryPrior

    monkeypatch.setattr(bench, "LmmGeometry", GeometryPrior)
    f = bench.pipeline_flops("tiny")
    br = f["anonymize_breakdown_gflop"]
    assert br["geometry_prior"] > 0.1 and br["identity_prior"] > 1.0, br
    parts = sum(br[k] for k in ("identity_prior", "geometry_prior", "generator", "style_mlp", "map2id"))
    assert parts == pytest.approx(f["anonymize_gflop_per_image"], rel=1e-3)


def test_weight_count_includes_weight_buffers():
    class Ported(torch.nn.Module):  # ONNX-ported style: weights as buffers
        def __init__(self):
            super().__init__()
            self.register_buffer("w", torch.ones(10, 3))
            self.register_buffer("cache", torch.ones(100), persistent=False)
            self.register_buffer("index", torch.arange(5))
            self.bn = torch.nn.BatchNorm2d(4)

    assert bench.weight_count(Ported()) == 30 + 8          # w + BN affine; not its running stats / caches


def test_shipped_breakdown_and_identity_weights():
    if bench._shipped() is None:
        pytest.skip("no shipped G2Face checkpoint in the zoo")
    f = bench.pipeline_flops("shipped")
    assert f["anonymize_breakdown_gflop"]["geometry_prior"] > 0.1
    assert f["params_M"]["identity"] > 0.5                  # SFace keeps its weights as buffers


def test_parse_args_rejects_unknown_names(capsys):
    for argv in (["--ops", "recovr"], ["--suites", "g2face,baselin"], ["--configs", "nope"], ["--batches", "0"],
                 ["--compile-ops", "anonymise"], ["--variants", "int8"]):
        with pytest.raises(SystemExit) as e:
            bench.parse_args(["--device", "cpu", *argv])
        assert e.value.code == 2, argv
        assert argv[0] in capsys.readouterr().err
    a = bench.parse_args(["--device", "cpu", "--suites", "g2face,baseline,metric"])
    assert a.suites == ["g2face", "baselines", "metrics"]


def test_help_shows_the_cpu_gflop_default(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"CPU default {bench.DEFAULTS['cpu']['max_gflop_per_call']:g}," in text


def test_compile_filters_leave_rows_and_budget_skips_make_the_run_partial(tmp_path):
    out = tmp_path / "b"
    assert bench.cli(["--device", "cpu", "--configs", "tiny", "--batches", "1,8", "--variants", "fp32_compile",
                      "--suites", "g2face", "--cpu-compile", "--compile-batches", "1", "--time-budget", "1000",
                      "--compile-reserve", "2000", "--out", str(out), "--no-mlflow", "--no-plot",
                      "--no-checks"]) == 0
    doc = json.loads((out / "bench.json").read_text())
    got = {(r["op"], r["batch"]): (r["status"], r["error"]) for r in doc["results"]}
    assert set(got) == {("anonymize", 1), ("anonymize", 8), ("recover", 1), ("recover", 8)}
    assert all(s == "skipped" for s, _ in got.values())
    assert "--compile-reserve" in got["anonymize", 1][1]
    assert "batch 8 not in --compile-batches" in got["anonymize", 8][1]
    assert "op recover not in --compile-ops" in got["recover", 1][1]
    assert doc["status"] == "partial"                        # a cell was skipped for lack of budget


def test_ingest_honours_no_mlflow(tmp_path):
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "docs/gpu_runs/h200_2026-11-26/bench_compile_b32.json"
    out = tmp_path / "ingested"
    assert bench.cli(["--ingest", str(src), "--out", str(out), "--results-dir", str(tmp_path), "--no-mlflow",
                      "--no-plot"]) == 0
    assert (out / "bench.json").exists()
    assert not (tmp_path / "mlflow.db").exists() and not (out / "mlflow.json").exists()


def test_fidelity_falls_back_to_the_next_config(monkeypatch, tmp_path, tiny_pipe):
    def build(config, device, seed=0):
        if config == "tiny":
            raise ImportError("no module named 'somepackage'")
        return tiny_pipe

    monkeypatch.setattr(bench, "build_pipeline", build)
    monkeypatch.setattr(bench, "sync_check", lambda *a, **k: {"anonymize": [], "recover": []})
    monkeypatch.setattr(bench, "fidelity", lambda p, dev, variants, with_compile=False: {"fp32_cl": {"ok": True}})
    b = _bench(tmp_path, "--configs", "small,tiny")
    b.checks()
    fid = b.doc["fidelity"]
    assert fid["config"] == "small" and fid["fp32_cl"] == {"ok": True}, fid
    assert "somepackage" in fid["failed_configs"]["tiny"]


def test_rows_are_written_after_the_compile_alarm_is_off(monkeypatch, tmp_path):
    """A --compile-timeout alarm firing while the row is saved must not add a second (error) row: the alarm
    covers the preparation and the timed calls only."""
    state = {"armed": False, "rows_while_armed": 0}

    @contextlib.contextmanager
    def fake_alarm(seconds):
        state["armed"] = True
        try:
            yield
        finally:
            state["armed"] = False

    monkeypatch.setattr(bench, "alarm", fake_alarm)
    b = _bench(tmp_path, "--repeats", "1", "--warmup", "0")
    row = b.row

    def counting_row(cell, **kw):
        state["rows_while_armed"] += state["armed"]
        return row(cell, **kw)

    monkeypatch.setattr(b, "row", counting_row)

    class Anon:  # stand-in fast path
        def configure(self, **kw):
            return self

        def anonymize(self, x, keys):
            return x

    pipe = types.SimpleNamespace(fast=Anon(), ref=None, cfg=G2FaceConfig.tiny())
    r = b._g2face_cell(pipe, _cell(), bench.parse_variant("fp32_compile"), None)
    assert r["status"] == "ok" and state["rows_while_armed"] == 0 and len(b.doc["results"]) == 1
    r = b.measure(_cell(), lambda: (_ for _ in ()).throw(bench.CellTimeout("cell exceeded")), limit=5)
    assert r["status"] == "error" and "CellTimeout" in r["error"] and len(b.doc["results"]) == 2


def test_metric_suite_without_faces_or_oracles_still_times_psnr_ssim(monkeypatch, tmp_path):
    from g2face_eval.harness import evaluate, prepare

    def missing(*a, **k):
        raise RuntimeError("weight 'yunet' is missing")

    monkeypatch.setattr(prepare, "Preparer", missing)
    monkeypatch.setattr(evaluate, "Oracles", missing)
    kernels, info = bench.metric_oracles(torch.device("cpu"), 2, str(tmp_path))
    names = [k["name"] for k in kernels]
    # what needs no face still runs, built on its own (EfficientNet-lite0 features ship with the packages)
    assert {"psnr", "ssim", "features_effnet_lite0"} <= set(names)
    assert not any(n.startswith(("embed_", "finds_")) or n == "mesh" for n in names)
    assert "yunet" in info["unavailable"]["faces"] and "yunet" in info["unavailable"]["oracles"]
    # the harness's face oracles of the default configuration are named, with the reason
    sk = info["skipped"]
    assert "embed_sface" in sk and "mesh" in sk and any(n.startswith("finds_") for n in sk), sk
    assert all(sk[n].startswith("oracles: ") for n in sk if n.startswith(("embed_", "finds_")) or n == "mesh")
    assert "lpips_alex" in set(names) | set(sk)
    assert all(len(k["call"](3)()) == 3 for k in kernels)     # a batch of 3 from the 2 faces, cycled


def test_metric_suite_names_what_needs_a_face_when_no_face_is_prepared(monkeypatch, tmp_path):
    """Without a prepared subject face the recognizers, detectors and mesh cannot be timed: each is a skipped
    row's name with the reason, beside the face-free oracles that still run."""
    from g2face_eval.harness import prepare

    def missing(*a, **k):
        raise RuntimeError("weight 'yunet' is missing")

    monkeypatch.setattr(prepare, "Preparer", missing)
    kernels, info = bench.metric_oracles(torch.device("cpu"), 2, str(tmp_path))
    names = {k["name"] for k in kernels}
    assert {"psnr", "ssim"} <= names and not any(n.startswith(("embed_", "finds_")) for n in names)
    sk = info["skipped"]
    assert "embed_sface" in sk and any(n.startswith("finds_") for n in sk), sk
    assert "yunet" in sk["embed_sface"]          # SFace ships with the packages: only the face is missing


@pytest.mark.parametrize("cell", ["stencil:cl:ov", "stencil:cl:unfused+geo16", "stencil:cl@x", "fir:cl",
                                  "stencil:nhwc"])
def test_compile_study_refuses_a_bad_grid_cell_before_device_work(cell, tmp_path):
    """scripts/gpu_compile_study.py runs in one short device call: a mistyped grid cell (an unknown preset such as
    the removed ``ov``, a bad batch, FIR form or layout) must stop it at argument parsing, before the pipeline and
    its references are built, not after minutes of device time."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_compile_study.py"
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "out"), "--device", "cpu", "--config", "tiny",
                        "--grid", f"stencil:cl,{cell}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and f"bad --grid cell {cell!r}" in r.stderr, (r.returncode, r.stderr[-500:])
    assert not (tmp_path / "out").exists()


def test_reference_is_the_same_kind_of_card():
    """The official numbers come from the reference file of the bench's card (H200 or H100 here), read from its
    timings (the first fp32 run of each batch, as the reference tables give them); a CPU or another card gets
    none, so that no figure or ratio compares across cards."""
    h200 = bench.load_reference("NVIDIA H200")
    if h200 is None:
        pytest.skip("no ../shared/reference beside the checkout")
    assert h200["anonymize_ms"] == {"1": 24.4, "8": 39.46, "32": 117.22}
    assert h200["recover_ms"] == {"1": 21.24, "8": 42.38, "32": 132.85}
    assert (h200["anonymize_gflop_per_image"], h200["recover_gflop_per_image"],
            h200["anonymize_gflop_per_image_native_ops"]) == (289.79, 298.19, 290.29)
    h100 = bench.load_reference("NVIDIA H100 80GB HBM3")
    assert h100["device"] == "NVIDIA H100 80GB HBM3" and h100["anonymize_ms"]["1"] == 45.24
    for other in (None, "x86_64", "AMD EPYC 7B13", "NVIDIA A100-SXM4-80GB"):
        assert bench.load_reference(other) is None, other


def test_latency_figure_marks_rows_timed_on_another_device(monkeypatch):
    """A GPU bench times the metric suite's host oracles on the CPU: their lines say so; so does a config that fell
    back to another one."""
    row = {"suite": "metric", "name": "sface_embedding", "runs_on": "cpu"}
    assert bench.series_label(row, "cuda") == "sface_embedding [on cpu]"
    assert bench.series_label({**row, "runs_on": "cuda:0"}, "cuda") == "sface_embedding"
    g = {"suite": "g2face", "name": "g2face_reference", "config": "official", "op": "anonymize", "variant": "fp32",
         "runs_on": "cuda:0"}
    assert bench.series_label(g, "cuda") == "official anonymize fp32 (g2face_reference)"
    fb = {**g, "name": "g2face", "config": "shipped"}
    monkeypatch.setattr(bench, "_shipped", lambda: None)                  # no shipped checkpoint: the fallback
    note = bench.config_by_name("shipped")[1]
    assert bench.series_label(fb, "cuda", {"shipped": {"note": note}}) == "shipped anonymize fp32 [small config used]"


def test_cli_refuses_bad_arguments_and_ingests(tmp_path, capsys):
    """Settings no run can time and a malformed --ingest file: one line, exit 2, nothing written."""
    for args, msg in ((["--repeats", "0"], "--repeats must be >= 1"), (["--warmup", "-1"], "--warmup must be >= 0"),
                      (["--methods", "nope"], "--methods: unknown ['nope']")):
        with pytest.raises(SystemExit) as e:
            bench.parse_args(args)
        assert e.value.code == 2 and msg in capsys.readouterr().err, args
    bad = {"truncated.json": '{"schema": "x", "results": [', "list.json": "[1, 2]",
           "no_suite.json": json.dumps({"schema": bench.SCHEMA, "device": {}, "results": [{"status": "ok"}]})}
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        out = tmp_path / f"out_{name}"
        assert bench.cli(["--ingest", str(tmp_path / name), "--out", str(out), "--results-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("g2face-eval bench: error: --ingest") and not out.exists(), (name, err)
    assert bench.cli(["--ingest", str(tmp_path / "missing.json"), "--results-dir", str(tmp_path)]) == 2


def test_run_status_counts_error_rows():
    """A run whose cells errored is not 'complete': partial with some ok rows, failed with none."""
    for rows, skipped, want in (([{"status": "ok"}, {"status": "skipped"}], 0, "complete"),
                                ([{"status": "ok"}, {"status": "skipped"}], 1, "partial"),
                                ([{"status": "ok"}, {"status": "error"}], 0, "partial"),
                                ([{"status": "error"}, {"status": "skipped"}], 0, "failed"),
                                ([{"status": "skipped"}], 1, "partial"), ([{"status": "skipped"}], 0, "complete")):
        assert bench.run_status({"results": rows}, skipped) == want, rows
