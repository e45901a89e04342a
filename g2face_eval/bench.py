"""``g2face-eval bench``: latency / throughput / peak memory of G2Face, the baselines and the metric pipeline.

What is measured (one row per cell ``suite x name x config x op x variant x batch``):

* ``suite="g2face"``: our G2Face reimplementation, ``anonymize`` and ``recover``, as full inference pipelines
  on the *fast path* (``BenchPipeline``): identity prior + geometry prior + official float2bit payload +
  keyed device noise + generator (+ hiding extractor, bit2float for ``recover``); everything on the device, no
  host round trip, no host random draw. Random weights (latency does not depend on values). Configs:
  ``official`` (G2FaceConfig(), 256 px, ArcFace iresnet50 at 112 + a ResNet-50 3DMM regressor with a 257-d
  head at 256, exactly the official pipeline's networks), ``shipped`` (the zoo's shipped checkpoint config
  when it exists, else falls back to ``small`` and says so), ``small`` (128 px, width 64), ``tiny``
  (``G2FaceConfig.tiny()``, 64 px). Small configs use our shipped geometry prior architecture (EfficientNet-
  lite0 regressor at 128) and ArcFace truncated to ``id_dim`` (the official payload needs id_dim*32 bits).
* ``suite="baseline"``: every entry of ``METHODS`` (``anonymize`` with a fixed elliptic face mask, so no
  detector runs; ``g2face`` itself is the suite above).
* ``suite="metric"``: the harness's own per-image metric work, on its own oracle objects
  (``harness.evaluate.Oracles``, as ``scripts/oracle_costs.py`` times them), whichever are available offline:
  ``embed_<recognizer>`` (alignment + embedding: SFace, the dlib ResNet port, ...), ``finds_<detector>`` (the
  subject-detection decision: YuNet, dlib HOG), ``mesh`` (face mesh of the subject), ``features_<extractor>``
  (Frechet features: EfficientNet-lite0, Inception), ``psnr``, ``ssim`` (``evaluate._psnr/_ssim``) and
  ``lpips_alex``; trained weights from the zoo, inputs = the package's embedded faces prepared as the harness
  prepares them (YuNet subject face), blurred as a stand-in output. An oracle that cannot be built is listed in
  ``metric_suite.unavailable`` and, when it is one the harness runs, recorded as a ``skipped`` row with the reason
  (``metric_suite.skipped``; without a prepared face only the face-free ones run: features, LPIPS, PSNR, SSIM).
  Host-side oracles (OpenCV / dlib / MediaPipe / the CPU recognizers) run on the CPU even in a GPU bench,
  as in the harness: ``runs_on`` says where (timed with the host clock, RSS memory).

Variants: ``fp32`` (torch defaults: cuDNN TF32 allowed, matmul TF32 off, as the reference), ``fp32_cl``
(channels_last), ``bf16`` / ``fp16`` (autocast on the generator and extractor; identity + geometry priors and
the payload stay fp32 so the hidden bits are exactly the fp32 ones), ``bf16_cl``, ``*_compile``
(torch.compile), ``*_graph`` (CUDA graph capture of the whole pipeline, GPU only), e.g. ``bf16_cl_compile``,
``bf16_cl_graph``.

Timing: ``warmup`` untimed calls, then ``repeats`` timed calls; GPU: CUDA events around each call (plus host
wall clock), CPU: ``time.perf_counter``.

Peak memory (``peak_memory_mb``) is the cell's own: the peak *increase* during its timed calls (and its last
warm-up call, which takes the page faults of the heap handed back to the kernel so the timed calls do not) over
the level just before them (``memory_baseline_mb``), as ``metrics.latency.measure`` defines it -- what was
resident before (the weights, other pipelines, Python and torch) is not counted. GPU (``memory_kind =
cuda_allocated_peak_increase``): ``max_memory_allocated - memory_allocated`` after a peak reset; plus
``peak_reserved_mb``, the caching allocator's reserved-memory peak over the whole cell (warm-up included: CUDA-graph
private pools, cuDNN workspaces) minus its level before the cell (a graph cell replays into memory reserved at
capture, so its ``peak_memory_mb`` is ~0 and ``peak_reserved_mb`` is its figure). CPU (``memory_kind =
rss_peak_increase``, Linux): free heap returned to the kernel, ``VmHWM`` reset through ``/proc/self/clear_refs``,
then ``VmHWM`` minus the RSS at the reset; NaN, ``unavailable`` and ``memory_note`` where the reset is not
allowed. Pipelines are freed between configs; the fp32 reference copy of a generator is built only when the
reference path is timed.

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` at batch 1 (conv + matmul, 2 x MAC, like the reference): the
G2Face pipelines on the ``meta`` device, the metric oracles on real inputs where they run (a failed count is
``flop_error`` in the row, never silent; host-library oracles have no counted FLOPs). The floor's rate is measured
in the same run (``matmul_rate``): on GPU the bf16 dense matmul rate of the card (8192^3); on CPU the best of
several measured kernels (fp32 matmuls at a few sizes and a dense 3x3 convolution; ``matmul_rate.kernel`` names the
winner), since a single fp32 matmul runs slower than the pipeline's own convolutions. ``floor_ms = FLOPs / rate``,
``ratio_to_floor = median / floor``; a ratio below 1 means the rate is no floor for that work and the row says so
in ``floor_note`` ("invalid floor"). No floor for a row run on another device than the bench's.

Outputs (under ``--out``, default ``<results_dir>/bench/<UTC stamp>``): ``bench.json`` (atomic; rewritten after
every cell so a killed run still leaves its results), ``bench_latency.png``, and an MLflow run (sqlite store
``<results_dir>/mlflow.db``, experiment ``g2face-eval``, tag ``g2face.kind=bench``) unless ``--no-mlflow`` or
mlflow is not installed. ``--ingest FILE`` logs an existing bench.json (e.g. one produced on a GPU machine
without mlflow) to MLflow and redraws its figure.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import re
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from g2face_eval import atomic
from g2face_eval.metrics import latency
from g2face_eval.models.g2face import set_memory_format  # noqa: F401 - re-exported (bench API)

SCHEMA = "g2face-eval/bench/v1"
ROW_FIELDS = ("suite", "name", "config", "op", "variant", "batch", "status", "median_ms", "p90_ms",
              "ms_per_image", "images_per_second", "peak_memory_mb", "memory_kind", "warmup", "repeats",
              "gflop_per_image", "floor_ms", "ratio_to_floor", "wall_median_ms", "error",
              "memory_baseline_mb", "peak_reserved_mb", "memory_note", "runs_on", "floor_note", "flop_error")
REFERENCE_DIR = Path(os.environ.get("G2FACE_REFERENCE_DIR", Path(__file__).resolve().parents[2] / "shared"
                                    / "reference"))
Z_STREAM, ANON_NOISE_STREAM, REC_NOISE_STREAM = 1, 2, 3  # same streams as models/anonymizer.py
OFFICIAL_ZERO_THRESHOLD = 50.0


# ============================================================================================ pipelines
def config_by_name(name: str):
    """(G2FaceConfig, note). ``shipped`` resolves to the zoo's shipped checkpoint config or falls back."""
    from g2face_eval.models.g2face import G2FaceConfig

    if name == "official":
        return G2FaceConfig(), "official config (G2FaceConfig())"
    if name == "small":
        return G2FaceConfig.tiny(size=128, width=64), "G2FaceConfig.tiny(size=128, width=64)"
    if name == "tiny":
        return G2FaceConfig.tiny(), "G2FaceConfig.tiny() (64 px, width 16)"
    if name == "shipped":
        shipped = _shipped()
        if shipped is not None:
            cfg, meta, _ = shipped
            return cfg, (f"shipped checkpoint g2face_shipped (trained weights; identity {meta.get('identity')}, "
                         f"geometry {meta.get('geometry')}, keyed payload)")
        cfg, _ = config_by_name("small")
        return cfg, "FALLBACK: no shipped G2Face checkpoint in the zoo -> 'small' config"
    raise ValueError(f"unknown config {name!r}; known: official, shipped, small, tiny")


def _shipped():
    """(cfg, meta, state_dict) of the zoo's shipped G2Face (safetensors), or None when unavailable."""
    try:
        from g2face_eval import zoo
        from g2face_eval.models import shipped

        if zoo.available(shipped.WEIGHT_NAME):
            return zoo.load(shipped.WEIGHT_NAME)
    except Exception:  # noqa: BLE001 - the fallback is reported in the note
        pass
    return None


class TruncatedIdentity(nn.Module):
    """ArcFace iresnet50 (random weights) -> first ``dim`` features (small configs hide id_dim*32 bits)."""

    def __init__(self, dim: int):
        super().__init__()
        from g2face_eval.models.identity import ArcFaceIdentity

        self.arcface = ArcFaceIdentity()
        self.dim = dim

    def forward(self, x_m11: torch.Tensor) -> torch.Tensor:
        return self.arcface(x_m11)[:, : self.dim]


class ResNet50Recon(nn.Module):
    """Stand-in for Deep3DFaceRecon's net_recon (ResNet-50, 257 coefficients) on the [0,1] image at full size:
    the official pipeline's geometry network, FLOP-identical; random weights, 1x1-equivalent head scaled small
    so that random outputs stay moderate."""

    def __init__(self):
        super().__init__()
        import torchvision

        self.net = torchvision.models.resnet50(num_classes=257)
        nn.init.normal_(self.net.fc.weight, std=0.01)
        nn.init.zeros_(self.net.fc.bias)

    def forward(self, x_m11: torch.Tensor) -> torch.Tensor:
        return self.net((x_m11 + 1) * 0.5)

    def coefficients(self, x_m11: torch.Tensor) -> torch.Tensor:
        return self(x_m11)  # through __call__, so FLOP counting attributes it to this module


class LmmGeometry(nn.Module):
    """Our shipped geometry prior's architecture (EfficientNet-lite0 regressor) -> 147-d style condition
    (normalisation constants are buffers of the trunk, see models/geometry.py)."""

    def __init__(self):
        super().__init__()
        from g2face_eval.models.geometry import GeometryPrior

        self.prior = GeometryPrior()

    def forward(self, x_m11: torch.Tensor) -> torch.Tensor:
        return self.prior.style_condition(self.prior.coefficients(x_m11))

    def coefficients(self, x_m11: torch.Tensor) -> torch.Tensor:
        return self(x_m11)  # through __call__, so FLOP counting attributes it to this module


