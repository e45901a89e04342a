"""GPU check of the G2Face fast path (one short device call; see docs/BENCH.md "Fast path").

    python3 scripts/gpu_fastpath_check.py OUT_DIR [--compile-timeout 120]

On the official config (random weights, official payload) and a tiny keyed config, on CUDA: fast path vs the
fp32 reference path (PSNR, hidden / recovered bits), bf16 / fp16 autocast and channels_last, CUDA graphs and
torch.compile vs eager, batch-composition independence; then a few timings (CUDA events, median of 10) of
reference vs fast variants. Writes OUT_DIR/fastpath_check.json (rewritten after every step).

Exit status 1 when the fp32 fast path's recovery differs from the reference's (recovered images below 40 dB
PSNR, or recovered bits not identical; the official payload has no authentication, so recovery always runs the
generator here) or a timing is not finite. (tests/test_g2face_fastpath.py makes the same comparison on CPU
with an oracle extractor, so that recovery authenticates, for both payload modes.)
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def psnr(a, b) -> float:
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return float((10 * torch.log10(1.0 / mse.clamp_min(1e-30))).min())


def cuda_ms(fn, warmup=3, repeats=10) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(repeats):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e))
    ts.sort()
    return ts[len(ts) // 2]


BASELINE = "official_fast_vs_reference_fp32"
RECOVER_PSNR_MIN_DB = 40.0  # fast vs reference recovery: below this, or differing recovered bits, exits 1


def recovery_failure(res: dict) -> str | None:
    """Why the baseline step's recovery comparison fails (None: PSNR >= 40 dB and identical recovered bits)."""
    p, same = res.get("psnr_recover_db"), res.get("recovered_bits_identical")
    if "error" in res or p is None or same is None:
        return f"fast vs reference recovery not compared: {res.get('error', 'missing fields')}"
    if not (p >= RECOVER_PSNR_MIN_DB and same is True):  # NaN PSNR fails too
        return (f"fast vs reference recovery: PSNR {p:.2f} dB (need >= {RECOVER_PSNR_MIN_DB:.0f}), "
                f"recovered bits identical: {same}")
    return None


