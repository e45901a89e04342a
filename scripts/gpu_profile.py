"""Where the G2Face fast path spends its time on a lent GPU at batch 32 (one short device call).

    python3 scripts/gpu_profile.py OUT_DIR [--batch 32]
    python3 scripts/gpu_profile.py /tmp/dry --device cpu --config tiny --batch 2 --warmup 0 --repeats 1

Official config (256 px, random weights, official payload), tensor API (``BenchPipeline.anonymize``):
1. anonymize / recover and each device segment (priors, generator, extractor, recovery generator) timed with
   CUDA events for bf16 and bf16 + channels_last, with ``torch.backends.cudnn.benchmark`` off and on;
2. a ``torch.profiler`` table of both layouts (self CUDA time per op, and per op and input shape), written to
   OUT_DIR;
3. the 256-px level ops alone (convolutions at their shapes, instance norm, the FIR blur) and alternative
   formulations of the memory-bound ones, in both layouts;
4. the bf16 matrix rate (the FLOP floor's denominator).
The tensor API runs no CUDA graphs and no torch.compile (those wrap the ``Anonymizer`` API's segments: measure
them with ``g2face-eval bench``).
Writes OUT_DIR/profile.json (rewritten after every step) and OUT_DIR/profile_<variant>.txt.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


WARMUP, REPEATS = 3, 10


def cuda_ms(fn) -> float:
    """Median ms per call (``bench.time_fn``: CUDA events on a GPU, perf_counter on the CPU dry run)."""
    from g2face_eval import bench

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return round(bench.time_fn(fn, dev, WARMUP, REPEATS)["median_ms"], 3)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="cuda", help="cpu = dry run (use with --config tiny --batch 1)")
    ap.add_argument("--config", default="official")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    a = ap.parse_args()
    global WARMUP, REPEATS
    WARMUP, REPEATS = a.warmup, a.repeats
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from g2face_eval import bench

    dev = torch.device(a.device)
    doc: dict = {"device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu", "torch": torch.__version__,
                 "cudnn": torch.backends.cudnn.version(), "batch": a.batch, "config": a.config, "steps": {}}

    def save():
        (out / "profile.json").write_text(json.dumps(doc, indent=2))

    def step(name, fn):
        res = bench.record_step(doc["steps"], name, fn)
        print(f"{name}: {json.dumps(res)[:900]}", flush=True)
        save()

    step("matmul_rate", lambda: bench.matmul_rate(dev))

    def layout_checks():
        """The device-only branches of the generator layers against their direct forms, on this device."""
        from g2face_eval.models import g2face as gm
        from g2face_eval.models import stylegan2 as sg

        r = {}
        x = torch.randn(4, 3, 64, 64, device=dev)
        w = torch.randn(16, 3, 3, 3, device=dev)
        ref = F.conv2d(x, w, None, 1, 1)
        r["conv_cin_pad_rel_err"] = float((gm.conv2d(x, w, None, 1, 1) - ref).norm() / ref.norm())
        blur = sg.Blur((1, 3, 3, 1), pad=(1, 1), upsample_factor=2).to(dev)
        for name, fmt in (("nchw", torch.contiguous_format), ("cl", torch.channels_last)):
            xx = torch.randn(4, 16, 65, 65, device=dev).contiguous(memory_format=fmt)
            ref = sg.upfirdn2d(xx, blur.kernel, pad=(1, 1))
            r[f"blur_matrix_{name}_max_abs"] = float((blur(xx) - ref).abs().max())
        return r

    step("layout_checks", layout_checks)
    p = bench.build_pipeline(a.config, dev)
    f = p.fast
    b = a.batch
    g = torch.Generator().manual_seed(0)
    x01 = torch.rand(b, 3, p.cfg.size, p.cfg.size, generator=g).to(dev)
    seeds = torch.arange(b, device=dev, dtype=torch.int64) * 7919 + 3
    x = x01 * 2 - 1

    def seg_times():
        with torch.no_grad():
            coeffs, ident = f._seg_priors(x)
            bits = f.payload.encode(ident, fast=True)
            y01, _ = p.anonymize(x01, seeds)
            y = y01 * 2 - 1
            logits, coeffs_y = f._seg_extract(y)
            dec = f.payload.decode(logits, fast=True)
            return {
                "anonymize": cuda_ms(lambda: p.anonymize(x01, seeds)),
                "recover": cuda_ms(lambda: p.recover(y01, seeds)),
                "seg_priors": cuda_ms(lambda: f._seg_priors(x)),
                "seg_anon_generator": cuda_ms(lambda: f._seg_anon(x, coeffs, bits, seeds)),
                "seg_extract": cuda_ms(lambda: f._seg_extract(y)),
                "seg_rec_generator": cuda_ms(lambda: f._seg_rec(y, dec.embeddings, coeffs_y, dec.bits, seeds)),
                "peak_mib_last_op": round(torch.cuda.max_memory_allocated() / 2 ** 20) if dev.type == "cuda" else None,
            }

    variants = {"bf16": dict(amp_dtype=torch.bfloat16), "bf16_cl": dict(amp_dtype=torch.bfloat16,
                                                                         channels_last=True)}
    for bm in (False, True):
        torch.backends.cudnn.benchmark = bm
        for vn, kw in variants.items():
            f.configure(**kw)
            step(f"segments_{vn}_cudnnbench{int(bm)}", seg_times)
    f.configure()
    step("segments_fp32_cudnnbench1", seg_times)

    def prof(vn):
        def run():
            from torch.profiler import ProfilerActivity, profile

            f.configure(**variants[vn])
            with torch.no_grad():
                for _ in range(2):
                    p.anonymize(x01, seeds)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as pr:
                    for _ in range(2):
                        p.anonymize(x01, seeds)
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
            ka = pr.key_averages()
            key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
            table = ka.table(sort_by=key, row_limit=40, max_name_column_width=60)
            (out / f"profile_{vn}.txt").write_text(table)
            ka_shape = pr.key_averages(group_by_input_shape=True)
            (out / f"profile_{vn}_shapes.txt").write_text(
                ka_shape.table(sort_by=key, row_limit=60, max_name_column_width=50,
                               max_shapes_column_width=90))
            rows = []
            def dev_us(e):
                for attr in ("self_device_time_total", "self_cuda_time_total"):
                    if hasattr(e, attr):
                        return getattr(e, attr)
                return 0.0

            for e in sorted(ka, key=lambda e: -dev_us(e))[:25]:
                t = dev_us(e)
                rows.append([e.key[:70], round(t / 2000, 3), e.count // 2])   # ms per call, calls per call
            f.configure()
            return {"top_self_cuda_ms_per_call": rows}
        return run

    torch.backends.cudnn.benchmark = True
    for vn in variants:
        step(f"profile_{vn}", prof(vn))

    # ---- the 256-px level ops alone, both layouts
    def ops():
        res = {}
        S = 256 if dev.type == "cuda" else 32  # CPU dry run: small maps (bf16 convs are very slow on CPU)
        bf = torch.bfloat16
        def one_layout(layout: str) -> None:
            fmt = torch.channels_last if layout == "cl" else torch.contiguous_format

            def t(shape):
                return torch.randn(*shape, device=dev, dtype=bf).contiguous(memory_format=fmt)

            def w(shape):
                return (torch.randn(*shape, device=dev, dtype=bf) * 0.05).contiguous(memory_format=fmt)

            x256 = t((b, 128, S, S))
            x128 = t((b, 256, S // 2, S // 2))
            convs = {
                "conv3x3_128to128_at256": (lambda: F.conv2d(x256, w3, padding=1), S * S * 128 * 128 * 9 * 2),
                "conv4x4s2_128to256_from256": (lambda: F.conv2d(x256, w4, stride=2, padding=1),
                                               S * S // 4 * 256 * 128 * 16 * 2),
                "convT3x3s2_256to128_from128": (lambda: F.conv_transpose2d(x128, wt, stride=2),
                                                S * S // 4 * 256 * 128 * 9 * 2),
                "conv1x1_256to128_at256": (lambda: F.conv2d(x256c, w1), S * S * 256 * 128 * 2),
            }
            w3, w4, wt, w1 = w((128, 128, 3, 3)), w((256, 128, 4, 4)), w((256, 128, 3, 3)), w((128, 256, 1, 1))
            x256c = t((b, 256, S, S))
            for name, (fn, flop) in convs.items():
                ms = cuda_ms(fn)
                res[f"{layout}/{name}"] = {"ms": ms, "tflops": round(flop * b / ms / 1e9, 1)}
            gb = x256.numel() * 2 / 1e9

            def in_ref():
                return F.instance_norm(x256, eps=1e-5)

            def in_varmean():
                v, m = torch.var_mean(x256, dim=(2, 3), keepdim=True, correction=0)
                return (x256 - m) * torch.rsqrt(v + 1e-5)

            def in_varmean_f32():
                v, m = torch.var_mean(x256.float(), dim=(2, 3), keepdim=True, correction=0)
                return ((x256 - m.to(bf)) * torch.rsqrt(v + 1e-5).to(bf))

            def in_groupnorm():
                return F.group_norm(x256, 128, eps=1e-5)

            kf = torch.tensor([1., 3, 3, 1], device=dev)
            k2 = (kf[:, None] * kf[None] / 64).to(bf)
            wdw = k2.view(1, 1, 4, 4).expand(128, 1, 4, 4).contiguous(memory_format=fmt)
            wv = (kf / 8).to(bf).view(1, 1, 4, 1).expand(128, 1, 4, 1).contiguous(memory_format=fmt)
            wh = (kf / 8).to(bf).view(1, 1, 1, 4).expand(128, 1, 1, 4).contiguous(memory_format=fmt)
            xp = F.pad(x256, (1, 2, 1, 2))

            def blur_dw():
                return F.conv2d(F.pad(x256, (1, 2, 1, 2)), wdw, groups=128)

            def blur_sep():
                return F.conv2d(F.conv2d(F.pad(x256, (1, 2, 1, 2)), wv, groups=128), wh, groups=128)

            def blur_pool():
                y = F.avg_pool2d(xp, 2, stride=1)
                y = F.avg_pool2d(y, 2, stride=1)
                return F.avg_pool2d(y, 2, stride=1)

            def blur_shift():
                y = xp[:, :, :-3] + 3 * (xp[:, :, 1:-2] + xp[:, :, 2:-1]) + xp[:, :, 3:]
                return (y[..., :-3] + 3 * (y[..., 1:-2] + y[..., 2:-1]) + y[..., 3:]) * (1 / 64)

            from g2face_eval.models import stylegan2 as sg

            mh = sg.fir_matrix([1, 3, 3, 1], S, pad=(1, 2)).div(8).to(dev, bf)
            mw = mh.clone()

            def blur_matmul():
                return sg.upfirdn2d_separable(x256, mh, mw)

            ref = blur_dw().float()
            for name, fn in [("instance_norm", in_ref), ("in_var_mean_bf16", in_varmean),
                             ("in_var_mean_f32stats", in_varmean_f32), ("in_group_norm", in_groupnorm),
                             ("blur_depthwise4x4", blur_dw), ("blur_separable", blur_sep),
                             ("blur_avgpool3", blur_pool), ("blur_shift_add", blur_shift),
                             ("blur_matmul", blur_matmul)]:
                try:
                    ms = cuda_ms(fn)
                    r = {"ms": ms, "GB_per_s_1r1w": round(2 * gb / ms * 1e3)}
                    if name.startswith("blur"):
                        r["max_err_vs_dw"] = float((fn().float() - ref).abs().max())
                    elif name != "instance_norm":
                        r["max_err_vs_in"] = float((fn().float() - in_ref().float()).abs().max())
                    res[f"{layout}/{name}"] = r
                except Exception as e:  # noqa: BLE001
                    res[f"{layout}/{name}"] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            # the layout's tensors are freed when this function returns
        for layout in ("nchw", "cl"):
            one_layout(layout)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        return res

    step("ops_256_level", ops)

    doc["done"] = True
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