def _seed_bn(module: nn.Module, x: torch.Tensor) -> None:
    """Set BatchNorm running stats from one random batch (as the reference) so random nets stay finite."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    module.train()
    with torch.no_grad():
        module(x)
    module.eval()


class BenchPipeline(nn.Module):
    """The networks of one config + the two inference paths of ``models/anonymizer.G2FaceAnonymizer`` on them:
    ``fast`` (fast=True, the default inference path) and ``ref`` (fast=False, the fp32 reference path, on its
    own copy of the generator so the fast path's weight cache cannot leak into it; the copy is made on first use
    of ``ref``, so a bench that does not time the reference path never holds it).

    Tensor API used by the sync check, the FLOP count and the fidelity section: ``anonymize(images01, seeds)``
    / ``recover(images01, seeds)`` = ``fast.anonymize_tensors`` / ``fast.recover_tensors`` (official payload,
    all on the device). For a keyed-payload config (``shipped``) the tensor API replaces the host AEAD/RS step
    by seed-derived device bits of the same shape (FLOPs and sync check only); timed rows go through the
    ``Anonymizer`` API (keys, host cryptography included).
    """

    def __init__(self, cfg, identity: nn.Module, geometry: nn.Module, name: str = "", model=None,
                 payload: str = "official"):
        super().__init__()
        from g2face_eval.models.g2face import G2Face

        self.cfg = cfg
        self.name = name
        self.payload_mode = payload
        self.model = (model if model is not None else G2Face(cfg, with_discriminator=False)).eval()
        self.identity = identity.eval()
        self.geometry = geometry.eval()
        self.fast = None
        self._ref = None
        self._anon_kw: dict = {}

    def attach(self) -> BenchPipeline:
        """Build the fast-path anonymizer on the modules' current device (the reference one: ``ref``)."""
        from g2face_eval.models.anonymizer import G2FaceAnonymizer

        dev = next(self.model.parameters()).device
        self._anon_kw = dict(identity=self.identity, geometry=self.geometry, payload=self.payload_mode,
                             noise="keyed", device=dev)
        self.fast = G2FaceAnonymizer(self.model, fast=True, **self._anon_kw)
        self._ref = None
        return self

    @property
    def ref(self):
        """The fp32 reference path (``G2FaceAnonymizer(fast=False)``) on a deep copy of the generator, made on
        first use (from the weights in the default layout, without the fast path's weight cache)."""
        if self._ref is None and self.fast is not None:
            import copy

            from g2face_eval.models.anonymizer import G2FaceAnonymizer

            self.model.set_inference_cache(False)       # do not copy the fast path's cached weights
            try:
                model = copy.deepcopy(self.model)
            finally:
                self.model.set_inference_cache(True)    # the fast path's setting; rebuilt lazily on its next call
            set_memory_format(model, torch.contiguous_format)
            self._ref = G2FaceAnonymizer(model, fast=False, **self._anon_kw)
        return self._ref

    def drop_reference(self) -> None:
        """Free the reference path's copy of the generator (made again on the next use of ``ref``)."""
        self._ref = None

    # ---- variant switches (the bench sets these; memory format of the weights is set by the caller)
    @property
    def amp_dtype(self):
        return self.fast.amp_dtype if self.fast is not None else None

    @amp_dtype.setter
    def amp_dtype(self, v):
        self.fast.amp_dtype = v

    @property
    def channels_last(self) -> bool:
        return bool(self.fast is not None and self.fast.channels_last)

    @channels_last.setter
    def channels_last(self, v: bool):
        self.fast.channels_last = bool(v)

    # ---- payload (official float2bit / bit2float, on device, constants built once)
    def float2bit(self, x: torch.Tensor) -> torch.Tensor:
        return self._official().float2bit_fast(x)

    def bit2float(self, bits: torch.Tensor) -> torch.Tensor:
        return self._official().bit2float_fast(bits)

    def _official(self):
        from g2face_eval.models.payload import OfficialPayload

        p = self.fast.payload
        return p if isinstance(p, OfficialPayload) else OfficialPayload(self.cfg.id_dim)

    def noise(self, seeds: torch.Tensor, stream: int) -> list[torch.Tensor]:
        return self.fast.keyed_noise(seeds, stream)

    def anonymize(self, images01: torch.Tensor, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.payload_mode == "official":
            return self.fast.anonymize_tensors(images01, seeds)
        from g2face_eval.models.g2face import keyed_normal

        f = self.fast
        with torch.no_grad():
            x = images01 * 2 - 1
            coeffs, _ = f._seg_priors(x)
            bits = (keyed_normal(seeds, (self.cfg.n_bits,), 99) > 0).to(torch.float32)  # stand-in payload
            return f._seg_anon(x, coeffs, bits, seeds), bits

    def recover(self, images01: torch.Tensor, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.payload_mode == "official":
            return self.fast.recover_tensors(images01, seeds)
        f = self.fast
        with torch.no_grad():
            y = images01 * 2 - 1
            logits, coeffs = f._seg_extract(y)
            bits = (torch.sigmoid(logits) > 0.5).to(torch.float32)
            ident = torch.zeros(y.shape[0], self.cfg.id_dim, device=y.device)                # stand-in
            return f._seg_rec(y, ident, coeffs, bits, seeds), bits


def build_pipeline(config: str, device: str | torch.device = "cpu", seed: int = 0) -> BenchPipeline:
    cfg, note = config_by_name(config)
    torch.manual_seed(seed)
    dev = torch.device(device)
    model, payload, trained = None, "official", False
    if config == "shipped" and note.startswith("shipped"):
        from g2face_eval.models.g2face import G2Face
        from g2face_eval.models.geometry import GeometryPrior
        from g2face_eval.models.identity import get_identity_prior

        _, meta, sd = _shipped()
        ident: nn.Module = get_identity_prior(meta.get("identity", "sface"))
        model = G2Face(cfg, with_discriminator=False)
        if dev.type == "meta":
            geom: nn.Module = GeometryPrior()
        else:
            model.load_state_dict(sd, strict=True)
            geom = GeometryPrior.load()
        payload, trained = "keyed", True
    elif cfg.size == 256 and cfg.channel_base == 512:
        from g2face_eval.models.identity import ArcFaceIdentity

        ident = ArcFaceIdentity()
        geom = ResNet50Recon()
    else:
        ident, geom = TruncatedIdentity(cfg.id_dim), LmmGeometry()
    g = torch.Generator().manual_seed(seed + 1)
    if dev.type != "meta" and not trained:
        xb = torch.rand(4, 3, cfg.size, cfg.size, generator=g) * 2 - 1
        _seed_bn(ident, xb)
        _seed_bn(geom, xb)
    p = BenchPipeline(cfg, ident, geom, name=config, model=model, payload=payload)
    p.note = note  # type: ignore[attr-defined]
    if dev.type != "meta" and not trained:
        # random-init Map2ID BatchNorm is identity (mean 0, var 1); keep it
        _seed_bn(p.model.hiding_extractor, torch.rand(2, 3, cfg.size, cfg.size, generator=g) * 2 - 1)
    return p.to(dev).eval().requires_grad_(False).attach()


# ============================================================================================ host-sync check
SYNC_OPS = frozenset({"aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::nonzero_static",
                      "aten::is_nonzero", "aten::equal", "aten::masked_select", "aten::_unique",
                      "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive", "aten::allclose",
                      "aten::_assert_async", "aten::repeat_interleave", "aten::bincount"})


class HostSyncDetector:
    """Context manager that records host-syncing or host-side work inside a forward:

    * aten ops that read a value back to the host or have data-dependent output shapes (``SYNC_OPS``:
      ``.item()`` = _local_scalar_dense, nonzero, masked_select, unique, ...);
    * device transfers: ``_to_copy`` / ``copy_`` whose input and output devices differ (``.cpu()``,
      ``.tolist()`` goes through _local_scalar_dense, module-level CPU constants moved per call);
    * python-data tensor construction: ``torch.tensor`` / ``torch.as_tensor`` of python scalars/lists (an
      H2D copy from pageable memory on CUDA);
    * host random draws: any random op that produces a CPU tensor while the computation is on another device.

    Run the forward on the ``meta`` device to see transfers without a GPU (everything on meta; any CPU tensor
    that meets it is a host->device copy), or on CPU to see only the op-level syncs.
    """

    RANDOM = ("aten::randn", "aten::rand", "aten::normal", "aten::randint", "aten::bernoulli",
              "aten::uniform_", "aten::normal_", "aten::random_", "aten::randperm", "aten::multinomial")

    def __init__(self, device: str | torch.device):
        self.device = torch.device(device)
        self.events: list[str] = []

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        det = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                name = func.name()
                base = name.split(".")[0]
                if base in SYNC_OPS:
                    det.events.append(f"sync op {name}")
                out = func(*args, **kwargs)
                if base in ("aten::_to_copy", "aten::copy_", "aten::to"):
                    src = [a.device for a in args if isinstance(a, torch.Tensor)]
                    dst = [o.device for o in (out if isinstance(out, (list, tuple)) else [out])
                           if isinstance(o, torch.Tensor)]
                    if src and dst and any(s != d for s in src for d in dst):
                        det.events.append(f"device transfer {name} {src[0]}->{dst[0]}")
                if base in det.RANDOM and det.device.type != "cpu":
                    outs = out if isinstance(out, (list, tuple)) else [out]
                    if any(isinstance(o, torch.Tensor) and o.device.type == "cpu" for o in outs):
                        det.events.append(f"host random draw {name}")
                return out

        self._mode = _Mode()
        self._orig = (torch.tensor, torch.as_tensor)
        orig_tensor, orig_as_tensor = self._orig

        def _py_data(data) -> bool:
            return not isinstance(data, (torch.Tensor, np.ndarray))

        def tensor(data, *a, **k):
            if _py_data(data):
                det.events.append(f"torch.tensor(python data, device={k.get('device')})")
            return orig_tensor(data, *a, **k)

        def as_tensor(data, *a, **k):
            if _py_data(data):
                det.events.append(f"torch.as_tensor(python data, device={k.get('device')})")
            return orig_as_tensor(data, *a, **k)

        torch.tensor, torch.as_tensor = tensor, as_tensor  # type: ignore[assignment]
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        torch.tensor, torch.as_tensor = self._orig  # type: ignore[assignment]
        if exc[0] is not None and "meta tensors" in str(exc[1]):
            self.events.append(f"host read on meta: {exc[1]}")
            return True  # .item() on meta = a host read; recorded, swallowed
        return False


def sync_check(config: str = "tiny", device: str = "meta", ops=("anonymize", "recover"), batch: int = 2
               ) -> dict[str, list[str]]:
    """Run the fast path under ``HostSyncDetector``; returns {op: [events]} (empty lists = clean)."""
    p = build_pipeline(config, device)
    x = torch.rand(batch, 3, p.cfg.size, p.cfg.size, device=device)
    seeds = torch.arange(batch, dtype=torch.int64, device=device) + 12345
    res = {}
    for op in ops:
        det = HostSyncDetector(device)
        with torch.no_grad(), det:
            getattr(p, op)(x, seeds)
        res[op] = det.events
    return res


# ============================================================================================ FLOPs + rate
def count_flops(fn: Callable[[], object]) -> tuple[float, dict[str, float]]:
    """(total FLOPs, {module: FLOPs}) of one call; conv + matmul only, 2 x MAC (FlopCounterMode). The FIR
    layers are counted in their direct form (``stylegan2.direct_fir``: 16 multiply-adds per output, as the
    reference's native-op count), not as the banded matrix products they run as."""
    from torch.utils.flop_counter import FlopCounterMode

    from g2face_eval.models.stylegan2 import direct_fir

    with FlopCounterMode(display=False) as fc, torch.no_grad(), direct_fir():
        fn()
    per_mod = {k: float(sum(v.values())) for k, v in fc.get_flop_counts().items()}
    return float(fc.get_total_flops()), per_mod


def weight_count(module: nn.Module) -> int:
    """Elements of a module's weights: its parameters plus its persistent floating-point buffers (networks ported
    from ONNX / TorchScript, e.g. SFace, keep their folded weights as buffers); BatchNorm running statistics and
    non-persistent buffers (caches, derived constants) are not weights."""
    seen: set[int] = set()
    n = 0
    for t in module.parameters():
        if id(t) not in seen:
            seen.add(id(t))
            n += t.numel()
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            continue
        for name, b in m.named_buffers(recurse=False):
            if (b is None or not b.is_floating_point() or name in m._non_persistent_buffers_set
                    or id(b) in seen):
                continue
            seen.add(id(b))
            n += b.numel()
    return n


def pipeline_flops(config: str) -> dict:
    """GFLOP per image (batch 1, meta device) of anonymize / recover as the fast path runs them, with a coarse
    breakdown, and ``*_official_form``: the same function in the official form (at 256 px 4.3 GFLOP more: the
    fusion masks' 1x1 convolutions over the materialised 128 and 64 px hiding injections, which the fast path
    replaces by table lookups, ``G2FaceGenerator.fold_binary_bits``). The priors are
    counted through the calls the fast path makes (``G2FaceAnonymizer._identity`` / ``_geometry``), so a prior
    whose entry point is a method rather than ``__call__`` (the shipped ``GeometryPrior.coefficients``) is
    attributed; the generator's parts by module name."""
    p = build_pipeline(config, "meta")
    x = torch.rand(1, 3, p.cfg.size, p.cfg.size, device="meta")
    s = torch.zeros(1, dtype=torch.int64, device="meta")
    xm = x * 2 - 1
    priors = {"identity_prior": count_flops(lambda: p.fast._identity(xm))[0] / 1e9,
              "geometry_prior": count_flops(lambda: p.fast._geometry(xm))[0] / 1e9}
    out: dict = {}
    for op in ("anonymize", "recover"):
        total, per = count_flops(lambda op=op: getattr(p, op)(x, s))
        out[f"{op}_gflop_per_image"] = total / 1e9
        if op == "anonymize":
            labels = {"generator": ("G2FaceGenerator",), "pyramid_encoder": ("G2FaceGenerator.pyramid",),
                      "fusion_masks": ("G2FaceGenerator.fusion_mask",),
                      "hiding_injects": ("G2FaceGenerator.hiding_injects",),
                      "stylegan_convs": ("G2FaceGenerator.conv1", "G2FaceGenerator.convs"),
                      "to_rgbs": ("G2FaceGenerator.to_rgb1", "G2FaceGenerator.to_rgbs"),
                      "style_mlp": ("StyleMLP",), "map2id": ("Map2ID",)}

            # a ModuleList is not called itself: sum its direct children
            def mod(prefix: str, per: dict = per) -> float:
                if prefix in per:
                    return per[prefix]
                d = prefix.count(".") + 1
                return sum(v for k, v in per.items() if k.startswith(prefix + ".") and k.count(".") == d)

            parts = {lab: sum(mod(k) for k in keys) / 1e9 for lab, keys in labels.items()}
            out["anonymize_breakdown_gflop"] = {**priors, **parts}
    # the official form of the same function (the hiding injections materialised, G2FaceGenerator.fold_binary_bits
    # off): what the reference counts; the pipeline as it runs does less (the floor is taken from that)
    from g2face_eval.models import g2face

    fold, g2face.FOLD_BINARY_BITS = g2face.FOLD_BINARY_BITS, False
    try:
        for op in ("anonymize", "recover"):
            out[f"{op}_gflop_per_image_official_form"] = count_flops(lambda op=op: getattr(p, op)(x, s))[0] / 1e9
    finally:
        g2face.FOLD_BINARY_BITS = fold
    # weights as parameters + weight buffers (weight_count): SFace's are all buffers
    out["params_M"] = {k: weight_count(getattr(p, k)) / 1e6 for k in ("model", "identity", "geometry")}
    return out


CPU_RATE_MATMULS = (512, 1024, 1536)        # n of the n^3 matmuls of the CPU rate
CPU_RATE_CONV = (4, 256, 28, 28)            # (B, C, H, W) of the dense 3x3 convolution (C -> C, padding 1)


def _kernel_rate(fn: Callable[[], object], flops: float, device: torch.device, seconds: float) -> tuple[float, int]:
    """(TFLOP/s, reps) of ``fn`` (``flops`` per call): 2 warm-up calls, then calls until ``seconds`` and >= 3."""
    for _ in range(2):
        fn()
    _sync(device)
    reps, t0 = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        _sync(device)
        if time.perf_counter() - t0 > seconds and reps >= 3:
            break
    return flops * reps / (time.perf_counter() - t0) / 1e12, reps


def matmul_rate(device: torch.device, seconds: float = 1.0, dtype: torch.dtype | None = None,
                tf32: bool = False) -> dict:
    """The floor's denominator in TFLOP/s, measured. GPU: the dense bf16 8192^3 matmul rate of the card (``dtype``
    / ``tf32``: another precision, e.g. fp32 with TF32 matmuls, the precision the fp32 priors run in; recorded by
    the scripts, not used by the bench's floor). CPU: the best of several measured kernels in ``dtype`` (default
    fp32) -- matmuls at ``CPU_RATE_MATMULS`` sizes and a dense 3x3 convolution (``CPU_RATE_CONV``; NCHW and
    channels_last, the layouts the variants run in), FLOPs counted
    by ``FlopCounterMode`` like the pipelines' -- because one fp32 matmul runs slower than the pipelines' own
    convolutions on CPU (oneDNN), which made ratio_to_floor < 1. ``seconds`` is the total measuring time.
    Returns ``tflops`` (the best), ``kernel`` (which kernel gave it), ``kernels`` (every kernel's TFLOP/s),
    ``dtype``, ``n`` (the best kernel's matmul size, None for the convolution), ``reps``, ``threads``."""
    from torch.utils.flop_counter import FlopCounterMode

    cuda = device.type == "cuda"
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    kernels: dict[str, tuple[Callable[[], object], float, int | None]] = {}
    for n in ((8192,) if cuda else CPU_RATE_MATMULS):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        kernels[f"matmul_{n}"] = (lambda a=a, b=b: a @ b, 2.0 * n ** 3, n)
    if not cuda:
        bs, c, h, w = CPU_RATE_CONV
        for fmt, suffix in ((torch.contiguous_format, ""), (torch.channels_last, "_cl")):
            x = torch.randn(bs, c, h, w, device=device, dtype=dtype).contiguous(memory_format=fmt)
            wt = torch.randn(c, c, 3, 3, device=device, dtype=dtype).contiguous(memory_format=fmt)

            def conv(x=x, wt=wt):
                with torch.no_grad():
                    return F.conv2d(x, wt, padding=1)

            with FlopCounterMode(display=False) as fc:
                conv()
            kernels[f"conv3x3_{c}ch_{h}px_b{bs}{suffix}"] = (conv, float(fc.get_total_flops()), None)
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
    rates: dict[str, tuple[float, int]] = {}
    try:
        for name, (fn, flops, _) in kernels.items():
            rates[name] = _kernel_rate(fn, flops, device, seconds / len(kernels))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_tf32
    best = max(rates, key=lambda k: rates[k][0])
    return {"dtype": str(dtype).replace("torch.", "") + ("+tf32" if tf32 and cuda else ""),
            "n": kernels[best][2], "reps": rates[best][1], "tflops": rates[best][0], "kernel": best,
            "kernels": {k: v[0] for k, v in rates.items()}, "threads": torch.get_num_threads()}


# ============================================================================================ timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def record_step(steps: dict, name: str, fn: Callable[[], dict | None]) -> dict:
    """``steps[name] = fn()`` plus its wall time; an exception is recorded as ``{"error": ...}`` (traceback
    printed) so a one-call device script goes on to its next step. Used by the scripts/gpu_*.py checks."""
    import traceback

    t = time.perf_counter()
    try:
        res = fn() or {}
    except Exception as e:  # noqa: BLE001 - recorded, the script continues
        traceback.print_exc()
        res = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
    steps[name] = {**res, "wall_s": round(time.perf_counter() - t, 1)}
    return steps[name]


def time_fn(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> dict:
    """``warmup`` untimed calls, then ``repeats`` timed ones (CUDA events on a CUDA device, else perf_counter).

    Memory is the cell's own, as ``metrics.latency.measure`` defines it: ``peak_memory_mb`` = the peak increase
    over the level just before the measured calls (``memory_baseline_mb``); the measured calls are the timed ones
    and the last warm-up call (when ``warmup`` >= 1), which takes the page faults of the heap handed back to the
    kernel on CPU so that they do not slow the timed calls (``metrics.latency`` lets its first timed run take
    them). CUDA (``memory_kind`` ``cuda_allocated_peak_increase``): allocated bytes on ``device``; plus
    ``peak_reserved_mb``, the reserved (caching allocator) peak over the whole cell (every warm-up call included)
    minus the reserved level before it -- a CUDA-graph cell replays into the private pool reserved at capture,
    which only this figure shows. CPU (``rss_peak_increase``): the free heap handed back to the kernel and
    ``VmHWM`` reset (``metrics.latency`` helpers), then VmHWM minus the RSS at the reset; where the reset is
    impossible NaN, ``unavailable`` and ``memory_note``."""
    cuda = device.type == "cuda"
    if cuda:
        _sync(device)
        reserved0 = torch.cuda.memory_reserved(device)
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup - 1):
        fn()
    _sync(device)
    base, note = float("nan"), ""
    if cuda:
        reserved_warm = torch.cuda.max_memory_reserved(device)
        torch.cuda.reset_peak_memory_stats(device)
        base_b = torch.cuda.memory_allocated(device)
        base = base_b / 2 ** 20
    else:
        latency.release_free_heap()
        try:
            base = latency.reset_rss_peak()
        except OSError as e:
            note = f"cannot reset the resident-set peak: {type(e).__name__}: {e}"
    if warmup >= 1:  # the last warm-up call, inside the memory window
        fn()
        _sync(device)
    ev, wall = [], []
    for _ in range(repeats):
        if cuda:
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0 = time.perf_counter()
            s.record()
            fn()
            e.record()
            e.synchronize()
            wall.append((time.perf_counter() - t0) * 1e3)
            ev.append(float(s.elapsed_time(e)))
        else:
            t0 = time.perf_counter()
            fn()
            wall.append((time.perf_counter() - t0) * 1e3)
    t = np.asarray(ev if cuda else wall)
    res = {"median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)),
           "wall_median_ms": float(np.median(wall)), "times_ms": [round(float(v), 4) for v in t]}
    if cuda:
        _sync(device)
        res["peak_memory_mb"] = (torch.cuda.max_memory_allocated(device) - base_b) / 2 ** 20
        res["memory_kind"] = latency.KIND_CUDA
        res["peak_reserved_mb"] = (max(reserved_warm, torch.cuda.max_memory_reserved(device)) - reserved0) / 2 ** 20
    elif not note:
        try:
            res["peak_memory_mb"] = max(0.0, latency.rss_peak_mb() - base)
            res["memory_kind"] = latency.KIND_RSS
        except OSError as e:
            note = f"cannot read VmHWM: {type(e).__name__}: {e}"
    if note:
        res["peak_memory_mb"], res["memory_kind"], res["memory_note"] = float("nan"), latency.KIND_UNAVAILABLE, note
        base = float("nan")
    res["memory_baseline_mb"] = base
    return res


# ============================================================================================ variants
def parse_variant(v: str) -> dict:
    parts = v.split("_")
    if parts[0] not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"variant {v!r} must start with fp32|bf16|fp16")
    bad = [p for p in parts[1:] if p not in ("cl", "compile", "graph")]
    if bad:
        raise ValueError(f"variant {v!r}: unknown parts {bad}; allowed suffixes _cl, _compile, _graph")
    return {"amp": {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[parts[0]],
            "cl": "cl" in parts, "compile": "compile" in parts, "graph": "graph" in parts}


def make_callable(fn: Callable[..., object], inputs: tuple, device: torch.device, spec: dict
                  ) -> Callable[[], object]:
    """Wrap ``fn(*inputs)`` for a variant: torch.compile and/or CUDA graph capture (static inputs)."""
    f = fn
    if spec["compile"]:
        f = torch.compile(fn, dynamic=False)
    if spec["graph"]:
        if device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        static = tuple(t.clone() for t in inputs)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(3):
                f(*static)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            graph_out = f(*static)
        def replay():
            graph.replay()
            return graph_out  # static output buffers, overwritten by the next replay

        return replay

    def call():
        with torch.no_grad():
            return f(*inputs)

    return call


class CellTimeout(Exception):
    pass


@contextlib.contextmanager
def alarm(seconds: float):
    """Raise CellTimeout in the main thread after ``seconds`` (0 = no limit; POSIX main thread only)."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    if not seconds or not main or not hasattr(signal, "SIGALRM"):
        yield
        return

    def _raise(*_):
        raise CellTimeout(f"cell exceeded --compile-timeout {seconds:g} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ============================================================================================ the sweep
@dataclass
class Cell:
    suite: str
    name: str
    config: str
    op: str
    variant: str
    batch: int


class Bench:
    def __init__(self, args, out_dir: Path):
        self.args = args
        self.device = torch.device(args.device)
        if self.device.type == "cuda" and self.device.index is not None:
            # cuda:N: everything that works on "the current device" (CUDA graph capture streams, torch.compile,
            # cuDNN/cuBLAS handles, bare "cuda" tensors) must run on GPU N, not on cuda:0
            torch.cuda.set_device(self.device)
        self.out_dir = out_dir
        self.t0 = time.perf_counter()
        self.doc: dict = {
            "schema": SCHEMA, "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "status": "running", "argv": args.argv, "device": device_info(self.device),
            "settings": {"warmup": args.warmup, "repeats": args.repeats, "batches": args.batches,
                         "variants": args.variants, "configs": args.configs, "suites": args.suites,
                         "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                         "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                         "cudnn_benchmark": torch.backends.cudnn.benchmark,
                         "max_gflop_per_call": args.max_gflop_per_call, "time_budget_s": args.time_budget},
            "configs": {}, "flops": {}, "matmul_rate": None, "fidelity": {}, "sync_check": {},
            "metric_suite": {}, "results": [], "notes": [],
        }
        # the official numbers on the same kind of card (none on CPU or another card)
        self.doc["reference"] = load_reference(self.doc["device"].get("name"))
        self._pipes: dict[str, BenchPipeline] = {}
        self._build_errors: dict[str, str] = {}      # config -> why its pipeline cannot be built
        self._build_error_rows: set[str] = set()     # configs whose build error rows are written
        self.budget_skipped = 0                      # rows skipped for lack of time budget (-> status partial)

    # ---- bookkeeping
    def save(self) -> None:
        atomic_write_json(self.out_dir / "bench.json", self.doc)

    def over_budget(self) -> bool:
        return self.args.time_budget > 0 and time.perf_counter() - self.t0 > self.args.time_budget

    def row(self, cell: Cell, **kw) -> dict:
        r = {k: None for k in ROW_FIELDS}
        r.update(suite=cell.suite, name=cell.name, config=cell.config, op=cell.op, variant=cell.variant,
                 batch=cell.batch, warmup=self.args.warmup, repeats=self.args.repeats, runs_on=str(self.device))
        r.update(kw)
        self.doc["results"].append(r)
        self.save()
        msg = (f"{r['status']:>7} {cell.suite}/{cell.name}/{cell.config}/{cell.op}/{cell.variant}"
               f"/b{cell.batch}")
        if r["status"] == "ok":
            msg += (f": median {r['median_ms']:.2f} ms, p90 {r['p90_ms']:.2f} ms, "
                    f"{r['images_per_second']:.1f} img/s")
            if r.get("ratio_to_floor"):
                msg += f", {r['ratio_to_floor']:.1f}x floor"
            if r.get("floor_note"):
                msg += f" ({r['floor_note']})"
        else:
            msg += f": {r.get('error')}"
        print(msg, flush=True)
        return r

    def skip_for_budget(self, cell: Cell, reason: str) -> dict:
        """A ``skipped`` row for lack of time budget (the run's status is then ``partial``)."""
        self.budget_skipped += 1
        return self.row(cell, status="skipped", error=reason)

    def measure(self, cell: Cell, fn: Callable[[], object] | None, gflop_per_image: float | None = None, *,
                make: Callable[[], Callable[[], object]] | None = None, limit: float = 0.0,
                cleanup: Callable[[], None] | None = None, runs_on: str | None = None,
                flop_error: str | None = None, floor_note: str | None = None) -> dict:
        """Time one cell and write its row. ``fn``: the timed call; or ``make()`` returns it (its preparation,
        e.g. recover's anonymized input, runs under the same ``limit`` alarm as the timing). ``cleanup`` runs after
        either way. The row is written only after the alarm is off, so a late alarm cannot add a second row.
        ``runs_on``: the device the work runs on when it is not the bench's (host oracles of a GPU bench): timed
        with that device's clock and memory figure, and no floor (the rate is the bench device's)."""
        if self.over_budget():
            return self.skip_for_budget(cell, "time budget exhausted")
        dev = torch.device(runs_on) if runs_on is not None else self.device
        try:
            try:
                with alarm(limit):
                    t = time_fn(make() if make is not None else fn, dev, self.args.warmup, self.args.repeats)
            finally:
                if cleanup is not None:
                    cleanup()
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        except Exception as e:  # noqa: BLE001 - a failing cell is a result, not a crash
            traceback.print_exc()
            return self.row(cell, status="error", runs_on=str(dev), error=f"{type(e).__name__}: {str(e)[:300]}",
                            flop_error=flop_error)
        kw = dict(status="ok", runs_on=str(dev), median_ms=t["median_ms"], p90_ms=t["p90_ms"],
                  wall_median_ms=t["wall_median_ms"],
                  ms_per_image=t["median_ms"] / cell.batch,
                  images_per_second=cell.batch / (t["median_ms"] / 1e3) if t["median_ms"] > 0 else None,
                  peak_memory_mb=t["peak_memory_mb"], memory_kind=t["memory_kind"],
                  memory_baseline_mb=t.get("memory_baseline_mb"), peak_reserved_mb=t.get("peak_reserved_mb"),
                  memory_note=t.get("memory_note"), times_ms=t["times_ms"], flop_error=flop_error,
                  floor_note=floor_note)
        rate_doc = self.doc.get("matmul_rate") or {}
        rate = rate_doc.get("tflops")
        if gflop_per_image:
            kw["gflop_per_image"] = gflop_per_image
            if rate and dev.type != self.device.type:
                kw["floor_note"] = f"no floor: runs on {dev}, the measured rate is {self.device}'s"
            elif rate:
                kw["floor_ms"] = gflop_per_image * cell.batch / rate  # GFLOP / (TFLOP/s) = ms
                kw["ratio_to_floor"] = t["median_ms"] / kw["floor_ms"]
                if kw["ratio_to_floor"] < 1:
                    kw["floor_note"] = (f"INVALID floor: measured {kw['ratio_to_floor']:.2f}x the floor, faster than "
                                        f"the rate of {rate_doc.get('kernel', 'the rate kernel')} "
                                        f"({rate:.3g} TFLOP/s), which is therefore no peak of this device")
        return self.row(cell, **kw)

    # ---- pieces
    def pipe(self, config: str) -> BenchPipeline:
        """The pipeline of ``config`` on the bench device. Any other config's pipeline is freed first: one config's
        networks are resident at a time (a build failure is remembered, not retried)."""
        if config in self._build_errors:
            raise RuntimeError(self._build_errors[config])
        for other in [c for c in self._pipes if c != config]:
            self.release(other)
        if config not in self._pipes:
            try:
                p = build_pipeline(config, self.device)
            except Exception as e:
                self._build_errors[config] = f"{type(e).__name__}: {str(e)[:300]}"
                raise
            self._pipes[config] = p
            self.doc["configs"][config] = {"note": p.note, **p.cfg.to_dict(),  # type: ignore[attr-defined]
                                           "identity": type(p.identity).__name__,
                                           "geometry": type(p.geometry).__name__}
        return self._pipes[config]

    def release(self, config: str | None = None) -> None:
        """Free the pipeline of ``config`` (all when None) and hand the freed memory back."""
        for c in [config] if config is not None else list(self._pipes):
            self._pipes.pop(c, None)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def run(self) -> dict:
        a = self.args
        print(f"g2face-eval bench -> {self.out_dir} (device {self.device}, {self.doc['device'].get('name')})",
              flush=True)
        self.doc["matmul_rate"] = matmul_rate(self.device)
        print(f"matmul rate: {self.doc['matmul_rate']}", flush=True)
        if "g2face" in a.suites:
            for c in a.configs:
                try:
                    self.doc["flops"][c] = pipeline_flops(c)
                except Exception as e:  # noqa: BLE001
                    self.doc["flops"][c] = {"error": f"{type(e).__name__}: {e}"}
            self.save()
            if not a.no_checks:
                self.checks()
            self.g2face(compiled=False)
        if "baselines" in a.suites:
            self.baselines()
        if "metrics" in a.suites:
            self.metrics()
        if "g2face" in a.suites:  # torch.compile cells last: they are the slowest to prepare
            self.g2face(compiled=True)
        self.release()
        self.doc["errors"] = sum(r.get("status") == "error" for r in self.doc["results"])
        self.doc["status"] = run_status(self.doc, self.budget_skipped)
        self.doc["wall_s"] = time.perf_counter() - self.t0
        self.save()
        return self.doc

    def checks(self) -> None:
        """Host-sync check (meta device) and fidelity of each variant vs fp32 on the smallest config; a config
        that cannot be built or run there (e.g. a missing package) gives way to the next smallest."""
        try:
            self.doc["sync_check"] = {"config": "tiny", "device": "meta",
                                      "events": sync_check("tiny", "meta")}
        except Exception as e:  # noqa: BLE001
            self.doc["sync_check"] = {"error": f"{type(e).__name__}: {e}"}
        failed: dict[str, str] = {}
        fid: dict = {"error": "no config to check"}
        for cfg_name in sorted(dict.fromkeys(self.args.configs), key=lambda c: config_by_name(c)[0].size):
            try:
                fid = fidelity(self.pipe(cfg_name), self.device, self.args.variants,
                               with_compile=self.args.fidelity_compile)
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                failed[cfg_name] = f"{type(e).__name__}: {str(e)[:300]}"
                fid = {"error": f"no config could be checked: {failed}"}
                continue
            fid["config"] = cfg_name
            break
        if failed:
            fid["failed_configs"] = failed
        self.doc["fidelity"] = fid
        self.save()

    def g2face(self, compiled: bool) -> None:
        """Cells name ``g2face`` (the fast path, every variant) and ``g2face_reference`` (the fp32 reference
        path, variant fp32 only, unless --no-reference), both through the ``Anonymizer`` API with per-image keys
        (so the keyed payload's host cryptography is included where the config uses it). One config's pipeline
        is resident at a time (freed after its cells)."""
        a = self.args
        for config in a.configs:
            variants = [v for v in a.variants if parse_variant(v)["compile"] == compiled]
            if not variants:
                continue
            try:
                p = self.pipe(config)
            except Exception as e:  # noqa: BLE001 - e.g. a prior's package missing on the device image
                if config not in self._build_error_rows:
                    self._build_error_rows.add(config)
                    traceback.print_exc()
                    for op in a.ops:
                        self.row(Cell("g2face", "g2face", config, op, "*", 0), status="error",
                                 error=f"build: {type(e).__name__}: {str(e)[:300]}")
                continue
            try:
                self._g2face_config(p, config, variants)
            finally:
                del p
                self.release(config)

    def _compile_filter(self, spec: dict, op: str, batch: int) -> str | None:
        """Why a *_compile cell is not run (--compile-ops / --compile-batches), or None."""
        a = self.args
        if not spec["compile"]:
            return None
        why = []
        if op not in a.compile_ops:
            why.append(f"op {op} not in --compile-ops {','.join(a.compile_ops)}")
        if batch not in a.compile_batches:
            why.append(f"batch {batch} not in --compile-batches {','.join(map(str, a.compile_batches))}")
        return "; ".join(why) or None

    def _g2face_config(self, p: BenchPipeline, config: str, variants: list[str]) -> None:
        a = self.args
        fl = self.doc["flops"].get(config, {})
        for variant in variants:
            spec = parse_variant(variant)
            impls = ["g2face"] + (["g2face_reference"] if a.reference and variant == "fp32" else [])
            if len(impls) > 1:
                p.ref  # noqa: B018 - the reference copy made here, before this variant's cells, outside any of them
            for op in a.ops:
                gf = fl.get(f"{op}_gflop_per_image")
                for b in a.batches:
                    why = self._compile_filter(spec, op, b)
                    for impl in impls:
                        cell = Cell("g2face", impl, config, op, variant, b)
                        if why:
                            self.row(cell, status="skipped", error=why)
                        else:
                            self._g2face_maybe(p, cell, spec, gf)
            p.drop_reference()  # the reference copy is timed with variant fp32 only

    def _g2face_maybe(self, p: BenchPipeline, cell: Cell, spec: dict, gf: float | None) -> None:
        a = self.args
        b = cell.batch
        left = a.time_budget - (time.perf_counter() - self.t0)
        if spec["compile"] and a.time_budget > 0 and left < a.compile_reserve:
            self.skip_for_budget(
                cell, f"only {left:.0f} s of the time budget left (< --compile-reserve {a.compile_reserve:g} s)")
            return
        gpu_only = spec["graph"] or (spec["compile"] and not a.cpu_compile)
        if gpu_only and self.device.type != "cuda":
            self.row(cell, status="skipped", error="compile/graph variants run on GPU only "
                     "(--cpu-compile to force compile on CPU)")
            return
        if gf and a.max_gflop_per_call and gf * b > a.max_gflop_per_call:
            self.row(cell, status="skipped",
                     error=f"{gf * b:.0f} GFLOP per call > --max-gflop-per-call {a.max_gflop_per_call:g}")
            return
        self._g2face_cell(p, cell, spec, gf)

    def _g2face_cell(self, p: BenchPipeline, cell: Cell, spec: dict, gf: float | None) -> dict:
        """One g2face cell; a *_compile cell's preparation (compiling) and timing run under --compile-timeout."""
        if self.over_budget():
            return self.skip_for_budget(cell, "time budget exhausted")
        fast = cell.name == "g2face"
        anon = p.fast if fast else p.ref

        def make() -> Callable[[], object]:
            if fast:
                anon.configure(amp_dtype=spec["amp"], channels_last=spec["cl"], compile=spec["compile"],
                               cuda_graphs=spec["graph"])
            g = torch.Generator(device="cpu").manual_seed(cell.batch)
            x = torch.rand(cell.batch, 3, p.cfg.size, p.cfg.size, generator=g).to(self.device)
            keys = [f"bench-{i}".encode() for i in range(cell.batch)]
            if cell.op == "recover":
                x = anon.anonymize(x, keys).images
                return lambda: anon.recover(x, keys)
            return lambda: anon.anonymize(x, keys)

        def cleanup() -> None:
            if fast:
                anon.configure()
            if spec["compile"]:
                torch._dynamo.reset()

        return self.measure(cell, None, gf, make=make, cleanup=cleanup,
                            limit=self.args.compile_timeout if spec["compile"] else 0)

    def baselines(self) -> None:
        """Every baseline's ``anonymize``, on the bench device (moved there with ``.to`` as the harness's
        ``build_method`` does; a method without ``to`` runs where it is)."""
        from g2face_eval import methods
        from g2face_eval.anonymizer import METHODS

        names = self.args.methods or [n for n in METHODS.names() if n != "g2face"]
        size = 256
        for name in names:
            try:
                m = methods.build(name)
                if hasattr(m, "to"):
                    m.to(self.device)
            except Exception as e:  # noqa: BLE001
                for b in self.args.batches:
                    self.row(Cell("baseline", name, str(size), "anonymize", "fp32", b), status="error",
                             error=f"build on {self.device}: {type(e).__name__}: {e}")
                continue
            for b in self.args.batches:
                cell = Cell("baseline", name, str(size), "anonymize", "fp32", b)
                x = torch.rand(b, 3, size, size).to(self.device)
                mask = ellipse_mask(b, size).to(self.device)
                keys = [f"bench{i}".encode() for i in range(b)]
                self.measure(cell, lambda m=m, x=x, mask=mask, keys=keys:
                             m.anonymize(x, keys, face_masks=mask),
                             floor_note="no FLOPs counted for baselines: no floor")
            del m
            self.release()

    def metrics(self) -> None:
        """The harness's per-image metric work on its own oracle objects (``metric_oracles``); one row per
        oracle x batch. FLOPs at batch 1 on real inputs where the oracle runs (``oracle_flops``)."""
        import shutil
        import tempfile

        suite: dict = {}
        self.doc["metric_suite"] = suite
        tmp = tempfile.mkdtemp(prefix="g2face-bench-oracles-")
        try:
            try:
                kernels, info = metric_oracles(self.device, max(self.args.batches), tmp)
            except Exception as e:  # noqa: BLE001 - e.g. the harness's packages missing on a device image
                traceback.print_exc()
                suite.update(error=f"{type(e).__name__}: {str(e)[:300]}", skipped={}, unavailable={}, oracles={})
                from g2face_eval.harness import config as C

                size = str(C.defaults()["image_size"])                   # the harness's size, as metric_oracles
                for b in self.args.batches:
                    self.row(Cell("metric", "oracles", size, "compute", "fp32", b), status="error",
                             error=f"oracles: {suite['error']}", runs_on=None)
                return
            suite.update(info)
            self.save()
            for name, why in info["skipped"].items():
                for b in self.args.batches:
                    self.row(Cell("metric", name, str(info["image_size"]), "compute", "fp32", b), status="skipped",
                             error=f"unavailable: {why[:300]}", runs_on=None)          # nothing ran anywhere
            for k in kernels:
                gf, flop_error, floor_note = oracle_flops(k)
                suite["oracles"][k["name"]]["gflop_per_image"] = gf
                for b in self.args.batches:
                    cell = Cell("metric", k["name"], str(info["image_size"]), "compute", "fp32", b)
                    self.measure(cell, k["call"](b), gf, runs_on=k["runs_on"], flop_error=flop_error,
                                 floor_note=floor_note)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def frozen_as_eager():
    """``models.frozen.FrozenOnCPU`` runs its eager network meanwhile: ``FlopCounterMode`` does not see inside a
    frozen TorchScript graph (its prepacked oneDNN convolutions are not the aten ops it counts); the eager network
    has the same convolutions and matmuls."""
    from g2face_eval.models.frozen import FrozenOnCPU

    orig = FrozenOnCPU.__call__
    FrozenOnCPU.__call__ = lambda self, x: self.net(x)  # type: ignore[method-assign]
    try:
        yield
    finally:
        FrozenOnCPU.__call__ = orig  # type: ignore[method-assign]


def _where(obj) -> str:
    """The device an oracle's torch network sits on ("cpu" for host libraries: OpenCV, dlib, MediaPipe)."""
    dev = getattr(obj, "device", None)
    if isinstance(dev, (str, torch.device)):
        return str(torch.device(dev))
    for attr in ("_net", "net", "module", "model"):
        m = getattr(obj, attr, None)
        if isinstance(m, nn.Module):
            for t in [*m.parameters(), *m.buffers()]:
                return str(t.device)
    return "cpu"


def metric_oracles(device: torch.device, n_faces: int, cache_dir: str) -> tuple[list[dict], dict]:
    """The harness's per-image metric work as ``scripts/oracle_costs.py`` times it: its own oracle objects
    (``harness.evaluate.Oracles`` with the default evaluation config on ``device``: every available recognizer,
    the default detectors, the face mesh, LPIPS, the Fréchet feature extractors) and ``evaluate._psnr/_ssim``,
    on up to ``n_faces`` of the package's embedded faces prepared as the harness prepares them (``Preparer``: the
    YuNet subject face), Gaussian-blurred (sigma 4) as the stand-in output. Returns (kernels, info): each kernel
    ``{"name", "call": b -> zero-arg callable on a batch of b (the faces cycled), "runs_on", "what"}``; info
    records the inputs, what is unavailable and ``skipped``: {kernel name: reason} of the oracles the harness
    would run but that cannot run here (a user file missing: LPIPS, FID features; no subject face; the oracles
    not built), which the bench records as ``skipped`` rows. Without faces (the detector's weights missing) or
    without the oracles (no recognizer), what needs no face (features, LPIPS, PSNR, SSIM) is still timed."""
    import cv2

    from g2face_eval.harness import config as C
    from g2face_eval.harness.evaluate import Oracles, _features, _psnr, _ssim, _to_batch
    from g2face_eval.harness.prepare import DatasetSource, Preparer, load_prepare
    from g2face_eval.harness.records import ArrayCache

    cfg = C.defaults()
    cfg["device"] = str(device)
    size = int(cfg["image_size"])
    unavailable: dict[str, str] = {}
    src = DatasetSource("embedded", cfg)
    ids = src.ids[: max(1, min(n_faces, len(src.ids)))]
    try:
        items, fails = load_prepare(src, Preparer(size), ids)
        unavailable.update({f"face_{sid}": why for sid, why, _ in fails})
        if not items:
            raise RuntimeError(f"no embedded face could be prepared: {fails[:3]}")
        orig, faces = [it.image for it in items], [it.face for it in items]
    except Exception as e:  # noqa: BLE001 - e.g. YuNet's weights missing: the face-free oracles still run
        unavailable["faces"] = f"{type(e).__name__}: {str(e)[:300]} (oracles that need the subject's face skipped)"
        orig = [cv2.resize(src.load(sid).image, (size, size), interpolation=cv2.INTER_AREA) for sid in ids]
        faces = []
    outs = [cv2.GaussianBlur(im, (0, 0), 4) for im in orig]
    try:
        O = Oracles(cfg, ArrayCache(cache_dir))  # noqa: N806 - the harness's name
        unavailable.update(O.unavailable)
        lpips, extractors = O.lpips, O.extractors
    except Exception as e:  # noqa: BLE001 - e.g. no recognizer's weights: the face-free oracles still run
        unavailable["oracles"] = f"{type(e).__name__}: {str(e)[:300]}"
        O = None  # noqa: N806
        lpips, extractors = _face_free_oracles(cfg, unavailable)

    def pick(seq: list, b: int) -> list:
        return [seq[i % len(seq)] for i in range(b)] if seq else []

    kernels: list[dict] = []

    def add(name: str, what: str, runs_on: str, fn: Callable[[list, list, list], object]) -> None:
        def call(b: int) -> Callable[[], object]:
            o, x, f = pick(orig, b), pick(outs, b), pick(faces, b)
            return lambda: _nograd(fn, o, x, f)

        kernels.append({"name": name, "what": what, "runs_on": runs_on, "call": call})

    if O is not None and faces:
        for r, rec in O.recognizers.items():
            add(f"embed_{r}", f"{type(rec).__name__}.embed (alignment + embedding)", _where(rec),
                lambda o, x, f, rec=rec: rec.embed(x, f))
        for d, det in O.detectors.items():
            add(f"finds_{d}", f"{type(det).__name__}.finds (the subject-detection decision)", _where(det),
                lambda o, x, f, det=det: [det.finds(im, fc.box) for im, fc in zip(x, f, strict=True)])
        if O.mesh is not None:
            add("mesh", f"{type(O.mesh).__name__}.analyze of the subject (Oracles.mesh_of)", _where(O.mesh),
                lambda o, x, f: [O.mesh_of(im, subject=fc) for im, fc in zip(x, f, strict=True)])
    if lpips is not None:
        add("lpips_alex", "LPIPS('alex') output vs original", _where(lpips),
            lambda o, x, f: lpips(_to_batch(x), _to_batch(o), 1.0))
    for n, ext in extractors.items():
        add(f"features_{n}", f"Fréchet features ({type(ext).__name__}, evaluate._features)", _where(ext),
            lambda o, x, f, ext=ext: _features(ext, x))
    add("psnr", "evaluate._psnr output vs original", "cpu", lambda o, x, f: _psnr(x, o))
    add("ssim", "evaluate._ssim output vs original", "cpu", lambda o, x, f: _ssim(x, o))
    # the oracles the harness would run but cannot here, by kernel name, with the reason (rows "skipped")
    skipped: dict[str, str] = {}
    oracle_of = {"recognizer_": "embed_", "detection_rate_": "finds_", "attributes": "mesh", "lpips_alex": "lpips_alex",
                 "fd_effnet_lite0": "features_effnet_lite0", "fid": "features_inception_fid"}
    for key, why in unavailable.items():
        for prefix, name in oracle_of.items():
            if key == prefix or (prefix.endswith("_") and key.startswith(prefix)):
                skipped[name + key[len(prefix):] if prefix.endswith("_") else name] = why
    if O is not None and not faces:
        why = f"needs the subject's face: {unavailable.get('faces', 'no embedded face prepared')}"
        skipped.update({f"embed_{r}": why for r in O.recognizers})
        skipped.update({f"finds_{d}": why for d in O.detectors})
        if O.mesh is not None:
            skipped["mesh"] = why
    if O is None:                        # the harness's face oracles of this configuration, none of them built
        from g2face_eval.oracles import recognizers as R

        why = f"oracles: {unavailable['oracles']}"
        skipped.update({f"embed_{r}": why for r in (cfg.get("recognizers") or R.DEFAULT_RECOGNIZERS)})
        skipped.update({f"finds_{d}": why for d in (cfg.get("detectors") or ())})
        if cfg.get("face_mesh", True):
            skipped["mesh"] = why
    info = {"image_size": size, "skipped": skipped,
            "inputs": (f"{len(orig)} embedded faces (g2face_eval/data/embedded) "
                       + ("prepared (YuNet subject face)" if faces else "resized, NOT prepared (no subject face),")
                       + f" at {size} px, Gaussian-blurred (sigma 4) as the stand-in output; a batch of b cycles "
                       "them"),
            "unavailable": unavailable,
            "oracles": {k["name"]: {"what": k["what"], "runs_on": k["runs_on"]} for k in kernels}}
    return kernels, info


def _face_free_oracles(cfg: dict, unavailable: dict) -> tuple:
    """(LPIPS or None, {name: Fréchet feature extractor}) built as ``harness.evaluate.Oracles`` builds them, for
    when the oracles as a whole cannot be (no recognizer): these need no face and still run; what is missing goes
    into ``unavailable`` under the harness's keys."""
    from g2face_eval.harness.evaluate import _feature_extractors, _lpips

    return _lpips(unavailable), _feature_extractors(unavailable, str(cfg["device"]), cfg.get("feature_extractors"))


def oracle_flops(kernel: dict) -> tuple[float | None, str | None, str | None]:
    """(GFLOP per image, flop_error, floor_note) of one metric oracle: its batch-1 call on real inputs, where it
    runs, under ``FlopCounterMode`` (frozen TorchScript graphs counted through their eager network). A failed
    count is returned as the error (recorded in the rows), never dropped; work outside torch (OpenCV, dlib,
    MediaPipe, NumPy) has no counted FLOPs, which the note says."""
    try:
        with frozen_as_eager():
            total = count_flops(kernel["call"](1))[0]
    except Exception as e:  # noqa: BLE001 - recorded in the rows
        traceback.print_exc()
        return None, f"FLOP count failed: {type(e).__name__}: {str(e)[:300]}", None
    if total <= 0:
        return None, None, "no FLOPs counted: the work is not torch conv/matmul (OpenCV, dlib, MediaPipe, NumPy)"
    return total / 1e9, None, None


def _nograd(fn, *args):
    with torch.no_grad():
        return fn(*args)


def ellipse_mask(b: int, size: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    m = ((xx / 0.6) ** 2 + (yy / 0.8) ** 2 <= 1).float()
    return m.expand(b, 1, size, size).contiguous()


def fidelity(p: BenchPipeline, device: torch.device, variants: list[str], batch: int = 2,
             with_compile: bool = False) -> dict:
    """PSNR of each eager variant's anonymized image vs fp32, and agreement of the bits recovered from it."""
    x = torch.rand(batch, 3, p.cfg.size, p.cfg.size, generator=torch.Generator().manual_seed(7)).to(device)
    seeds = (torch.arange(batch, dtype=torch.int64) + 99).to(device)
    with torch.no_grad():
        ref, ref_bits = p.anonymize(x, seeds)
        ref_rec = p.recover(ref, seeds)[1]
    out = {}
    for v in dict.fromkeys(["fp32_cl", *variants]):
        spec = parse_variant(v)
        if v == "fp32" or (spec["compile"] and not with_compile) or (spec["graph"] and device.type != "cuda"):
            continue
        if spec["amp"] is torch.float16 and device.type == "cpu":
            continue
        p.amp_dtype, p.channels_last = spec["amp"], spec["cl"]
        set_memory_format(p.model, torch.channels_last if spec["cl"] else torch.contiguous_format)
        try:
            with torch.no_grad():
                fa = make_callable(p.anonymize, (x, seeds), device, spec)
                y, bits = (t.clone() for t in fa())
                fr = make_callable(p.recover, (y, seeds), device, spec)
                rec = fr()[1].clone()
                del fa, fr
                if spec["compile"]:
                    torch._dynamo.reset()
            out[v] = {"psnr_db_vs_fp32": float(psnr_db(y, ref).min()),
                      "hidden_bits_identical": bool(torch.equal(bits, ref_bits)),
                      "recovered_bit_agreement": float((rec == ref_rec).float().mean()),
                      "recovered_bits_identical": bool(torch.equal(rec, ref_rec))}
        except Exception as e:  # noqa: BLE001
            out[v] = {"error": f"{type(e).__name__}: {e}"}
        finally:
            p.amp_dtype, p.channels_last = None, False
            set_memory_format(p.model, torch.contiguous_format)
    return out


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-30))


# ============================================================================================ outputs
def atomic_write_json(path: Path, obj) -> None:
    atomic.write_json(path, obj, indent=1, sort_keys=False, allow_nan=True)


def device_info(device: torch.device) -> dict:
    info = {"type": device.type, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "name": platform.processor() or platform.machine()}
    try:
        info["affinity_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    if device.type == "cuda":
        prop = torch.cuda.get_device_properties(device)
        info.update(name=prop.name, sms=prop.multi_processor_count, mem_gib=prop.total_memory / 2 ** 30,
                    capability=f"{prop.major}.{prop.minor}", cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


REFERENCE_FILES = ("official_g2face_latency.json", "official_g2face_latency_h100.json")


def _card(name: str | None) -> str | None:
    """The card's model token ('NVIDIA H100 80GB HBM3' -> 'H100'), to match a bench device with a reference."""
    m = re.search(r"\b([A-Z]{1,2}\d{2,4})\b", name or "")
    return m.group(1) if m else None


def load_reference(device_name: str | None = None) -> dict | None:
    """The official code's headline numbers (fp32, official CUDA ops; the first timed run of each batch, as the
    reference tables give them) measured on the same kind of card as ``device_name`` (e.g. 'NVIDIA H200'), read
    from ``REFERENCE_DIR``; None for a card or CPU with no reference (numbers are compared only on the same kind
    of card) or when the files are absent (a clone without ../shared, the device machine)."""
    want = _card(device_name)
    if want is None:
        return None
    for fname in REFERENCE_FILES:
        p = REFERENCE_DIR / fname
        try:
            ref = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        gpu = (ref.get("meta") or {}).get("gpu_name")
        if _card(gpu) != want:
            continue
        ms: dict[str, dict[str, float]] = {"anonymize": {}, "recover": {}}
        for t in ref.get("timings", []):
            op = {"anonymize_pipeline": "anonymize", "recover_pipeline": "recover"}.get(t.get("name"))
            if op and t.get("variant") == "fp32" and t.get("ops") == "official-cuda-ext" and "median_ms" in t:
                ms[op].setdefault(str(t["batch"]), round(float(t["median_ms"]), 2))
        fl = {k: round(v["GFLOP"], 2) for k, v in (ref.get("flops") or {}).items()
              if isinstance(v, dict) and v.get("GFLOP") is not None}
        return {"source": str(p), "device": gpu, "anonymize_ms": ms["anonymize"], "recover_ms": ms["recover"],
                "anonymize_gflop_per_image": fl.get("anonymize_b1"), "recover_gflop_per_image": fl.get("recover_b1"),
                "anonymize_gflop_per_image_native_ops": fl.get("anonymize_b1__native_ops"),
                "generator_breakdown_gflop": ref.get("generator_flops_breakdown_b1_GFLOP")}
    return None


def series_label(r: dict, bench_device_type: str, configs: dict | None = None) -> str:
    """A bench row's line in the latency figure: config / op / variant for G2Face (``(g2face_reference)`` for
    the fp32 reference path), the name otherwise; ``[on cpu]`` when the row ran on another device than the
    bench's (the metric suite's host oracles in a GPU bench), so that no CPU timing reads as the GPU's;
    ``[<config> used]`` when a config's note (``configs``, the bench's ``configs`` table) says it fell back (the
    shipped config without its checkpoint)."""
    label = f"{r['config']} {r['op']} {r['variant']}" if r["suite"] == "g2face" else r["name"]
    if r["suite"] == "g2face" and r["name"] != "g2face":
        label += f" ({r['name']})"
    note = str(((configs or {}).get(r.get("config")) or {}).get("note", ""))
    if r["suite"] == "g2face" and note.startswith("FALLBACK"):
        label += f" [{note.split(' -> ')[-1].replace(chr(39), '')} used]"
    if r.get("runs_on") and torch.device(r["runs_on"]).type != bench_device_type:
        label += f" [on {torch.device(r['runs_on']).type}]"
    return label


def plot(doc: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in doc["results"] if r["status"] == "ok"]
    suites = [s for s in ("g2face", "baseline", "metric") if any(r["suite"] == s for r in rows)]
    if not suites:
        return None
    fig, axes = plt.subplots(1, len(suites), figsize=(6.5 * len(suites), 5), squeeze=False)
    for ax, suite in zip(axes[0], suites, strict=True):
        series: dict[str, list] = {}
        for r in rows:
            if r["suite"] != suite:
                continue
            series.setdefault(series_label(r, doc["device"]["type"], doc.get("configs")), []).append(
                (r["batch"], r["ms_per_image"]))
        for label, pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, lw=1, label=label)
        ref = doc.get("reference")
        if suite == "g2face" and ref:
            for op, mk in (("anonymize", "k*"), ("recover", "kx")):
                d = ref[f"{op}_ms"]
                bs = sorted(int(k) for k in d)
                ax.plot(bs, [d[str(b)] / b for b in bs], mk + "--", lw=1,
                        label=f"official {op} ({ref.get('device', 'reference')}, fp32)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("ms per image (median)")
        marked = " (other devices marked)" if any("[on " in lbl for lbl in series) else ""
        ax.set_title(f"{suite} on {doc['device'].get('name')} ({doc['device']['type']}){marked}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=1 if len(series) < 14 else 2)
    fig.tight_layout()
    atomic.write_via(path, lambda t: fig.savefig(t, dpi=120, format="png"))
    plt.close(fig)
    return path


def log_mlflow(doc: dict, out_dir: Path, results_dir: Path, figure: Path | None) -> str | None:
    """Log ``doc`` to an MLflow run; ``doc`` gets ``mlflow_uri`` / ``mlflow_run_id`` and is written to
    ``out_dir/bench.json`` before that file is logged, so the logged copy is the final document."""
    try:
        from g2face_eval.harness.tracking import Tracker
    except ImportError as e:
        doc["notes"].append(f"mlflow logging skipped: {e}")
        return None
    run_dir = out_dir
    (run_dir / "mlflow.json").unlink(missing_ok=True)  # a bench run is never resumed
    tr = Tracker(results_dir, run_dir, f"bench-{out_dir.name}")
    dev = doc["device"]
    params = {"device": dev["type"], "device_name": dev.get("name"), "torch": dev.get("torch"),
              **{k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in doc["settings"].items()}}
    with tr.parent_run(params, tags={"g2face.kind": "bench"}) as rid:
        metrics: dict[str, float] = {}
        if doc.get("matmul_rate"):
            metrics["matmul_tflops"] = doc["matmul_rate"]["tflops"]
        for c, f in doc.get("flops", {}).items():
            for op in ("anonymize", "recover"):
                if f.get(f"{op}_gflop_per_image") is not None:
                    metrics[f"gflop/{c}/{op}"] = f[f"{op}_gflop_per_image"]
        for r in doc["results"]:
            if r["status"] != "ok":
                continue
            k = f"{r['suite']}/{r['name']}/{r['config']}/{r['op']}/{r['variant']}/b{r['batch']}"
            for f in ("median_ms", "p90_ms", "images_per_second", "peak_memory_mb", "peak_reserved_mb",
                      "ratio_to_floor"):
                if r.get(f) is not None:
                    metrics[f"{k}/{f}"] = r[f]
        tr.log_metrics(rid, metrics)
        doc["mlflow_uri"], doc["mlflow_run_id"] = tr.uri, rid
        atomic_write_json(out_dir / "bench.json", doc)
        tr.log_artifact(rid, out_dir / "bench.json")
        if figure is not None and figure.exists():
            tr.log_artifact(rid, figure)
    return tr.uri


# ============================================================================================ CLI
DEFAULTS = {
    "cpu": dict(configs="tiny,official", batches="1,8", variants="fp32", repeats=2,
                warmup=1, max_gflop_per_call=300.0),
    "cuda": dict(configs="official,shipped,tiny", batches="1,8,32,64,128",
                 variants="fp32,bf16,bf16_cl,fp16_cl,fp32_graph,bf16_graph,bf16_cl_graph,bf16_cl_compile",
                 repeats=10,
                 warmup=3, max_gflop_per_call=0.0),
}


CONFIGS = ("official", "shipped", "small", "tiny")
OPS = ("anonymize", "recover")
SUITES = {"g2face": "g2face", "baselines": "baselines", "metrics": "metrics", "baseline": "baselines",
          "metric": "metrics"}  # --suites name -> suite (the rows' singular names accepted)


def _csv(s: str) -> list[str]:
    return [t.strip() for t in s.split(",") if t.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    from g2face_eval import settings

    ap = argparse.ArgumentParser(prog="g2face-eval bench", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=settings.DEFAULTS["bench_device"],
                    help=f"auto | cpu | cuda | cuda:N (default {settings.DEFAULTS['bench_device']}: cuda when "
                    "available, else cpu; settings.DEFAULTS['bench_device'])")
    ap.add_argument("--configs", help="G2Face configs: official, shipped, small, tiny (comma list)")
    ap.add_argument("--batches", help="batch sizes (comma list); CPU default 1,8; GPU 1,8,32,64,128")
    ap.add_argument("--variants", help="fp32|bf16|fp16 [+_cl] [+_compile] [+_graph], comma list")
    ap.add_argument("--ops", default="anonymize,recover", help=f"G2Face ops (comma list of {', '.join(OPS)})")
    ap.add_argument("--suites", default="g2face,baselines,metrics",
                    help="comma list of g2face, baselines, metrics (baseline / metric accepted)")
    ap.add_argument("--methods", help="baseline METHODS names (default: all but g2face)")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--max-gflop-per-call", type=float,
                    help="skip G2Face cells above this many GFLOP per call (CPU default "
                         f"{DEFAULTS['cpu']['max_gflop_per_call']:g}, GPU {DEFAULTS['cuda']['max_gflop_per_call']:g}; "
                         "0 = no limit)")
    ap.add_argument("--time-budget", type=float, default=0.0,
                    help="seconds; cells after it are recorded as skipped (0 = none)")
    ap.add_argument("--compile-batches", default="1,32", help="batch sizes for *_compile variants")
    ap.add_argument("--compile-ops", default="anonymize", help="ops for *_compile variants")
    ap.add_argument("--compile-reserve", type=float, default=120.0,
                    help="seconds of --time-budget a *_compile cell needs left to start")
    ap.add_argument("--compile-timeout", type=float, default=150.0,
                    help="seconds a *_compile cell may take (compile + timing) before it is abandoned "
                         "(0 = none)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    ap.add_argument("--cpu-compile", action="store_true", help="allow *_compile variants on CPU")
    ap.add_argument("--no-checks", action="store_true", help="skip the sync check and fidelity section")
    ap.add_argument("--jpeg", action="store_true",
                    help="instead of timing: payload BER and authenticated recovery of the shipped g2face after "
                         "JPEG (models/robustness.py) on --jpeg-n celebahq256 test faces -> robustness.json")
    ap.add_argument("--jpeg-n", type=int, default=64, help="faces for --jpeg (celebahq256 test split)")
    ap.add_argument("--jpeg-qualities", default="95,90,75", help="JPEG qualities for --jpeg")
    ap.add_argument("--datasets-root", help="datasets folder for --jpeg (default settings / $G2FACE_DATASETS)")
    ap.add_argument("--no-reference", dest="reference", action="store_false",
                    help="do not time the fp32 reference path (g2face_reference rows)")
    ap.add_argument("--fidelity-compile", action="store_true",
                    help="also check *_compile variants in the fidelity section (compiles the smallest "
                         "config)")
    ap.add_argument("--out", help="output folder (default <results dir>/bench/<UTC stamp>, with --ingest "
                    "<results dir>/bench/ingested-<UTC stamp>; results dir: --results-dir, else $G2FACE_RESULTS_DIR, "
                    "else ./results)")
    ap.add_argument("--results-dir", help="MLflow store folder (default settings.results_dir())")
    ap.add_argument("--no-mlflow", action="store_true")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--ingest",
                    help="log an existing bench.json to MLflow (and redraw its figure); no timing")
    a = ap.parse_args(argv)
    a.argv = list(argv)
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    d = DEFAULTS["cuda" if a.device.startswith("cuda") else "cpu"]

    def names(flag: str, value: str, known) -> list[str]:  # a misspelt name is an error (exit 2), not a no-op
        got = _csv(value)
        bad = [n for n in got if n not in known]
        if bad or not got:
            ap.error(f"{flag}: unknown {bad} (known: {', '.join(dict.fromkeys(known))})" if bad else f"{flag}: empty")
        return got

    def ints(flag: str, value: str) -> list[int]:
        try:
            got = [int(b) for b in _csv(value)]
        except ValueError:
            ap.error(f"{flag}: {value!r} is not a comma list of integers")
        if not got or min(got) < 1:
            ap.error(f"{flag}: batch sizes must be >= 1, got {value!r}")
        return got

    a.configs = names("--configs", a.configs or d["configs"], CONFIGS)
    a.batches = ints("--batches", a.batches or d["batches"])
    a.variants = _csv(a.variants or d["variants"])
    for v in a.variants:
        try:
            parse_variant(v)
        except ValueError as e:
            ap.error(f"--variants: {e}")
    a.ops = names("--ops", a.ops, OPS)
    a.suites = list(dict.fromkeys(SUITES[s] for s in names("--suites", a.suites, SUITES)))
    a.compile_batches = ints("--compile-batches", a.compile_batches)
    a.compile_ops = names("--compile-ops", a.compile_ops, OPS)
    if a.methods:
        from g2face_eval.methods import METHODS

        a.methods = names("--methods", a.methods, [n for n in METHODS.names() if n != "g2face"])
    else:
        a.methods = None
    a.repeats = a.repeats if a.repeats is not None else d["repeats"]
    a.warmup = a.warmup if a.warmup is not None else d["warmup"]
    if a.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {a.repeats}")
    if a.warmup < 0:
        ap.error(f"--warmup must be >= 0, got {a.warmup}")
    if a.threads is not None and a.threads < 1:
        ap.error(f"--threads must be >= 1, got {a.threads}")
    if a.max_gflop_per_call is None:
        a.max_gflop_per_call = d["max_gflop_per_call"]
    return a


def run_status(doc: dict, budget_skipped: int) -> str:
    """complete: every cell measured or skipped by rule; partial: a cell skipped for lack of time budget or a cell
    that failed (its ``error`` row says why); failed: cells failed and none was measured."""
    statuses = {r.get("status") for r in doc["results"]}
    if "error" in statuses and "ok" not in statuses:
        return "failed"
    return "partial" if budget_skipped or "error" in statuses else "complete"


ROW_KEYS = ("suite", "name", "config", "op", "variant", "batch", "status")


def check_ingest(doc) -> None:
    """ValueError unless ``doc`` is a bench document this code can log and plot: a dict of this ``SCHEMA`` with a
    ``device`` dict and ``results``, a list of rows with ``ROW_KEYS`` (``ok`` rows with ``ms_per_image``)."""
    if not isinstance(doc, dict):
        raise ValueError(f"not a bench document (a JSON {type(doc).__name__}, expected an object)")
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"schema {doc.get('schema')!r}, expected {SCHEMA!r}")
    if not isinstance(doc.get("device"), dict) or not isinstance(doc.get("results"), list):
        raise ValueError("'device' must be an object and 'results' a list")
    for i, r in enumerate(doc["results"]):
        missing = [k for k in ROW_KEYS if not isinstance(r, dict) or k not in r]
        if missing or (r.get("status") == "ok" and "ms_per_image" not in r):
            raise ValueError(f"results[{i}] lacks {missing or ['ms_per_image']}")


def cli(argv: list[str] | None = None) -> int:
    a = parse_args(list(sys.argv[1:] if argv is None else argv))
    from g2face_eval import settings

    results_dir = Path(a.results_dir) if a.results_dir else settings.results_dir()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    if a.ingest:  # a bench.json from elsewhere (any file name): copied into its own run folder, then logged
        src = Path(a.ingest)
        try:  # checked before anything is written
            doc = json.loads(src.read_text())
            check_ingest(doc)
        except (OSError, ValueError) as e:
            print(f"g2face-eval bench: error: --ingest {src}: {e}", file=sys.stderr)
            return 2
        if not doc.get("reference") and (ref := load_reference(doc.get("device", {}).get("name"))):
            doc["reference"] = ref   # the device machine has no ../shared: the official numbers are added here
            doc.setdefault("notes", []).append("reference added at ingest from the local reference file")
        out_dir = Path(a.out) if a.out else results_dir / "bench" / f"ingested-{stamp}"
        out_dir.mkdir(parents=True, exist_ok=True)
        fig = None if a.no_plot else plot(doc, out_dir / "bench_latency.png")
        doc["figure"] = str(fig) if fig else None   # this folder's figure, not the source machine's path
        atomic_write_json(out_dir / "bench.json", doc)
        uri = None if a.no_mlflow else log_mlflow(doc, out_dir, results_dir, fig)
        print(f"ingested {src} -> {out_dir}" + (f" ({uri})" if uri else " (no MLflow run)"))
        return 0
    if a.threads:
        torch.set_num_threads(a.threads)
    out_dir = Path(a.out) if a.out else results_dir / "bench" / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    if a.jpeg:  # payload robustness (BER / authenticated recovery after JPEG), no timing
        from g2face_eval.models import robustness

        res = robustness.run_shipped(a.jpeg_n, a.datasets_root, [int(q) for q in _csv(a.jpeg_qualities)],
                                     out_dir / "robustness.json", device=a.device)
        print(robustness.table(res))
        print(f"wrong-key recovery accepted: {res['wrong_key_ok_rate']}; {res['wall_s']:.0f} s")
        print(f"wrote {out_dir / 'robustness.json'}")
        return 0
    bench = Bench(a, out_dir)
    from g2face_eval.interrupts import sigterm_exits

    try:  # a killed run (e.g. the device call's timeout) still leaves status "failed" + its rows
        with sigterm_exits():
            doc = bench.run()
    except BaseException:
        bench.doc["status"] = "failed"
        bench.save()
        raise
    fig = None if a.no_plot else plot(doc, out_dir / "bench_latency.png")
    if fig:
        doc["figure"] = str(fig)
    bench.save()
    if not a.no_mlflow:
        try:
            doc["mlflow_uri"] = log_mlflow(doc, out_dir, results_dir, fig)  # writes bench.json, then logs it
        except Exception as e:  # noqa: BLE001 - results are already on disk
            doc["notes"].append(f"mlflow logging failed: {type(e).__name__}: {e}")
    bench.save()
    print(summary_table(doc))
    print(f"wrote {out_dir / 'bench.json'}" + (f" and {fig}" if fig else ""))
    return 0


def summary_table(doc: dict) -> str:
    lines = ["| suite | name | config | op | variant | batch | median ms | p90 ms | img/s | peak +MiB "
             "| x floor |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(v, n=2):
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{n}f}"

    for r in doc["results"]:
        if r["status"] != "ok":
            continue
        lines.append(f"| {r['suite']} | {r['name']} | {r['config']} | {r['op']} | {r['variant']} "
                     f"| {r['batch']} | "
                     f"{f(r['median_ms'])} | {f(r['p90_ms'])} | {f(r['images_per_second'], 1)} | "
                     f"{f(r['peak_memory_mb'], 0)} | {f(r['ratio_to_floor'], 1)}"
                     f"{' (invalid floor)' if (r.get('floor_note') or '').startswith('INVALID') else ''} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(cli())
