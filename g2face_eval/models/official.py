"""Loaders for the official G2Face files (Harxis/G2Face): G2Face.pth, Deep3DFaceRecon epoch_20.pth, ArcFace r50.

Our module attribute names reproduce the official state-dict keys, so the key mapping is the identity (plus
stripping a DDP ``module.`` prefix if a file carries one). Files are read with ``torch.load(weights_only=True)``.

* ``load_g2face(path_or_dict, cfg=None)`` -> ``G2Face`` (anonymous_net, style_mlp, map_2_id, hiding_extractor
  loaded strictly, as the official test.py; the discriminator too when ``with_discriminator``).
* ``save_g2face(model, path, **extra)`` writes the official checkpoint layout (epoch, iter, module state dicts).
* ``load_arcface(path)`` -> ``ArcFaceIdentity`` (bare iresnet50 state dict, strict).
* ``load_d3dfr_state(path)`` -> the ``net_recon`` state dict of epoch_20.pth, validated against the manifest
  (the network itself belongs to ``g2face_eval.models.geometry``).
* ``manifest()`` / ``check_against_manifest(name, state_dict)`` compare names and shapes with
  /work/shared/reference/g2face_official_state_dicts.json (path from $G2FACE_OFFICIAL_MANIFEST or the default).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from g2face_eval.models.g2face import G2Face, G2FaceConfig
from g2face_eval.models.identity import ArcFaceIdentity

G2FACE_MODULES = ("anonymous_net", "style_mlp", "map_2_id", "hiding_extractor")
DEFAULT_MANIFEST = Path(__file__).resolve().parents[3] / "shared" / "reference" / "g2face_official_state_dicts.json"


def manifest(path: str | Path | None = None) -> dict:
    p = Path(path or os.environ.get("G2FACE_OFFICIAL_MANIFEST", DEFAULT_MANIFEST))
    with open(p) as f:
        return json.load(f)


def check_against_manifest(name: str, state_dict: Mapping[str, torch.Tensor], ref: dict | None = None
                           ) -> list[str]:
    """Differences between a state dict and the manifest entry ``name`` (empty list = identical)."""
    mods = (ref or manifest())["modules"][name]
    problems = [f"missing {k}" for k in mods if k not in state_dict]
    problems += [f"unexpected {k}" for k in state_dict if k not in mods]
    problems += [f"shape {k}: {list(state_dict[k].shape)} != {mods[k]}" for k in mods
                 if k in state_dict and list(state_dict[k].shape) != list(mods[k])]
    return problems


def map_official_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official -> ours: identity, minus a DDP 'module.' prefix."""
    return {(k[7:] if k.startswith("module.") else k): v for k, v in state_dict.items()}


def _load(path_or_obj) -> dict:
    if isinstance(path_or_obj, Mapping):
        return dict(path_or_obj)
    return torch.load(str(path_or_obj), map_location="cpu", weights_only=True)


def load_g2face(path_or_dict, cfg: G2FaceConfig | None = None, *, with_discriminator: bool = False,
                strict: bool = True) -> G2Face:
    ckpt = _load(path_or_dict)
    missing = [k for k in G2FACE_MODULES if k not in ckpt]
    if missing:
        raise KeyError(f"not a G2Face checkpoint: missing {missing} (has {sorted(ckpt)[:10]})")
    model = G2Face(cfg or G2FaceConfig(), with_discriminator=with_discriminator)
    names = G2FACE_MODULES + (("discriminator",) if with_discriminator and "discriminator" in ckpt else ())
    for k in names:
        getattr(model, k).load_state_dict(map_official_keys(ckpt[k]), strict=strict)
    return model.eval()


def save_g2face(model: G2Face, path: str | Path, *, epoch: int = 0, iteration: int = 0, **extra) -> None:
    ckpt = {"epoch": epoch, "iter": iteration, **model.checkpoint_state(), **extra}
    torch.save(ckpt, str(path))


def init_from_stylegan2(model: G2Face, g_ema_state: Mapping[str, torch.Tensor]) -> list[str]:
    """As the official train.py: load a rosinality StyleGAN2 ``g_ema`` state dict into ``anonymous_net`` with
    strict=False (overlap: input, conv1, to_rgb1, convs, to_rgbs incl. kernel buffers; ``style.*`` and
    ``noises.*`` ignored). Also accepts our ``stylegan2.Generator`` state dict. Returns the keys left at init
    (pyramid, fusion_mask, hiding_injects)."""
    sd = map_official_keys(g_ema_state.get("g_ema", g_ema_state) if isinstance(g_ema_state, Mapping) else g_ema_state)
    own = model.anonymous_net.state_dict()
    use = {k: v for k, v in sd.items() if k in own and not k.startswith(("style.", "noises."))}
    bad = [k for k, v in use.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"StyleGAN2 weights do not fit this G2Face config: {bad[:5]}")
    model.anonymous_net.load_state_dict(use, strict=False)
    return sorted(set(own) - set(use))


def load_arcface(path_or_dict) -> ArcFaceIdentity:
    return ArcFaceIdentity(state_dict=map_official_keys(_load(path_or_dict)))


def load_d3dfr_state(path_or_dict, *, validate: bool = True) -> dict[str, torch.Tensor]:
    ckpt = _load(path_or_dict)
    sd = map_official_keys(ckpt["net_recon"] if "net_recon" in ckpt else ckpt)
    if validate:
        try:
            ref = manifest()
        except FileNotFoundError:
            ref = None
        if ref is not None:
            probs = [p for p in check_against_manifest("d3dfr_net_recon", sd, ref)
                     if not p.startswith("missing") or not p.endswith("num_batches_tracked")]
            if probs:
                raise ValueError(f"Deep3DFaceRecon net_recon does not match the official layout: {probs[:5]}")
    return sd
