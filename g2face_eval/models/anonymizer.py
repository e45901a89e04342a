"""G2Face as an ``Anonymizer`` (reversible), with the keyed payload by default.

anonymize(images [0,1], keys):
    x = 2*images-1; coeffs = geometry.coefficients(x); id = identity(x);
    bits = payload.encode(id, keys);  z = keyed N(0,1) (B, z_dim) from key_seed(key); noise maps keyed too;
    y = anonymous_net(x, style_mlp(Map2ID(z), coeffs), bits, noise)  -> Output(images=(y+1)/2 clamped, bits)
recover(images, keys):
    logits = hiding_extractor(y); decoded = payload.decode(logits, keys);
    r = anonymous_net(y, style_mlp(decoded.embeddings, geometry(y)), decoded.bits, keyed noise)
    -> Output(images, ok=decoded.ok (keyed) / None (official), bits=hard extracted bits)

Fail-closed recovery (keyed mode): for an image whose payload does not decode or does not authenticate under the
given key (wrong key, tampering, too many bit errors) ``ok`` is False and the returned image is the input
(anonymised) image unchanged; the decoded bytes are never used, so no original identity is exposed.

Precision: ``amp_dtype`` (e.g. torch.bfloat16) runs the G2Face networks under autocast; the identity and geometry
priors stay in float32 unless ``amp_priors=True``, so the hidden payload (hence the output) does not depend on
the generator's precision.

Randomness: per-image and batch-independent. ``noise="keyed"`` (default) draws Map2ID's z and every StyledConv
noise map with a counter-based generator seeded by ``key_seed(key)`` on the model's device (no host random
draws); ``noise="random"`` is the official behaviour (fresh torch.randn for noise maps; z still keyed).

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
from g2face_eval.models.g2face import G2Face, G2FaceConfig, geometry_condition, keyed_noise, keyed_normal
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
    """(B,) int64 seeds on ``device`` from per-image keys (one small host->device copy)."""
    return torch.tensor([key_seed(k) for k in keys], dtype=torch.int64).to(device, non_blocking=True)


class G2FaceAnonymizer(Anonymizer):
    name = "g2face"
    reversible = True
    needs_gpu = False

    def __init__(self, model: G2Face | None = None, *, identity, geometry, cfg: G2FaceConfig | None = None,
                 payload: str | OfficialPayload | KeyedPayload = "keyed", noise: str = "keyed",
                 device: str | torch.device | None = None, amp_dtype: torch.dtype | None = None,
                 amp_priors: bool = False, name: str | None = None):
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
        self.amp_dtype = amp_dtype
        self.amp_priors = amp_priors
        self.input_size = self.cfg.size
        # official widths: ~30 s per 256 px image in fp32 on a loaded 2-core CPU (bf16 on CPU is slower still)
        self.needs_gpu = self.cfg.channel_base >= 512
        if name:
            self.name = name

    def config(self) -> dict:
        return {"name": self.name, "payload": self.payload.mode, "noise": self.noise, "size": self.cfg.size,
                "id_dim": self.cfg.id_dim, "identity": getattr(self.identity, "name", type(self.identity).__name__),
                "amp_dtype": str(self.amp_dtype) if self.amp_dtype else None}

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

    @torch.no_grad()
    def _anonymize(self, images: torch.Tensor, keys: Sequence[Key], face_masks: torch.Tensor | None) -> Output:
        x = images.to(self.device, torch.float32) * 2 - 1
        b = x.shape[0]
        seeds = key_seeds(keys, self.device)
        with self._amp(prior=True):
            coeffs = self._geometry(x)
            ident = self.identity(x).float()
        bits = self.payload.encode(ident, keys)                              # (B, n_bits) on device
        z = keyed_normal(seeds, (self.cfg.z_dim,), Z_STREAM)
        with self._amp():
            y = self.model.anonymize_tensor(x, coeffs, bits.view(b, *self.cfg.bits_shape), z,
                                            self._noise(seeds, ANON_NOISE_STREAM))
        out = ((y.float() + 1) * 0.5).clamp(0, 1)
        return Output(out, bits=bits, info={"payload": self.payload.mode})

    @torch.no_grad()
    def _recover(self, images: torch.Tensor, keys: Sequence[Key]) -> Output:
        y = images.to(self.device, torch.float32) * 2 - 1
        b = y.shape[0]
        seeds = key_seeds(keys, self.device)
        with self._amp():
            logits = self.model.extract_logits(y).float().reshape(b, -1)
        with self._amp(prior=True):
            coeffs = self._geometry(y)
        dec = self.payload.decode(logits, keys)
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