class Timeout(Exception):
    pass


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--compile-timeout", type=float, default=120)
    ap.add_argument("--batches", default="1,8,32", help="timing batches ('' = no timings)")
    ap.add_argument("--only", default="", help="comma list of step-name substrings to run (default all)")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from g2face_eval import bench

    doc: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "steps": {}, "timings": []}

    def save():
        (out / "fastpath_check.json").write_text(json.dumps(doc, indent=2))

    def step(name):
        def deco(fn):
            if a.only and not any(o in name for o in a.only.split(",")) and name != BASELINE:
                return
            print(name, bench.record_step(doc["steps"], name, fn), flush=True)
            save()
        return deco

    dev = torch.device("cuda")
    p = bench.build_pipeline("official", dev)
    fast, ref = p.fast, p.ref
    g = torch.Generator().manual_seed(0)
    x8 = torch.rand(8, 3, 256, 256, generator=g).to(dev)
    keys8 = [f"gpu-{i}".encode() for i in range(8)]
    base = {}

    @step("official_fast_vs_reference_fp32")  # always needed: the fp32 baseline of the other steps
    def _():
        r = ref.anonymize(x8, keys8)
        f = fast.anonymize(x8, keys8)
        rr, fr = ref.recover(r.images, keys8), fast.recover(f.images, keys8)
        base.update(f=f, fr=fr)
        return {"psnr_anon_db": psnr(f.images, r.images), "hidden_bits_identical": bool(torch.equal(f.bits, r.bits)),
                "psnr_recover_db": psnr(fr.images, rr.images),
                "recovered_bits_identical": bool(torch.equal(fr.bits, rr.bits))}

    def variant(amp=None, cl=False, graphs=False, comp=False):
        fast.configure(amp_dtype=amp, channels_last=cl, cuda_graphs=graphs, compile=comp)
        try:
            f = fast.anonymize(x8, keys8)
            f2 = fast.anonymize(x8, keys8)  # graphs: replay path
            fr = fast.recover(f.images, keys8)
            return {"psnr_anon_vs_fp32_db": psnr(f.images, base["f"].images),
                    "hidden_bits_identical": bool(torch.equal(f.bits, base["f"].bits)),
                    "repeat_identical": bool(torch.equal(f.images, f2.images)),
                    "recovered_bit_agreement": float((fr.bits == base["fr"].bits).float().mean()),
                    "finite": bool(torch.isfinite(f.images).all())}
        finally:
            fast.configure()

    early = recovery_failure(doc["steps"].get(BASELINE, {}))
    if early:  # reported now; the script goes on with its other steps and exits 1 at the end
        print(f"FAIL: {early}", file=sys.stderr, flush=True)

    for name, kw in [("bf16", dict(amp=torch.bfloat16)), ("fp16_cl", dict(amp=torch.float16, cl=True)),
                     ("bf16_cl", dict(amp=torch.bfloat16, cl=True)), ("fp32_cl", dict(cl=True)),
                     ("fp32_graph", dict(graphs=True)), ("bf16_cl_graph", dict(amp=torch.bfloat16, cl=True,
                                                                                graphs=True))]:
        step(f"official_{name}")(lambda kw=kw: variant(**kw))

    @step("official_batch_invariance")
    def _():
        f = base["f"]
        part = fast.anonymize(x8[2:5], keys8[2:5])
        rev = fast.anonymize(x8.flip(0), keys8[::-1])
        return {"bits_identical_sub": bool(torch.equal(part.bits, f.bits[2:5])),
                "psnr_sub_db": psnr(part.images, f.images[2:5]),
                "bits_identical_reversed": bool(torch.equal(rev.bits.flip(0), f.bits)),
                "psnr_reversed_db": psnr(rev.images.flip(0), f.images)}

    @step("tiny_keyed_fast_vs_reference_and_invariance")
    def _():
        from g2face_eval.models.anonymizer import G2FaceAnonymizer

        t = bench.build_pipeline("tiny", dev)
        kw = dict(identity=t.identity, geometry=t.geometry, payload="keyed", device=dev)
        import copy

        fk = G2FaceAnonymizer(copy.deepcopy(t.model), fast=True, **kw)
        rk = G2FaceAnonymizer(copy.deepcopy(t.model), fast=False, **kw)
        x = torch.rand(16, 3, 64, 64, generator=g).to(dev)
        keys = [f"k-{i}".encode() for i in range(16)]
        f, r = fk.anonymize(x, keys), rk.anonymize(x, keys)
        flagged = fk.payload.last_flagged
        sub = fk.anonymize(x[3:7], keys[3:7])
        one = fk.anonymize(x[5:6], keys[5:6])
        return {"psnr_db": psnr(f.images, r.images), "bits_identical": bool(torch.equal(f.bits, r.bits)),
                "flagged_of_16": flagged, "sub_bits_identical": bool(torch.equal(sub.bits, f.bits[3:7])),
                "alone_bits_identical": bool(torch.equal(one.bits, f.bits[5:6]))}

    @step("official_bf16_cl_compile_b8")
    def _():
        def _raise(*_):
            raise Timeout(f"compile > {a.compile_timeout} s")

        old = signal.signal(signal.SIGALRM, _raise)
        signal.setitimer(signal.ITIMER_REAL, a.compile_timeout)
        t0 = time.perf_counter()
        try:
            fast.configure(amp_dtype=torch.bfloat16, channels_last=True, compile=True)
            f = fast.anonymize(x8, keys8)
            first = time.perf_counter() - t0
            ms = cuda_ms(lambda: fast.anonymize(x8, keys8), warmup=1, repeats=5)
            return {"first_call_s": first, "median_ms_b8": ms,
                    "psnr_vs_fp32_db": psnr(f.images, base["f"].images),
                    "hidden_bits_identical": bool(torch.equal(f.bits, base["f"].bits))}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
            fast.configure()
            torch._dynamo.reset()

    # timings: reference fp32 vs fast variants, anonymize + recover
    for b in [int(v) for v in a.batches.split(",") if v]:
        x = torch.rand(b, 3, 256, 256, generator=g).to(dev)
        keys = [f"t-{i}".encode() for i in range(b)]
        y = fast.anonymize(x, keys).images
        for name, an, kw in [("reference_fp32", ref, None), ("fast_fp32", fast, {}),
                             ("fast_bf16", fast, dict(amp_dtype=torch.bfloat16)),
                             ("fast_bf16_cl", fast, dict(amp_dtype=torch.bfloat16, channels_last=True)),
                             ("fast_fp32_graph", fast, dict(cuda_graphs=True)),
                             ("fast_bf16_cl_graph", fast, dict(amp_dtype=torch.bfloat16, channels_last=True,
                                                               cuda_graphs=True))]:
            try:
                if kw is not None:
                    fast.configure(**kw)
                with torch.no_grad():
                    ta = cuda_ms(lambda an=an, x=x, keys=keys: an.anonymize(x, keys))
                    tr = cuda_ms(lambda an=an, y=y, keys=keys: an.recover(y, keys))
                row = {"batch": b, "variant": name, "anonymize_ms": ta, "recover_ms": tr,
                       "peak_mib": torch.cuda.max_memory_allocated() / 2 ** 20}
            except Exception as e:  # noqa: BLE001
                row = {"batch": b, "variant": name, "error": f"{type(e).__name__}: {str(e)[:300]}"}
            finally:
                if kw is not None:
                    fast.configure()
                torch.cuda.reset_peak_memory_stats()
            print(row, flush=True)
            doc["timings"].append(row)
            save()
    rec_fail = recovery_failure(doc["steps"].get(BASELINE, {}))
    if rec_fail:
        print(f"FAIL: {rec_fail}", file=sys.stderr, flush=True)
    doc["ok"] = not rec_fail and not any(isinstance(v, dict) and "error" in v for v in doc["steps"].values())
    save()
    return 0 if not rec_fail and all(math.isfinite(r.get("anonymize_ms", 0)) for r in doc["timings"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
