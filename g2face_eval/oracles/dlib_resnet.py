"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) read into PyTorch.

dlib's Python wheel runs this network single-threaded without BLAS (~115 ms per 150x150 chip on this project's
CPU machines), the largest single cost of an evaluation. This module reads the same ``.dat`` file (dlib's own
serialisation, no dlib needed) into a torch module that computes the same 128-d descriptors in batches
(tests/test_dlib_resnet.py checks it against ``dlib.face_recognition_model_v1.compute_face_descriptor`` on real
face chips), so the LFW-validated threshold of the "dlib" recognizer still applies.

The network (dlib's dnn_face_recognition_ex.cpp, "anet_type"), bottom-up:
  input_rgb_image_sized<150>: (pixel - channel mean) / 256, RGB
  con 32 7x7/2 (no padding) - affine - relu - max_pool 3x3/2 (no padding)
  3 x ares<32>, ares_down<64> + 3 x ares<64>, ares_down<128> + 2 x ares<128>,
  ares_down<256> + 2 x ares<256>, ares_down<256>
  global average pool - fc_no_bias 128
ares<N> = relu(x + affine(con3x3(relu(affine(con3x3(x))))))  (3x3 convolutions pad 1 at stride 1)
ares_down<N> = relu(avg_pool2x2/2(x) + block(x)), the block's first convolution stride 2 without padding.
dlib's add_prev adds tensors of different shapes by treating missing elements as zeros (aligned at channel 0
and at the top-left pixel): the pooled shortcut has fewer channels than the block, and at the last two levels
the block's output is smaller (3x3 vs 4x4, 1x1 vs 2x2) than the pooled shortcut.
dlib's ``affine`` layers are inference-time batch norms; they are folded into the preceding convolutions here.

Serialisation (dlib/dnn/core.h, layers.h): integers are a control byte (low nibble = byte count, bit 7 =
sign) followed by little-endian magnitude bytes; scalars of layer settings are floats stored as an integer
mantissa and exponent; tensors are ``2, num_samples, k, nr, nc`` then raw little-endian float32; an
``add_layer`` writes its version, its sub-network, its layer details, three flags and three (empty) gradient
tensors; tag and skip layers write a version and their sub-network only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 150
# (channels, ares blocks in the level, its first block downsamples) per level, bottom-up
LEVELS = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))


class DlibFormatError(ValueError):
    """The file is not the dlib face-recognition ResNet this module reads."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.b, self.p = data, 0

    def _need(self, n: int) -> None:
        if self.p + n > len(self.b):
            raise DlibFormatError(f"file ends at byte {len(self.b)} while reading {n} bytes at {self.p}")

    def int(self) -> int:
        self._need(1)
        c = self.b[self.p]
        n = c & 0x0F
        self._need(1 + n)
        v = int.from_bytes(self.b[self.p + 1 : self.p + 1 + n], "little")
        self.p += 1 + n
        return -v if c & 0x80 else v

    def str(self) -> str:
        n = self.int()
        self._need(n)
        s = self.b[self.p : self.p + n]
        self.p += n
        try:
            return s.decode("ascii")
        except UnicodeDecodeError as e:
            raise DlibFormatError(f"expected a layer name at byte {self.p - n}") from e

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        return float(mantissa) * 2.0**exponent

    def flag(self) -> bool:
        self._need(1)
        c = self.b[self.p : self.p + 1]
        self.p += 1
        if c not in (b"0", b"1"):
            raise DlibFormatError(f"expected a boolean at byte {self.p - 1}, got {c!r}")
        return c == b"1"

    def tensor(self) -> np.ndarray:
        if (v := self.int()) != 2:
            raise DlibFormatError(f"tensor version {v} at byte {self.p}, expected 2")
        dims = [self.int() for _ in range(4)]
        n = int(np.prod(dims))
        self._need(4 * n)
        a = np.frombuffer(self.b, dtype="<f4", count=n, offset=self.p).astype(np.float32)
        self.p += 4 * n
        return a.reshape(dims)

    def expect(self, name: str) -> None:
        got = self.str()
        if got != name:
            raise DlibFormatError(f"expected layer {name!r}, found {got!r}")


def read_dat(path: str | Path) -> dict:
    """Parse the .dat into ``{"mean": (3,), "layers": [(kind, dict), ...]}`` (bottom-up, tags/skips dropped)."""
    r = _Reader(Path(path).read_bytes())
    r.int()  # add_loss_layer version
    r.expect("loss_metric_2")
    r.float(), r.float()  # margin, distance threshold (training only)
    # versions of the nested add_layer / tag / skip wrappers, outermost first, down to the input layer
    while True:
        r._need(2)
        if r.b[r.p] == 0x01 and r.b[r.p + 1] == len("input_rgb_image_sized"):
            break
        r.int()
        if r.p > 4096:
            raise DlibFormatError("no input_rgb_image_sized layer near the start of the file")
    r.expect("input_rgb_image_sized")
    mean = np.array([r.float() for _ in range(3)], np.float32)
    if (nr := r.int(), nc := r.int()) != (INPUT_SIZE, INPUT_SIZE):
        raise DlibFormatError(f"input size {nr}x{nc}, expected {INPUT_SIZE}x{INPUT_SIZE}")
    layers: list[tuple[str, dict]] = []
    first = True
    while True:
        kind = r.str()
        if kind == "con_4":
            params = r.tensor().reshape(-1)
            n, kh, kw, sy, sx, py, px = (r.int() for _ in range(7))
            _, o, i, h, w = (r.int() for _ in range(5))  # filters alias: version, (o, i, h, w)
            [r.int() for _ in range(5)]  # biases alias
            [r.float() for _ in range(4)]  # learning-rate and weight-decay multipliers
            if (o, h, w) != (n, kh, kw) or params.size != o * i * h * w + o:
                raise DlibFormatError(f"con_ layer {len(layers)}: inconsistent shapes")
            weight = params[: o * i * h * w].reshape(o, i, h, w)
            layers.append(("con", {"weight": weight, "bias": params[o * i * h * w :], "stride": sy, "pad": py}))
            if sy != sx or py != px:
                raise DlibFormatError("anisotropic convolution")
        elif kind == "affine_":
            params = r.tensor().reshape(-1)
            [r.int() for _ in range(10)]  # gamma and beta aliases
            r.int()  # mode (convolutional)
            c = params.size // 2
            layers.append(("affine", {"gamma": params[:c], "beta": params[c:]}))
        elif kind == "relu_":
            layers.append(("relu", {}))
        elif kind in ("max_pool_2", "avg_pool_2"):
            h, w, sy, sx, py, px = (r.int() for _ in range(6))
            layers.append((kind[:3] + "_pool", {"size": h, "stride": sy, "pad": py}))
        elif kind == "add_prev_":
            layers.append(("add", {}))
        elif kind == "fc_2":
            n_out, n_in = r.int(), r.int()
            w = r.tensor().reshape(-1)
            if w.size != n_in * n_out:
                raise DlibFormatError("fc layer has a bias or inconsistent shape")
            layers.append(("fc", {"weight": np.ascontiguousarray(w.reshape(n_in, n_out).T)}))
            break
        else:
            raise DlibFormatError(f"unknown layer {kind!r}")
        r.flag(), r.flag(), r.flag()
        for _ in range(3):
            r.tensor()  # gradients / cached output (empty)
        if first:  # the add_layer directly above the input layer also records its sample expansion factor
            r.int()
            first = False
    return {"mean": mean, "layers": layers}


def _expected_kinds() -> list[str]:
    seq = ["con", "affine", "relu", "max_pool"]
    for _, blocks, down in LEVELS:
        for b in range(blocks):
            seq += ["con", "affine", "relu", "con", "affine"]
            seq += ["avg_pool"] if (down and b == 0) else []
            seq += ["add", "relu"]
    return seq + ["avg_pool", "fc"]


def _check_fixed_settings(layers: list[tuple[str, dict]]) -> None:
    """``forward`` hard-codes the pooling windows and each level's width: the file must agree."""
    pools = [p for k, p in layers if k.endswith("_pool")]
    want = [(3, 2, 0)] + [(2, 2, 0)] * sum(down for _, _, down in LEVELS) + [(0, 1, 0)]  # last: global average
    if [(p["size"], p["stride"], p["pad"]) for p in pools] != want:
        raise DlibFormatError("pooling settings differ from dlib_face_recognition_resnet_model_v1")
    widths = [p["weight"].shape[0] for k, p in layers if k == "con"][1:]  # after the stem: two per block
    if widths != [c for c, blocks, _ in LEVELS for _ in range(2 * blocks)]:
        raise DlibFormatError("level widths differ from dlib_face_recognition_resnet_model_v1")


