"""FIT-style reversible anonymizer (after Gu et al., ECCV 2020, *Password-conditioned Anonymization and
Deanonymization with Face Identity Transformers*), trained by this project at the first shipped G2Face's budget.

One encoder-decoder ``G(x, p)`` (a small U-Net, residual in tanh space)
conditioned on an ``n_bits`` password ``p`` (broadcast as input channels and as a FiLM code at the bottleneck).
Anonymize: ``y = G(x, p)``; recover: ``x_rec = G(y, p_inv)`` with the inverse password ``p_inv = 1 - p``
(bitwise complement), the same network. In the harness the password is derived from the image's key
(``anonymizer.key_bits``: ``n_bits`` bits of SHAKE-256 of the key, purpose "fit", unrelated to other methods'
bits), so recovery uses the same key and a wrong key means a wrong (inverse) password.

Training losses (FIT's, with our offline priors; all images [-1,1], three passwords per image drawn from the
step's generator: p1, p2 and a wrong p_w):

* identity difference (SFace, ``id_cosine`` target -1 = max(0, cos)): ``y1 = G(x, p1)`` vs ``x``, and
  ``y1`` vs ``y2 = G(x, p2)`` (different passwords -> different identities), ``w_id``;
* recovery reconstruction: L1 + perceptual of ``G(y1, 1 - p1)`` vs ``x``, ``w_rec_l1`` / ``w_rec_perc``;
* wrong-password recovery stays anonymous: ``G(y1, 1 - p_w)`` differs in identity from ``x`` (and from
  ``y1``), ``w_wrong``;
* adversarial realism (non-saturating, patch discriminator with R1) on ``y1`` and the wrong recovery,
  ``w_adv``;
* content preservation: L1 between ``y1`` and ``x`` outside the face region (the landmark-prior ellipse),
  ``w_bg``, plus a weak whole-image L1 ``w_l1`` that keeps pose and expression during early training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from baselines.learned._face import ellipse_mask, landmarks2d
from baselines.learned.base import (
    Batch,
    LearnedBaseline,
    ModelAnonymizer,
    PatchDiscriminator,
    UNet,
    builder,
    register_method,
)
from g2face_eval.anonymizer import Key, Output, key_bits
from g2face_eval.training.losses import g_nonsaturating, id_cosine

WEIGHTS = {"id": 3.0, "rec_l1": 5.0, "rec_perc": 1.0, "wrong": 2.0, "adv": 0.5, "bg": 1.0, "l1": 0.2}
# BaselineConfig overrides used for the shipped checkpoint (lr 1e-3 collapsed the generator; see the model card)
TRAIN_DEFAULTS = {"lr": 2e-4, "lr_d": 2e-4}


@builder("fit")
class FIT(LearnedBaseline):
    reversible = True

    def __init__(self, size: int = 64, width: int = 32, n_res: int = 2, n_bits: int = 16,
                 weights: dict | None = None, d_width: int = 32, residual: bool = True):
        w = {**WEIGHTS, **(weights or {})}
        super().__init__(size=size, width=width, n_res=n_res, n_bits=n_bits, weights=w, d_width=d_width,
                         residual=residual)
        self.size, self.n_bits, self.w = size, n_bits, w
        self.generator = UNet(3 + n_bits, n_bits, width, n_res, residual=residual)
        self.discriminator = PatchDiscriminator(3, d_width)

    def generate(self, x_m11: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        """``G(x, p)``: x [-1,1] (B,3,S,S), bits (B, n_bits) {0,1} -> [-1,1]."""
        code = bits.to(x_m11) * 2 - 1
        planes = code[:, :, None, None].expand(-1, -1, *x_m11.shape[-2:])
        return self.generator(torch.cat([x_m11, planes], 1), code)

    def training_losses(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        x, w, pr = batch.x, self.w, self.priors
        b, h = x.shape[0], max(1, x.shape[0] // 2)
        p1, p2, pw = batch.bits(b, self.n_bits), batch.bits(h, self.n_bits), batch.bits(b, self.n_bits)
        y1 = self.generate(x, p1)
        y2 = self.generate(x[:h], p2)
        rec = self.generate(y1, 1 - p1)
        wrong = self.generate(y1, 1 - pw)
        with torch.no_grad():
            id_x = pr.identity(x)
            bg = 1 - ellipse_mask(landmarks2d(pr.geometry, x), x.shape[-1], 2.4)
        e = pr.identity(torch.cat([y1, y2, wrong]))
        e_y1, e_y2, e_w = e[:b], e[b:b + h], e[b + h:]
        p: dict[str, torch.Tensor] = {}
        p["id"] = w["id"] * (id_cosine(e_y1, id_x, -1) + id_cosine(e_y1[:h], e_y2, -1))
        p["rec_l1"] = w["rec_l1"] * (rec - x).abs().mean()
        p["rec_perc"] = w["rec_perc"] * pr.perceptual(rec, x)
        p["wrong"] = w["wrong"] * (id_cosine(e_w, id_x, -1) + id_cosine(e_w, e_y1.detach(), -1))
        p["adv"] = w["adv"] * (g_nonsaturating(self.discriminator(y1)) + g_nonsaturating(self.discriminator(wrong)))
        p["bg"] = w["bg"] * ((y1 - x).abs() * bg).sum() / (3 * bg.sum()).clamp_min(1)
        p["l1"] = w["l1"] * (y1 - x).abs().mean()
        total = sum(p.values())
        with torch.no_grad():  # logged diagnostics (not optimised)
            p["m_rec_psnr"] = -10 * torch.log10(((rec.clamp(-1, 1) - x) * 0.5).pow(2).mean().clamp_min(1e-10))
            p["m_cos_y_x"] = F.cosine_similarity(e_y1, id_x).mean()
        p["total"] = total
        batch.fakes = [y1.detach(), wrong.detach()]
        batch.samples = (x.detach(), y1.detach(), rec.detach())
        return p

    def anonymizer(self, device: str = "cpu") -> FITAnonymizer:
        return FITAnonymizer(self, device=device)


class FITAnonymizer(ModelAnonymizer):
    """The FIT-style model as an ``Anonymizer`` at its own size: password = ``n_bits`` bits from the key.
    Recovery is not authenticated (``ok`` is None): ``recover`` returns a "recovered" image for any input, one
    that was never anonymized included, and a wrong key gives another image, not a refusal."""

    name = "fit"
    reversible = True

    def config(self) -> dict:
        c = self.model.model_config()
        return {"name": self.name, "family": "learned_fit", "size": c["size"], "width": c["width"],
                "n_bits": c["n_bits"], "password": "key_bits(key, purpose 'fit'); recovery: bitwise complement"}

    @torch.no_grad()
    def _run(self, images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        y = self.model.generate(self.to_model(images), bits.to(self.device))
        return self.from_model(y, images)

    def _anonymize(self, images: torch.Tensor, keys: Sequence[Key], face_masks: torch.Tensor | None
                   ) -> Output:
        return Output(self._run(images, key_bits(keys, self.model.n_bits, "fit")))

    def _recover(self, images: torch.Tensor, keys: Sequence[Key]) -> Output:
        return Output(self._run(images, 1 - key_bits(keys, self.model.n_bits, "fit")))


def register_methods(methods) -> None:
    register_method(methods, "fit")
