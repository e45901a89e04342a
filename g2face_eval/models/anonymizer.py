"""G2Face as an ``Anonymizer`` (reversible), with the keyed payload by default.

anonymize(images [0,1], keys):
    x = 2*images-1; coeffs = geometry.coefficients(x); id = identity(x);
    bits = payload.encode(id, keys);  z = keyed N(0,1) (B, z_dim) from key_seed(key); noise maps keyed too;
    y = anonymous_net(x, style_mlp(Map2ID(z), coeffs), bits, noise)  -> Output(images=(y+1)/2 clamped, bits)
recover(images, keys):
    logits = hiding_extractor(y); decoded = payload.decode(logits, keys);
    r = anonymous_net(y, style_mlp(decoded.embeddings, geometry(y)), decoded.bits, keyed noise)
    -> Output(images, ok=decoded.ok (keyed) / None (official), bits=hard extracted bits)

Official payload mode vs test.py: recovery here is what a recoverer holding only the image can do, which
differs from the official test.py in two ways. (1) The generator's recovery pass gets the bits *extracted from
the image* (``decoded.bits``); test.py feeds it the same bit tensor it hid during anonymisation (the true bits,
unknowable from the image alone), and uses the extracted bits only for the identity vector. (2) Anonymisation
returns ``(y+1)/2`` clamped to [0,1] and recovery reads that clamped image (and clamps its output), whereas
test.py passes the unclamped generator output y to extraction and recovery (clipping only to save images). So
with extraction bit errors (and slightly even without, where y leaves [-1,1]) our official-mode recovery
numbers differ from test.py's. (In keyed mode the generator gets the error-corrected codeword.)

Fail-closed recovery (keyed mode): for an image whose payload does not decode or does not authenticate under the
given key (wrong key, tampering, too many bit errors) ``ok`` is False and the returned image is the input
(anonymised) image unchanged; the decoded bytes are never used, so no original identity is exposed.

Precision: ``amp_dtype`` (e.g. torch.bfloat16) runs the G2Face networks under autocast; the identity and geometry
priors stay in float32 unless ``amp_priors=True``, so the hidden payload (hence the output) does not depend on
the generator's precision.

Randomness: per-image and batch-independent. ``noise="keyed"`` (default) draws Map2ID's z and every StyledConv
noise map with a counter-based generator seeded by ``key_seed(key)`` on the model's device (no host random
draws); ``noise="random"`` is the official behaviour (fresh torch.randn for noise maps; z still keyed).

Inference modes: ``fast=True`` (default) is the inference fast path; ``fast=False`` is the fp32 reference path,
kept unchanged for comparison (tests/test_g2face_fastpath.py: PSNR >= 40 dB, identical payload bits). The fast
path, on the same networks and keys:

* builds constants once: FIR kernels pre-flipped (buffers), normalisation constants (buffers), the equalised /
  demodulation weight terms cached while in inference (``G2Face.set_inference_cache``; rebuilt when a weight
  changes), all keyed-noise index constants (``KeyedNoise`` buffers, one batched draw for all maps);
* uses that the hidden bits are 0/1: the hiding injections with at most 4 bit channels per pixel become lookups in
  16-row tables folded into the fusion masks' 1x1 convolutions (``G2FaceGenerator.fold_binary_bits``, set by
  ``set_inference_cache``; the same function, 4.3 GFLOP less per 256 px image, no injection channels in the
  fusion masks' concatenations);
* draws z and the noise maps on the device from per-image seeds (``key_seed(key)``, one pinned non-blocking
  host->device copy of B int64 per call): no host random draw, and row b depends only on key b;
* has no ``.item()`` / ``.cpu()`` / python loop over the batch in the device segments (priors, generator,
  extractor, official payload). The host boundary is the keyed payload: AEAD + Reed-Solomon are host byte
  algorithms, done once per batch (one D2H of the (B, dim) embeddings or (B, n_bits) logits, one H2D back,
  quantisation and bit packing vectorised, only the AEAD/RS calls per image); see models/payload.py. (The
  ``Anonymizer`` base class validates inputs and outputs with ``check_batch``, which reads back a few flags.)
* autocast (``amp_dtype`` bf16/fp16; every custom op is plain torch and runs in bf16/fp16; the autocast weight
  cast cache is off so CUDA graphs stay valid), ``channels_last`` (generator + extractor; the priors run as the
  reference path runs them, so the hidden bits are the reference's: the ArcFace prior in its own inference form,
  BatchNorms folded and channels_last, on both paths, ``ArcFaceIdentity.inference_net``), ``compile=True``
  (``torch.compile`` of every device segment, ``dynamic=False``; optional, never required; the identity prior
  always runs eager, ``_identity``, so the hidden bits stay exact; the FIR layers take their stencil form,
  ``stylegan2.FIR_UNDER_COMPILE``)
  and ``cuda_graphs=True`` (one CUDA graph per device segment and input shape, static input buffers; ignored
  off CUDA).
* ``anonymize_tensors(images01, seeds)`` / ``recover_tensors`` (official payload only): the whole pipeline as
  device-only tensor functions (bench fast path, host-sync checked on the meta device).

Batch-composition independence: per-image seeds, per-image noise; the keyed payload quantises the identity
embedding on a grid with a margin and re-embeds only near-boundary images alone (``KeyedPayload.encode``,
``canonical=``), so the hidden bits of an image do not depend on the other images in its batch.

``geometry`` is any object with ``coefficients(images_m11) -> (B, n_coef)``: if it also has
``style_condition(coeffs) -> (B, 147)`` (the project's ``models.geometry.GeometryPrior``) that is used, else the
coefficients must be in Deep3DFaceRecon order (n_coef >= 227) or already the 147-d condition.
``ConstantGeometry`` is a stub for shape tests only.
``identity`` is any callable ``images_m11 -> (B, id_dim)`` (see ``g2face_eval.models.identity``).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch

from g2face_eval.anonymizer import Anonymizer, Key, Output, key_seed
from g2face_eval.models.g2face import (
    G2Face,
    G2FaceConfig,
    KeyedNoise,
    geometry_condition,
    keyed_noise,
    keyed_normal,
    set_memory_format,
)
from g2face_eval.models.payload import KeyedPayload, OfficialPayload, logits_to_bits, make_payload

Z_STREAM, ANON_NOISE_STREAM, REC_NOISE_STREAM = 1, 2, 3


class ConstantGeometry:
    """Stub geometry prior (constant coefficients). ONLY for shape tests: it carries no face geometry."""

    def __init__(self, n_coef: int = 257, value: float = 0.0):
        self.n_coef, self.value = n_coef, value

    def coefficients(self, images_m11: torch.Tensor) -> torch.Tensor:
        return torch.full((images_m11.shape[0], self.n_coef), self.value, device=images_m11.device,
                          dtype=torch.float32)


def key_seeds(keys: Sequence[Key], device: torch.device | str) -> torch.Tensor:
    """(B,) int64 seeds on ``device`` from per-image keys (one small host->device copy; pinned on CUDA so the
    copy is asynchronous). The keys are host bytes, so one copy per batch is inherent."""
    t = torch.tensor([key_seed(k) for k in keys], dtype=torch.int64)
    device = torch.device(device)
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


class _CudaGraphs:
    """One CUDA graph per (segment, input shapes/dtypes): static input buffers, outputs cloned after replay."""

    def __init__(self):
        self.graphs: dict = {}

    def run(self, name: str, fn, args: tuple[torch.Tensor, ...]):
        key = (name, *((tuple(a.shape), a.dtype) for a in args))
        ent = self.graphs.get(key)
        if ent is None:
            static = tuple(a.clone() for a in args)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up: cuDNN/cuBLAS workspaces and the weight caches
                    fn(*static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = fn(*static)
            ent = self.graphs[key] = (graph, static, out)
        graph, static, out = ent
        for s_, a in zip(static, args, strict=True):
            s_.copy_(a)
        graph.replay()
        return tuple(o.clone() for o in out) if isinstance(out, tuple) else out.clone()


class G2FaceAnonymizer(Anonymizer):
    name = "g2face"
    reversible = True
    needs_gpu = False

    def __init__(self, model: G2Face | None = None, *, identity, geometry, cfg: G2FaceConfig | None = None,
                 payload: str | OfficialPayload | KeyedPayload = "keyed", noise: str = "keyed",
                 device: str | torch.device | None = None, amp_dtype: torch.dtype | None = None,
                 amp_priors: bool = False, name: str | None = None, fast: bool = True,
                 channels_last: bool = False, compile: bool = False, cuda_graphs: bool = False):
        if model is None:
            model = G2Face(cfg or G2FaceConfig(), with_discriminator=False)
        self.model = model.eval()
        self.cfg = model.cfg
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)
        self.identity = identity
        if isinstance(identity, torch.nn.Module):
            identity.to(self.device).eval()
        self.geometry = geometry
        self.payload = (make_payload(payload, self.cfg.n_bits, self.cfg.id_dim) if isinstance(payload, str)
                        else payload)
        if self.payload.n_bits != self.cfg.n_bits:
            raise ValueError(f"payload carries {self.payload.n_bits} bits, generator {self.cfg.n_bits}")
        if noise not in ("keyed", "random"):
            raise ValueError("noise must be 'keyed' or 'random'")
        self.noise = noise
        if isinstance(amp_dtype, str):  # a configuration file's "bfloat16" / "float16"
            if amp_dtype not in ("bfloat16", "float16"):
                raise ValueError(f"amp_dtype must be 'bfloat16', 'float16' or absent, got {amp_dtype!r}")
            amp_dtype = getattr(torch, amp_dtype)
        if amp_dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"amp_dtype must be torch.bfloat16, torch.float16 or None, got {amp_dtype!r}")
        self.amp_dtype = amp_dtype
        self.amp_priors = bool(amp_priors)
        self.input_size = self.cfg.size
        # official widths: ~30 s per 256 px image in fp32 on a loaded 2-core CPU (bf16 on CPU is slower still)
        self.needs_gpu = self.cfg.channel_base >= 512
        if name:
            self.name = name
        self.fast = fast
        self.channels_last = bool(channels_last and fast)
        self.compile = bool(compile and fast)
        self._want_graphs = bool(cuda_graphs and fast)
        self.cuda_graphs = bool(self._want_graphs and self.device.type == "cuda")
        self.model.set_inference_cache(fast)
        if fast:
            self.keyed_noise = KeyedNoise(self.model.noise_shapes()).to(self.device)
            self.keyed_z = KeyedNoise([(1, self.cfg.z_dim)]).to(self.device)   # Map2ID's z, same draws
            if isinstance(geometry, torch.nn.Module):
                geometry.to(self.device).eval()
            if self.channels_last:
                set_memory_format(self.model.anonymous_net, torch.channels_last)
                set_memory_format(self.model.hiding_extractor, torch.channels_last)
        self._graphs = _CudaGraphs() if self.cuda_graphs else None
        self._compiled: dict = {}
        if fast:  # device constants of the payload codecs, built once (never inside a timed / captured call)
            if hasattr(self.payload, "consts"):
                self.payload.consts(self.device)
            if hasattr(self.payload, "_inv_perm"):
                self.payload._perm(self.device)
                self.payload._inv_perm(self.device)

    def to(self, device: str | torch.device) -> G2FaceAnonymizer:
        """Move the networks, priors and device constants (the harness calls ``method.to(device)``); drops
        compiled functions and captured graphs (CUDA graphs stay requested and apply again on CUDA)."""
        dev = torch.device(device)
        self.device = dev
        self.model.to(dev)
        for m in (self.identity, self.geometry):
            if isinstance(m, torch.nn.Module):
                m.to(dev)
        if self.fast:
            self.keyed_noise.to(dev)
            self.keyed_z.to(dev)
            if hasattr(self.payload, "consts"):
                self.payload.consts(dev)
            if hasattr(self.payload, "_inv_perm"):
                self.payload._perm(dev)
                self.payload._inv_perm(dev)
        self._compiled = {}
        self.cuda_graphs = bool(self._want_graphs and dev.type == "cuda")
        self._graphs = _CudaGraphs() if self.cuda_graphs else None
        return self

    def configure(self, *, amp_dtype: torch.dtype | None = None, channels_last: bool = False,
                  compile: bool = False, cuda_graphs: bool = False) -> G2FaceAnonymizer:
        """Switch the fast path's precision / layout / compile / CUDA-graph settings (drops compiled functions
        and captured graphs). CUDA graphs are ignored off CUDA."""
        if not self.fast:
            raise ValueError("configure() applies to the fast path (fast=True)")
        self.amp_dtype = amp_dtype
        if bool(channels_last) != self.channels_last:
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            set_memory_format(self.model.anonymous_net, fmt)
            set_memory_format(self.model.hiding_extractor, fmt)
        self.channels_last = bool(channels_last)
        self.compile = bool(compile)
        self._compiled = {}
        self._want_graphs = bool(cuda_graphs)
        self.cuda_graphs = bool(cuda_graphs and self.device.type == "cuda")
        self._graphs = _CudaGraphs() if self.cuda_graphs else None
        return self

    def config(self) -> dict:
        return {"name": self.name, "payload": self.payload.mode,
                **{f"payload_{k}": v for k, v in getattr(self.payload, "options", dict)().items()},
                "noise": self.noise, "size": self.cfg.size,
                "id_dim": self.cfg.id_dim, "identity": getattr(self.identity, "name", type(self.identity).__name__),
                "amp_dtype": str(self.amp_dtype) if self.amp_dtype else None, "amp_priors": self.amp_priors,
                "fast": self.fast,
                "channels_last": self.channels_last, "compile": self.compile, "cuda_graphs": self.cuda_graphs}

    def _amp(self, prior: bool = False):
        if self.amp_dtype is None or (prior and not self.amp_priors):
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _noise(self, seeds: torch.Tensor, stream: int):
        if self.noise == "random":
            return None
        return keyed_noise(seeds, self.model.anonymous_net, stream)

    def _geometry(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 147) style condition: the prior's own ``style_condition(coeffs)`` when it has one (e.g. the
        project's 150-coefficient GeometryPrior), else Deep3DFaceRecon slices [0:144] + [224:227]."""
        c = self.geometry.coefficients(x)
        cond = getattr(self.geometry, "style_condition", None)
        if cond is not None and c.shape[-1] != 147:
            c = cond(c)
        return geometry_condition(c.to(x.device, torch.float32))

    def _canonical(self, x: torch.Tensor):
        """Keyed payload: fn(indices) -> identity embeddings of those images computed alone (batch of 1)."""
        if self.payload.mode != "keyed":
            return None

        def alone(idx: list[int]) -> torch.Tensor:
            with self._amp(prior=True):
                return torch.cat([self.identity(x[i:i + 1]).float() for i in idx])

        return alone

    @torch.no_grad()
    def _anonymize(self, images: torch.Tensor, keys: Sequence[Key], face_masks: torch.Tensor | None) -> Output:
        if self.fast:
            return self._anonymize_fast(images, keys)
        return self._anonymize_reference(images, keys)

    @torch.no_grad()
    def _recover(self, images: torch.Tensor, keys: Sequence[Key]) -> Output:
        if self.fast:
            return self._recover_fast(images, keys)
        return self._recover_reference(images, keys)

    # ------------------------------------------------------------------------------------ fast path
    def _amp_fast(self, prior: bool = False):
        if self.amp_dtype is None or (prior and not self.amp_priors):
            return nullcontext()
        # no autocast weight-cast cache: it would be freed under a CUDA graph capture while the graph uses it
        return torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=False)

    def _cl(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _run(self, name: str, fn, *args: torch.Tensor):
        if self.compile:
            f = self._compiled.get(name)
            if f is None:
                f = self._compiled[name] = torch.compile(fn, dynamic=False)
            fn = f
        if self._graphs is not None:
            return self._graphs.run(name, fn, args)
        return fn(*args)

    @torch.compiler.disable
    def _identity(self, x: torch.Tensor) -> torch.Tensor:
        """The identity embedding, eager even inside a compiled segment (one intended graph break): inductor's
        fused kernels move the fp32 embedding by an ulp, which changes the official payload's hidden mantissa
        bits (seen on the H200); CUDA graphs still capture it."""
        with self._amp_fast(prior=True):
            return self.identity(x).float()

    def _geometry_fast(self, x: torch.Tensor) -> torch.Tensor:
        """The geometry condition on the fast path: fp32 in the default layout (as the reference path) unless
        amp_priors. (bf16 geometry alone was measured and rejected: docs/BENCH.md, session 16.)"""
        with self._amp_fast(prior=True):
            return self._geometry(x)

    def _seg_priors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [-1,1] -> (coeffs (B,147) fp32, identity (B,id_dim) fp32); default layout, fp32 unless amp_priors."""
        return self._geometry_fast(x), self._identity(x)

    def _seg_anon(self, x: torch.Tensor, coeffs: torch.Tensor, bits: torch.Tensor, seeds: torch.Tensor
                  ) -> torch.Tensor:
        b = x.shape[0]
        z = self.keyed_z.draw(seeds, Z_STREAM)                      # == keyed_normal(seeds, (z_dim,), Z_STREAM)
        noise = self.keyed_noise(seeds, ANON_NOISE_STREAM) if self.noise == "keyed" else None
        with self._amp_fast():
            y = self.model.anonymize_tensor(self._cl(x), coeffs, bits.view(b, *self.cfg.bits_shape), z, noise)
        return ((y.float() + 1) * 0.5).clamp(0, 1)

    def _seg_extract(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self._amp_fast():
            logits = self.model.extract_logits(self._cl(y)).float().reshape(y.shape[0], -1)
        return logits, self._geometry_fast(y)

    def _seg_rec(self, y: torch.Tensor, ident: torch.Tensor, coeffs: torch.Tensor, bits: torch.Tensor,
                 seeds: torch.Tensor) -> torch.Tensor:
        b = y.shape[0]
        noise = self.keyed_noise(seeds, REC_NOISE_STREAM) if self.noise == "keyed" else None
        with self._amp_fast():
            r = self.model.recover_tensor(self._cl(y), ident, coeffs, bits.view(b, *self.cfg.bits_shape), noise)
        return ((r.float() + 1) * 0.5).clamp(0, 1)

    def _anonymize_fast(self, images: torch.Tensor, keys: Sequence[Key]) -> Output:
        x = images.to(self.device, torch.float32, non_blocking=True) * 2 - 1
        seeds = key_seeds(keys, self.device)
        coeffs, ident = self._run("priors", self._seg_priors, x)
        bits = self.payload.encode(ident, keys, canonical=self._canonical(x), fast=True)   # keyed: host boundary
        out = self._run("anonymize", self._seg_anon, x, coeffs, bits, seeds)
        return Output(out, bits=bits, info={"payload": self.payload.mode})

    def _recover_fast(self, images: torch.Tensor, keys: Sequence[Key]) -> Output:
        """Official payload: the generator gets the extracted bits and reads the clamped [0,1] input, not
        test.py's hidden bits / unclamped output (module docstring, "Official payload mode vs test.py")."""
        x01 = images.to(self.device, torch.float32, non_blocking=True)
        y = x01 * 2 - 1
        seeds = key_seeds(keys, self.device)
        logits, coeffs = self._run("extract", self._seg_extract, y)
        dec = self.payload.decode(logits, keys, fast=True)                               # keyed: host boundary
        out = self._run("recover", self._seg_rec, y, dec.embeddings, coeffs, dec.bits, seeds)
        if dec.ok is not None:  # fail closed: unauthenticated payload -> image returned unchanged
            out = torch.where(dec.ok[:, None, None, None], out, x01)
        return Output(out, ok=dec.ok, bits=(torch.sigmoid(logits) > 0.5).to(torch.float32),
                      info={"payload": self.payload.mode})

    # device-only tensor API (official payload): no host work at all
    @torch.no_grad()
    def anonymize_tensors(self, images01: torch.Tensor, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,3,H,W) [0,1] on the device + (B,) int64 seeds -> (anonymised [0,1], hidden bits (B, n_bits)).
        Official payload only (the keyed payload needs keys and host cryptography)."""
        if self.payload.host_work:
            raise ValueError("anonymize_tensors needs a device payload (payload='official')")
        x = images01 * 2 - 1
        coeffs, ident = self._seg_priors(x)
        bits = self.payload.encode(ident, fast=True)
        return self._seg_anon(x, coeffs, bits, seeds), bits

    @torch.no_grad()
    def recover_tensors(self, images01: torch.Tensor, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Official payload: (B,3,H,W) anonymised [0,1] + seeds -> (recovered [0,1], hard extracted bits). The
        generator is fed the extracted bits (test.py feeds the hidden ones; see the module docstring)."""
        if self.payload.host_work:
            raise ValueError("recover_tensors needs a device payload (payload='official')")
        y = images01 * 2 - 1
        logits, coeffs = self._seg_extract(y)
        dec = self.payload.decode(logits, fast=True)
        return self._seg_rec(y, dec.embeddings, coeffs, dec.bits, seeds), dec.bits

    # ------------------------------------------------------------------------------- reference path
    def _anonymize_reference(self, images: torch.Tensor, keys: Sequence[Key]) -> Output:
        x = images.to(self.device, torch.float32) * 2 - 1
        b = x.shape[0]
        seeds = key_seeds(keys, self.device)
        with self._amp(prior=True):
            coeffs = self._geometry(x)
            ident = self.identity(x).float()
        bits = self.payload.encode(ident, keys, canonical=self._canonical(x), fast=False)  # (B, n_bits)
        z = keyed_normal(seeds, (self.cfg.z_dim,), Z_STREAM)
        with self._amp():
            y = self.model.anonymize_tensor(x, coeffs, bits.view(b, *self.cfg.bits_shape), z,
                                            self._noise(seeds, ANON_NOISE_STREAM))
        out = ((y.float() + 1) * 0.5).clamp(0, 1)
        return Output(out, bits=bits, info={"payload": self.payload.mode})

    def _recover_reference(self, images: torch.Tensor, keys: Sequence[Key]) -> Output:
        """As ``_recover_fast``: in the official payload mode the generator gets the bits extracted from the
        image, not test.py's hidden bit tensor (module docstring, "Official payload mode vs test.py")."""
        y = images.to(self.device, torch.float32) * 2 - 1
        b = y.shape[0]
        seeds = key_seeds(keys, self.device)
        with self._amp():
            logits = self.model.extract_logits(y).float().reshape(b, -1)
        with self._amp(prior=True):
            coeffs = self._geometry(y)
        dec = self.payload.decode(logits, keys, fast=False)
        with self._amp():
            r = self.model.recover_tensor(y, dec.embeddings, coeffs, dec.bits.view(b, *self.cfg.bits_shape),
                                          self._noise(seeds, REC_NOISE_STREAM))
        out = ((r.float() + 1) * 0.5).clamp(0, 1)
        if dec.ok is not None:  # fail closed: unauthenticated payload -> image returned unchanged
            out = torch.where(dec.ok[:, None, None, None], out, images.to(out.device, out.dtype))
        return Output(out, ok=dec.ok, bits=logits_to_bits(logits),
                      info={"payload": self.payload.mode})


def build_g2face_anonymizer(cfg: G2FaceConfig | None = None, *, identity="arcface", geometry=None,
                            checkpoint: str | None = None, payload: str = "keyed", device=None, **kw
                            ) -> G2FaceAnonymizer:
    """Convenience factory: identity may be a name ("arcface" | "sface") or a module; ``checkpoint`` an
    official G2Face.pth (loaded with ``g2face_eval.models.official.load_g2face``)."""
    from g2face_eval.models.identity import get_identity_prior

    if geometry is None:
        raise ValueError("G2Face needs a geometry prior with .coefficients(images_m11) (see models/geometry.py)")
    if checkpoint is not None:
        from g2face_eval.models.official import load_g2face

        model = load_g2face(checkpoint, cfg=cfg)
    else:
        model = G2Face(cfg or G2FaceConfig(), with_discriminator=False)
    ident = get_identity_prior(identity) if isinstance(identity, str) else identity
    return G2FaceAnonymizer(model, identity=ident, geometry=geometry, payload=payload, device=device, **kw)