def _pad_to(x: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
    return F.pad(x, (0, w - x.shape[3], 0, h - x.shape[2], 0, c - x.shape[1]))


def _add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib add_prev: the sum over the union of the shapes, missing elements are zeros."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))
    return _pad_to(a, c, h, w) + _pad_to(b, c, h, w)


class DlibResNet(nn.Module):
    """Batched torch port of dlib's face-recognition ResNet. Input: (N, 150, 150, 3) RGB chips in [0, 255]
    (uint8 or float) as from ``dlib.get_face_chip(size=150, padding=0.25)``; output: (N, 128) raw descriptors
    (dlib's, not normalised)."""

    def __init__(self, parsed: dict) -> None:
        super().__init__()
        layers = parsed["layers"]
        if [k for k, _ in layers] != _expected_kinds():
            raise DlibFormatError("layer sequence differs from dlib_face_recognition_resnet_model_v1")
        _check_fixed_settings(layers)
        self.register_buffer("mean", torch.from_numpy(parsed["mean"]).view(1, 3, 1, 1))
        convs = []
        for i, (kind, p) in enumerate(layers):
            if kind != "con":
                continue
            aff = layers[i + 1][1]  # every convolution is followed by an affine layer: fold it in
            g = aff["gamma"]
            conv = nn.Conv2d(p["weight"].shape[1], p["weight"].shape[0], p["weight"].shape[2], p["stride"], p["pad"])
            conv.weight.data = torch.from_numpy(p["weight"] * g[:, None, None, None])
            conv.bias.data = torch.from_numpy(p["bias"] * g + aff["beta"])
            convs.append(conv)
        self.convs = nn.ModuleList(convs)
        self.fc = nn.Linear(256, 128, bias=False)
        self.fc.weight.data = torch.from_numpy(layers[-1][1]["weight"])
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_dat(cls, path: str | Path) -> DlibResNet:
        return cls(read_dat(path))

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        if chips.ndim != 4 or tuple(chips.shape[1:]) != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(f"expected (N, {INPUT_SIZE}, {INPUT_SIZE}, 3) RGB chips, got {tuple(chips.shape)}")
        x = (chips.permute(0, 3, 1, 2).float() - self.mean) / 256.0
        x = x.contiguous(memory_format=torch.channels_last)
        conv = iter(self.convs)
        x = F.max_pool2d(F.relu(next(conv)(x)), 3, 2)
        for _, blocks, down in LEVELS:
            for b in range(blocks):
                first, second = next(conv), next(conv)
                y = second(F.relu(first(x)))
                skip = F.avg_pool2d(x, 2, 2) if (down and b == 0) else x
                x = F.relu(_add_prev(y, skip))
        return self.fc(x.mean(dim=(2, 3)))
