"""torch.compile of the G2Face fast path on a lent GPU: which FIR form and layout, what the priors cost, and the
b=32 / b=64 numbers of the best setting (one short device call, time-budgeted).

    python3 scripts/gpu_compile_study.py OUT_DIR [--budget 420]
    python3 scripts/gpu_compile_study.py /tmp/dry --device cpu --config tiny --batch 2 --batch-big 4 --repeats 1

Official config (256 px, random weights, official payload), tensor API (``BenchPipeline.anonymize`` /
``recover``, wrapped exactly as ``g2face-eval bench`` wraps its ``_compile`` / ``_graph`` variants by
``bench.make_callable``: the whole call compiled, priors included), bf16 autocast, CUDA-event medians
(``bench.time_fn``). Steps, in priority order, each skipped when the time budget is spent:

1. ``priors``: eager identity (iresnet50 at 112: its inference form, as the fast path runs it, and the plain
   network) and geometry (ResNet-50 at 256) alone, fp32, and the geometry network in channels_last fp32 and in
   bf16 (with its coefficient error);
2. ``anonymize_b{B}_{fir}_{layout}``: compiled anonymize at batch B for FIR form (``stylegan2.FIR_UNDER_COMPILE``:
   stencil / matmul) x layout (nchw / cl): first-call (compile) seconds, median ms, PSNR vs the fp32 eager
   output, hidden bits identical, and a kernel-time breakdown of one profiled call (convolutions, layout
   transposes, triton pointwise / reductions, GEMMs; top kernels);
3. for the fastest of step 2: anonymize with CUDA graphs on top, recover (compiled, + graphs), both at batch
   ``--batch-big``; then anonymize at ``--batch-big`` with inductor ``freezing`` (+ graphs).
``--steps`` picks the groups (``matmul_rate``, the floor's denominator, only when asked); a ``--grid`` cell may
name presets as a third field, joined by ``+``: inductor settings (``INDUCTOR_PRESETS``, e.g. ``stencil:cl:cdt``)
or pipeline settings (``PIPELINE_PRESETS``: ``unfused``, ``nofold``, the forms before session 16; ``gemm``, ``pad8``),
and its
batch after ``@`` (``stencil:cl:cdt@64``; default ``--batch``); ``--graph-each`` adds each grid cell's CUDA-graph
cell right after it. (Session 15's ``ov`` cells ran a pipeline preset, the identity prior on a side stream beside
the geometry prior, with the switch of commit b44cf5c; not adopted, removed: docs/BENCH.md.)
The PSNR / hidden-bit checks run at every batch a cell uses, against the fp32 eager output at that batch (made before
any cell). Cells of one inductor setting share dynamo's cache across batches: more than 8 batches in one grid would
reach its recompile limit. A step name that recurs (``--batch`` equal to ``--batch-big``) is kept as ``<name>_again``.
Writes OUT_DIR/compile_study.json after every step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# inductor settings a grid cell may add (third field of --grid); applied while that cell compiles and runs
INDUCTOR_PRESETS = {"cdt": {"coordinate_descent_tuning": True},
                    "cdt_aggr": {"coordinate_descent_tuning": True, "aggressive_fusion": True}}
# pipeline settings a grid cell may add (same field), switched on while that cell runs: (target, attribute, value)
#   unfused: the ArcFace identity prior as the plain network (``ArcFaceIdentity.fused = False``, the form before
#            session 16); its fp32 reference is made in that form too, as the hidden bits depend on it
#   nofold:  the hiding injections materialised and concatenated (``g2face.FOLD_BINARY_BITS``; before session 16)
#   gemm:    the 3-channel convolutions as im2col + GEMM (``g2face.SMALL_CIN_CONV``)
#   pad8:    ... zero-padded to 8 channels for cuDNN (the default; the fp32 references' form)
PIPELINE_PRESETS = {"unfused": ("identity", "fused", False), "nofold": ("g2face", "FOLD_BINARY_BITS", False),
                    "gemm": ("g2face", "SMALL_CIN_CONV", "gemm"), "pad8": ("g2face", "SMALL_CIN_CONV", "pad8")}


def kernel_breakdown(prof, calls: int) -> dict:
    """ms per call by kernel family + the 15 largest kernels, from a torch.profiler run of ``calls`` calls."""
    fam: dict[str, float] = {}
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", None)
        if t is None:
            t = getattr(e, "self_cuda_time_total", 0.0)
        if not t or e.key.startswith("aten::") or e.key.startswith("cuda") or "Memcpy" in e.key:
            continue
        k = e.key
        low = k.lower()
        if "nchwtonhwc" in low or "nhwctonchw" in low:
            f = "layout_transpose"
        elif "triton_poi" in low:
            f = "triton_pointwise"
        elif "triton_red" in low or "triton_per" in low:
            f = "triton_reduction"
        elif "triton" in low:
            f = "triton_other"
        elif "fprop" in low or "dgrad" in low or "conv" in low or "implicit" in low or "xmma" in low:
            f = "convolution"
        elif "gemm" in low or "cutlass" in low or "matmul" in low or "nvjet" in low:
            f = "gemm"
        else:
            f = "other"
        ms = t / 1000.0 / calls
        fam[f] = fam.get(f, 0.0) + ms
        rows.append((ms, k[:90], e.count // calls))
    rows.sort(reverse=True)
    return {"family_ms_per_call": {k: round(v, 3) for k, v in sorted(fam.items(), key=lambda kv: -kv[1])},
            "total_kernel_ms_per_call": round(sum(fam.values()), 3),
            "top_kernels": [[n, round(ms, 3), c] for ms, n, c in rows[:15]]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--config", default="official")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batch-big", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--budget", type=float, default=420.0, help="seconds; a compile step needs >= 75 s left")
    ap.add_argument("--grid", default="stencil:cl,stencil:nchw,matmul:nchw",
                    help="FIR form:layout[:preset[+preset]][@batch] cells of step 2, in order (presets: "
                         + ", ".join([*INDUCTOR_PRESETS, *PIPELINE_PRESETS]) + ")")
    ap.add_argument("--graph-each", action="store_true", help="each grid cell's CUDA-graph cell right after it")
    ap.add_argument("--steps", default="priors,grid,best,big,freezing",
                    help="which step groups run: matmul_rate, priors, grid (2), best / big / freezing (3; without "
                         "grid they use the first --grid pair)")
    a = ap.parse_args()
    grid = []                                        # parsed and checked before any device work
    for c in filter(None, a.grid.split(",")):
        c, _, bs = c.partition("@")
        fir, layout, preset = (*c.split(":"), "")[:3]
        bad = [n for n in preset.split("+") if n and n not in INDUCTOR_PRESETS and n not in PIPELINE_PRESETS]
        if fir not in ("stencil", "matmul") or layout not in ("cl", "nchw") or bad or (bs and not bs.isdigit()):
            ap.error(f"bad --grid cell {c + ('@' + bs if bs else '')!r}")
        grid.append(((fir, layout, preset), int(bs) if bs else a.batch))
    t_start = time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from g2face_eval import atomic, bench
    from g2face_eval.models import stylegan2 as sg
    from g2face_eval.models.g2face import set_memory_format

    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    doc: dict = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
                 "cudnn": torch.backends.cudnn.version(), "config": a.config, "batch": a.batch,
                 "batch_big": a.batch_big, "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
                 "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32), "steps": {}}

    def left() -> float:
        return a.budget - (time.perf_counter() - t_start)

    def save():
        doc["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        # atomic: a call killed mid-write (the device call's timeout) leaves the previous complete file
        atomic.write_json(out / "compile_study.json", doc, indent=1, sort_keys=False)

    def step(name, fn, need: float = 0.0):
        while name in doc["steps"]:          # e.g. --batch == --batch-big: keep both runs (and the profile)
            name += "_again"
        if left() < need:
            doc["steps"][name] = {"skipped": f"time budget ({left():.0f} s left, needs {need:.0f})"}
        else:
            bench.record_step(doc["steps"], name, fn)
        print(f"[{time.perf_counter() - t_start:6.1f}s] {name}: {json.dumps(doc['steps'][name])[:700]}", flush=True)
        save()
        return name

    def ms(fn) -> float:
        return round(bench.time_fn(fn, dev, a.warmup, a.repeats)["median_ms"], 3)

    p = bench.build_pipeline(a.config, dev)
    g = torch.Generator().manual_seed(0)

    def inputs(b):
        x01 = torch.rand(b, 3, p.cfg.size, p.cfg.size, generator=g).to(dev)
        return x01, torch.arange(b, device=dev, dtype=torch.int64) * 7919 + 3

    x01, seeds = inputs(a.batch)
    batch_inputs = {a.batch: (x01, seeds)}
    refs: dict = {}
    from g2face_eval.models.identity import ArcFaceIdentity

    arcface = next((m for m in p.identity.modules() if isinstance(m, ArcFaceIdentity)), None)

    from g2face_eval.models import g2face as g2face_module

    def pipeline_setting(what: tuple, value=None):
        """read (value None) or set one PIPELINE_PRESETS setting ``(target, attribute)``; returns the previous
        value (None when the pipeline has no such part, e.g. no ArcFace identity prior)"""
        target, attr = what
        obj = arcface if target == "identity" else g2face_module
        old = getattr(obj, attr, None) if obj is not None else None
        if value is not None and obj is not None:
            setattr(obj, attr, value)
        return old

    @contextlib.contextmanager
    def pipeline(preset: str):
        saved = []
        try:
            for n in filter(None, preset.split("+")):
                if n in PIPELINE_PRESETS:
                    target, attr, value = PIPELINE_PRESETS[n]
                    saved.append(((target, attr), pipeline_setting((target, attr), value)))
            yield
        finally:
            for what, old in reversed(saved):
                pipeline_setting(what, old)

    def reference(b):
        """fp32 eager anonymize output and hidden bits at batch b (default layout), made once per batch and
        identity form, in the official form of every other part (``nofold``, padded 3-channel convolutions); the
        cells' bf16 / channels_last settings are switched off while it runs (session 15's b=64 reference was made
        under them, i.e. bf16 channels_last eager)."""
        key = (b, pipeline_setting(("identity", "fused")))
        if key not in refs:
            batch_inputs.setdefault(b, inputs(b))
            amp, cl = p.amp_dtype, p.channels_last
            p.amp_dtype, p.channels_last = None, False
            set_memory_format(p.model, torch.contiguous_format)
            try:
                with torch.no_grad(), pipeline("nofold+pad8"):
                    refs[key] = tuple(t.clone() for t in p.anonymize(*batch_inputs[b]))
            finally:
                p.amp_dtype, p.channels_last = amp, cl
                set_memory_format(p.model, torch.channels_last if cl else torch.contiguous_format)
        return refs[key]

    for (_, _, preset), b in [((None, None, ""), a.batch), *grid]:
        with pipeline(preset):
            reference(b)

    # ---- 1. priors
    def priors():
        x = x01 * 2 - 1
        r = {}
        with torch.no_grad():
            r["identity_fp32_ms"] = ms(lambda: p.identity(x))          # its inference form (session 16)
            with pipeline("unfused"):
                r["identity_unfused_fp32_ms"] = ms(lambda: p.identity(x))
            r["geometry_fp32_ms"] = ms(lambda: p.geometry.coefficients(x))
            c_ref = p.geometry.coefficients(x).float()
            xc = x.contiguous(memory_format=torch.channels_last)
            p.geometry.to(memory_format=torch.channels_last)
            try:
                r["geometry_cl_fp32_ms"] = ms(lambda: p.geometry.coefficients(xc))
                with torch.autocast(dev.type, dtype=torch.bfloat16):
                    r["geometry_cl_bf16_ms"] = ms(lambda: p.geometry.coefficients(xc))
                    c16 = p.geometry.coefficients(xc).float()
                r["geometry_bf16_max_rel_err"] = float((c16 - c_ref).abs().max() / c_ref.abs().max())
                r["geometry_cl_fp32_max_rel_err"] = float(
                    (p.geometry.coefficients(xc).float() - c_ref).abs().max() / c_ref.abs().max())
            finally:
                p.geometry.to(memory_format=torch.contiguous_format)
        return r

    steps = set(a.steps.split(","))
    if "matmul_rate" in steps:
        step("matmul_rate", lambda: bench.matmul_rate(dev))
        step("matmul_rate_tf32", lambda: bench.matmul_rate(dev, dtype=torch.float32, tf32=True))  # the priors' rate
    if "priors" in steps:
        step("priors", priors)

    # ---- 2. FIR form x layout, compiled anonymize
    def configure(fir: str, cl: bool):
        sg.FIR_UNDER_COMPILE = fir
        p.amp_dtype, p.channels_last = torch.bfloat16, cl
        set_memory_format(p.model, torch.channels_last if cl else torch.contiguous_format)

    def inductor(preset: str) -> dict:
        """inductor settings of a cell's ``+``-joined preset names (pipeline presets contribute none)"""
        out: dict = {}
        for n in filter(None, preset.split("+")):
            out.update(INDUCTOR_PRESETS.get(n, {}))
        return out

    def compiled(op: str, b: int, fir: str, layout: str, graph: bool = False, profile: bool = True,
                 preset: str = ""):
        ind = inductor(preset)

        def run():
            import torch._inductor.config as ic

            with ic.patch(**ind) if ind else contextlib.nullcontext(), pipeline(preset):
                return _run()

        def _run():
            configure(fir, layout == "cl")
            if b not in batch_inputs:
                batch_inputs[b] = inputs(b)
            xx, ss = batch_inputs[b]
            if op == "recover":
                with torch.no_grad():
                    xx = p.anonymize(xx, ss)[0].clone()
            spec = {"amp": torch.bfloat16, "cl": layout == "cl", "compile": True, "graph": graph}
            t0 = time.perf_counter()
            with torch.no_grad():
                fn = bench.make_callable(getattr(p, op), (xx, ss), dev, spec)
                res = fn()
                if cuda:
                    torch.cuda.synchronize()
            r = {"first_call_s": round(time.perf_counter() - t0, 1), "median_ms": ms(fn)}
            r["images_per_s"] = round(b * 1000 / r["median_ms"], 1)
            if cuda:
                r["peak_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20)
            if op == "anonymize":
                y, bits = res
                ref_y, ref_bits = reference(b)
                r["psnr_db_vs_fp32_eager_min"] = round(float(bench.psnr_db(y.float(), ref_y).min()), 2)
                r["hidden_bits_identical"] = bool(torch.equal(bits, ref_bits))
            if profile and cuda:
                from torch.profiler import ProfilerActivity
                from torch.profiler import profile as tprof

                with tprof(activities=[ProfilerActivity.CUDA]) as pr:
                    for _ in range(2):
                        fn()
                    torch.cuda.synchronize()
                r["kernels"] = kernel_breakdown(pr, 2)
            return r
        return run

    if "grid" in steps:
        cells = {}
        last = None
        for (fir, layout, preset), b in grid:
            # new inductor settings / FIR form: compile afresh. Not for a pipeline preset: dynamo guards the module
            # globals it switches (recompiling only what changed, within its cache of 8 per function), and
            # ``unfused`` changes the eager identity prior only, so its cell reuses the compiled segments
            ind_key = (fir, layout, tuple(sorted(inductor(preset).items())))
            if last is not None and ind_key != last:
                torch._dynamo.reset()
            last = ind_key
            name = f"anonymize_b{b}_{fir}_{layout}" + (f"_{preset.replace('+', '_')}" if preset else "")
            stored = step(name, compiled("anonymize", b, fir, layout, preset=preset), need=75)
            if a.graph_each and cuda and "median_ms" in doc["steps"][stored]:  # reuses the cell's compile
                step(name + "_graph", compiled("anonymize", b, fir, layout, graph=True, profile=False,
                                               preset=preset), need=30)
            if b == a.batch:
                cells[name] = (fir, layout, preset)
        torch._dynamo.reset()
        if not any("median_ms" in v for k, v in doc["steps"].items() if k.startswith("anonymize_")):
            save()
            return 1                                    # no grid cell ran: nothing for step 3 to build on
        done = {k: doc["steps"][k]["median_ms"] for k in cells if "median_ms" in doc["steps"].get(k, {})}
        best = min(done, key=done.get) if done else None
        fir, layout, preset = cells[best] if best else grid[0][0]
    else:
        fir, layout, preset = grid[0][0]
        best = None
    doc["best"] = {"fir": fir, "layout": layout, "inductor_preset": preset, "step": best}
    save()

    # ---- 3. the best setting: + CUDA graphs, recover, the big batch, freezing
    tag = f"{fir}_{layout}" + (f"_{preset.replace('+', '_')}" if preset else "")
    if "best" in steps:
        step(f"anonymize_b{a.batch}_{tag}_graph", compiled("anonymize", a.batch, fir, layout, graph=True,
                                                            profile=False, preset=preset), need=30)
        step(f"recover_b{a.batch}_{tag}", compiled("recover", a.batch, fir, layout, preset=preset), need=75)
        step(f"recover_b{a.batch}_{tag}_graph", compiled("recover", a.batch, fir, layout, graph=True,
                                                          profile=False, preset=preset), need=30)
        torch._dynamo.reset()
    if "big" in steps:
        for op in ("anonymize", "recover"):
            step(f"{op}_b{a.batch_big}_{tag}", compiled(op, a.batch_big, fir, layout, profile=False,
                                                        preset=preset), need=75)
            step(f"{op}_b{a.batch_big}_{tag}_graph", compiled(op, a.batch_big, fir, layout, graph=True,
                                                              profile=False, preset=preset), need=30)
            torch._dynamo.reset()

    def frozen():
        import torch._inductor.config as ic

        ic.freezing = True
        try:
            r = compiled("anonymize", a.batch_big, fir, layout)()
            r["graph"] = compiled("anonymize", a.batch_big, fir, layout, graph=True, profile=False)()
            return r
        finally:
            ic.freezing = False
            torch._dynamo.reset()

    if "freezing" in steps:
        step(f"anonymize_b{a.batch_big}_{tag}_freezing", frozen, need=75)
    doc["done"] = True
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
