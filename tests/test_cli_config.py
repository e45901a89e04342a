"""User-facing entry points and result provenance: config validation (names, option tables, values, device),
CLI exit codes, what identifies a run (the resolved dataset folders), invocations recorded at start, MLflow runs
never reused across configurations, git provenance, package data and the reports folder."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from evalhelpers import cheap_config  # tests/ is on sys.path

from g2face_eval.harness import config as C
from g2face_eval.harness import evaluate as E
from g2face_eval.harness import tracking as T

REPO = Path(__file__).resolve().parent.parent
EMBEDDED = REPO / "g2face_eval" / "data" / "embedded" / "faces"
# two faces per folder, same file names, different people
FACES_A = ["albert_einstein__einstein.jpg", "grace_hopper__grace_hopper.jpg"]
FACES_B = ["tom_hanks__tom_hanks.jpg", "joe_biden__biden.jpg"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")  # shared by this module's runs (keyed by content)


def _cheap(tmp: Path, cache: Path, **kw) -> dict:
    """A seconds-long evaluation: one cheap method, SFace only, no detectors, mesh or Fréchet features."""
    return cheap_config(tmp, cache, **kw)


def _old_hash(cfg: dict) -> str:
    """config_hash as it was before the dataset folders and the metric-definitions version entered it."""
    core = {k: v for k, v in cfg.items() if k not in C.NON_RESULT_KEYS}
    return hashlib.sha256(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------------ run identity
def test_dataset_folder_is_part_of_the_run_identity(tmp_path):
    a, b, link = tmp_path / "a", tmp_path / "b", tmp_path / "link"
    a.mkdir(), b.mkdir()
    link.symlink_to(a, target_is_directory=True)
    h = {p: C.config_hash(C.make_config({"datasets": ["folder"], "datasets_root": str(p)})) for p in (a, b, link)}
    assert h[a] != h[b]  # same file names, other folder: other results
    assert h[a] == h[link]  # the same folder through a symlink: the same run
    opt = C.make_config({"datasets": ["folder"], "dataset_options": {"folder": {"root": str(link)}}})
    assert C.data_locations(opt) == {"folder": str(a.resolve())}
    emb = C.make_config({"datasets_root": str(a)})  # the embedded faces: no dataset folder is read
    assert C.data_locations(emb) == {}


def test_runs_under_other_metric_definitions_are_not_resumed(monkeypatch):
    """The metric-definitions version is part of the config hash: a run computed before a metric changed its
    meaning or name (e.g. expression_distance -> mesh_shape_distance) gets another run name, so its stored
    records are never mixed into a run of the new definitions (resuming one used to crash the aggregation on the
    renamed metric, or silently mix detection decisions of two definitions)."""
    from g2face_eval.metrics import base

    emb = C.make_config({})
    now = C.config_hash(emb)
    assert now != _old_hash(emb)  # a run directory from before the version existed is not resumed
    monkeypatch.setattr(base, "DEFINITIONS_VERSION", base.DEFINITIONS_VERSION + 1)
    assert C.config_hash(emb) != now


def test_same_file_names_in_another_folder_are_recomputed(tmp_path, cache_dir):
    roots = {}
    for name, faces in (("fa", FACES_A), ("fb", FACES_B)):
        roots[name] = tmp_path / name
        roots[name].mkdir()
        for i, f in enumerate(faces):
            shutil.copy(EMBEDDED / f, roots[name] / f"face{i}.jpg")
    res = {
        name: E.evaluate(_cheap(tmp_path, cache_dir, datasets=["folder"], limit=None, datasets_root=str(root)),
                         progress=False, quiet=True)
        for name, root in roots.items()
    }
    assert res["fa"]["run_dir"] != res["fb"]["run_dir"]
    (inv,) = json.loads((res["fb"]["run_dir"] / "invocations.json").read_text())
    assert inv["batches_computed"] == inv["batches_total"] == 1  # computed, not reused from fa
    assert inv["data_locations"] == {"folder": str(roots["fb"].resolve())}
    ra, rb = (res[n]["records"].set_index("id").sort_index() for n in ("fa", "fb"))
    assert list(ra.index) == list(rb.index) == ["face0.jpg", "face1.jpg"]
    assert (ra.status == "ok").all() and (rb.status == "ok").all()
    assert not (ra["psnr"].to_numpy() == rb["psnr"].to_numpy()).any()  # other faces, other numbers


# ------------------------------------------------------------------------------------------------ invocations
def test_invocation_is_recorded_at_start_and_a_resume_by_other_code_warns(tmp_path, cache_dir, monkeypatch,
                                                                          caplog):
    real = T.environment_info
    cfg = _cheap(tmp_path, cache_dir, limit=4)
    monkeypatch.setattr(T, "environment_info", lambda: {**real(), "git_hash": "a" * 40, "git_dirty": False})
    with pytest.raises(E.Interrupted):
        E.evaluate(cfg, progress=False, quiet=True, _interrupt_after=1)
    (run_dir,) = [p for p in (tmp_path / "results").iterdir() if (p / "config.json").exists()]
    (inv,) = json.loads((run_dir / "invocations.json").read_text())  # the interrupted run left provenance
    assert inv["status"] == "running" and inv["git_hash"] == "a" * 40 and inv["git_dirty"] is False
    assert inv["device"] == "cpu" and inv["config_hash"] == run_dir.name.rsplit("-", 1)[1]

    monkeypatch.setattr(T, "environment_info", lambda: {**real(), "git_hash": "b" * 40, "git_dirty": False})
    with caplog.at_level(logging.WARNING, logger="g2face_eval.evaluate"):
        res = E.evaluate(cfg, progress=False, quiet=True)
    assert res["run_dir"] == run_dir
    warned = [r.getMessage() for r in caplog.records if "mix code versions" in r.getMessage()]
    assert len(warned) == 1 and "b" * 40 in warned[0] and "a" * 40 in warned[0]
    first, second = json.loads((run_dir / "invocations.json").read_text())
    assert first["status"] == "interrupted" and "finished" not in first
    assert second["status"] == "finished" and second["git_hash"] == "b" * 40
    assert second["batches_computed"] == 1 and second["batches_total"] == 2 and second["wall_s"] >= 0
    import mlflow

    client = mlflow.MlflowClient(res["tracking_uri"])
    parent = client.get_run(res["parent_run_id"])
    assert parent.data.tags["mlflow.source.git.commit"] == "b" * 40  # the latest invocation's code
    assert parent.data.tags["g2face.git_dirty"] == "false"
    assert parent.data.tags["g2face.config_hash"] == second["config_hash"]
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert [c.data.tags.get("mlflow.source.git.commit") for c in children] == ["b" * 40]


# ------------------------------------------------------------------------------------------------ MLflow
def test_reused_run_name_with_another_config_starts_new_mlflow_runs(tmp_path, cache_dir):
    import mlflow

    one = E.evaluate(_cheap(tmp_path, cache_dir, run_name="rn", limit=2), progress=False, quiet=True)
    two = E.evaluate(_cheap(tmp_path, cache_dir, run_name="rn", limit=3), progress=False, quiet=True)
    assert one["run_dir"] == two["run_dir"]  # the same folder, as asked
    assert one["parent_run_id"] != two["parent_run_id"]
    client = mlflow.MlflowClient(two["tracking_uri"])
    p1, p2 = (client.get_run(r["parent_run_id"]) for r in (one, two))
    assert p1.data.params["limit"] == "2" and p2.data.params["limit"] == "3"  # MLflow agrees with config.json
    assert json.loads((two["run_dir"] / "config.json").read_text())["limit"] == 3
    assert p1.data.tags["g2face.config_hash"] != p2.data.tags["g2face.config_hash"]
    kids = client.search_runs([p2.info.experiment_id], f"tags.mlflow.parentRunId = '{p2.info.run_id}'")
    assert [k.data.params["limit"] for k in kids] == ["3"]
    # the same configuration again resumes its MLflow runs
    three = E.evaluate(_cheap(tmp_path, cache_dir, run_name="rn", limit=3), progress=False, quiet=True)
    assert three["parent_run_id"] == two["parent_run_id"]


# ------------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"datasets": ["celebahq256"], "dataset_options": {"celebahq": {"split": "all"}}}, "'celebahq' not in"),
        ({"methods": ["blur_s4"], "method_options": {"blur_s44": {"sigma": 1}}}, "'blur_s44' not in"),
        ({"recognizers": ["sface", "dlbi"]}, r"unknown recognizer name\(s\) 'dlbi'; known: .*sface"),
        ({"detectors": ["yunet", "dlb_hog"]}, r"unknown detector name\(s\) 'dlb_hog'; known: .*dlib_hog"),
        ({"datasets": "nosuch"}, r"unknown dataset name\(s\) 'nosuch'; known: .*celebahq256"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"limit": -1}, "limit must be an integer >= 0"),
        ({"limit": "ten"}, "limit must be an integer >= 0"),
        ({"face_mesh": "false"}, "face_mesh must be true or false"),
        ({"device": "cuda:99"}, "device 'cuda:99'"),
        ({"device": "gpu"}, "not a torch device"),
        # found by a review: each of these failed late (after every image was computed) or silently
        ({"bootstrap_samples": 0}, "bootstrap_samples must be an integer >= 1"),
        ({"image_size": 0}, "image_size must be an integer >= 16"),
        ({"seed": "abc"}, "seed must be an integer >= 0"),
        ({"latency_repeats": "x"}, "latency_repeats must be an integer >= 0"),
        ({"fd_min_images": "two"}, "fd_min_images must be an integer >= 0"),
        ({"samples_per_grid": -1}, "samples_per_grid must be an integer >= 0"),
        ({"results_dir": 5}, "results_dir must be a folder path"),
        ({"methods": ""}, "methods: no method named"),
        ({"methods": []}, "methods: no method named"),
    ],
)
def test_config_refuses_what_it_would_ignore(overrides, message):
    with pytest.raises(ValueError, match=message):
        C.make_config(overrides)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("syntax.toml", "limit = = 3\n", r"config .*syntax.toml: not valid TOML"),
        ("scalar.json", "5\n", r"config .*scalar.json: expected a table of settings"),
        ("twice.toml", "limit = 3\n[evaluate]\nlimit = 4\n", "limit given both at the top level and in"),
        ("twice.json", '{"limit": 3, "limit": 4}', "key 'limit' given twice"),
        ("twice.yaml", "limit: 3\nlimit: 4\n", "key 'limit' given twice"),
        ("nested.yml", "method_options:\n  blur_s4: {sigma: 2, sigma: 3}\n", "key 'sigma' given twice"),
    ],
)
def test_config_files_refused_with_their_name(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        C.make_config({}, tmp_path / name)


def test_setup_errors_exit_2_in_one_line(tmp_path, capsys):
    """Options a method refuses and a results folder that is a file: one line, exit 2, nothing computed
    (both were tracebacks; found by a review)."""
    from evalhelpers import cheap_config

    (tmp_path / "afile").write_text("")
    cfg = cheap_config(tmp_path, tmp_path / "cache", methods=["blur_s4"],
                       method_options={"blur_s4": {"nonsense": 1}})
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    assert E.cli(["--config", str(tmp_path / "cfg.json"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("g2face-eval evaluate: method_options.blur_s4 = {'nonsense': 1}: ") and "\n" not in err
    assert "unknown option(s) nonsense" in err and not (tmp_path / "results").exists()
    assert E.cli(["--config", str(tmp_path / "cfg.json"), "--results-dir", str(tmp_path / "afile")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_config_normalises_names_and_keeps_known_unavailable_ones(tmp_path):
    cfg = C.make_config({"detectors": "yunet", "recognizers": "sface,dlib", "feature_extractors": "effnet_lite0"})
    assert cfg["detectors"] == ["yunet"] and cfg["recognizers"] == ["sface", "dlib"]
    assert cfg["feature_extractors"] == ["effnet_lite0"]
    # a known recognizer is accepted whatever its weights (missing ones are reported "unavailable" by the run)
    assert C.make_config({"recognizers": ["sface", "arcface_r100"]})["recognizers"] == ["sface", "arcface_r100"]
    assert C.make_config({"limit": 0})["limit"] is None
    assert C.make_config({"method_options": {"blur_s4": {"box_margin": 0.2}}})  # a default method
    for f in sorted((REPO / "configs").glob("*.toml")):  # the shipped configs pass the validation
        C.make_config({"datasets_root": str(tmp_path)}, file=f)


def test_cuda_needs_cuda():
    if torch.cuda.is_available():
        assert C.make_config({"device": "cuda"})["device"] == "cuda"
        n = torch.cuda.device_count()
        with pytest.raises(ValueError, match=f"{n} CUDA device"):
            C.make_config({"device": f"cuda:{n}"})
    else:
        with pytest.raises(ValueError, match="CUDA is not available"):
            C.make_config({"device": "cuda"})
    assert C.make_config({"device": "cpu"})["device"] == "cpu"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "no_such"], "unknown method 'no_such'; known: "),
        (["--datasets", "nosuch"], "unknown dataset name(s) 'nosuch'"),
        (["--batch-size", "0"], "batch_size must be an integer >= 1"),
        (["--limit", "-1"], "limit must be an integer >= 0"),
        (["--device", "cuda:99"], "device 'cuda:99'"),
        (["--config", "CONFIG"], "'blur_s44' not in this run"),
    ],
)
def test_cli_exits_2_with_a_message_on_invalid_values(argv, message, tmp_path, monkeypatch, capsys):
    def run_anyway(*a, **k):
        raise AssertionError("an invalid configuration reached the evaluation")

    monkeypatch.setattr(E, "evaluate", run_anyway)
    bad = tmp_path / "bad.toml"
    bad.write_text('methods = ["blur_s4"]\n[method_options.blur_s44]\nsigma = 1\n')
    argv = [str(bad) if a == "CONFIG" else a for a in argv]
    rc = E.cli([*argv, "--results-dir", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert err.startswith("g2face-eval evaluate: ")
    assert not (tmp_path / "r").exists()


def test_cli_exits_2_on_a_missing_dataset_folder(tmp_path, monkeypatch, capsys):
    """A dataset root without the dataset's layout: a one-line message and exit 2, not a traceback."""
    from g2face_eval.harness import prepare as P

    def no_oracles(*a, **k):  # the folder is checked before any oracle or model is needed
        raise AssertionError("oracles loaded for a run whose dataset is missing")

    monkeypatch.setattr(E, "Oracles", no_oracles)
    monkeypatch.setattr(P, "reference_arrays", no_oracles)
    rc = E.cli(["--datasets", "celebahq256", "--datasets-root", str(tmp_path / "nowhere"), "--methods", "blur_s1",
                "--results-dir", str(tmp_path / "r"), "--reports-dir", str(tmp_path / "rep"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "dataset 'celebahq256': no images under" in err and "Traceback" not in err


def test_the_run_limit_caps_a_dataset_limit(datasets_root):
    """--limit is the stricter of the two when a dataset also has its own limit (it used to be ignored)."""
    from g2face_eval.harness.prepare import DatasetSource

    cfg = C.make_config({"datasets": ["utkface"], "limit": 10, "datasets_root": str(datasets_root),
                         "dataset_options": {"utkface": {"limit": 500}}})
    assert len(DatasetSource("utkface", cfg).ids) == 10
    cfg = C.make_config({"datasets": ["utkface"], "limit": 500, "datasets_root": str(datasets_root),
                         "dataset_options": {"utkface": {"limit": 7}}})
    assert len(DatasetSource("utkface", cfg).ids) == 7


# ------------------------------------------------------------------------------------------------ folders
def test_reports_dir_is_relative_to_the_working_directory_like_results_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("G2FACE_REPORTS_DIR", raising=False)
    monkeypatch.delenv("G2FACE_RESULTS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = C.make_config()
    assert Path(cfg["reports_dir"]).resolve() == (tmp_path / "reports" / "out").resolve()
    assert Path(cfg["results_dir"]).resolve() == (tmp_path / "results").resolve()
    monkeypatch.setenv("G2FACE_REPORTS_DIR", str(tmp_path / "elsewhere"))
    assert C.make_config()["reports_dir"] == str(tmp_path / "elsewhere")
    import argparse

    ap = argparse.ArgumentParser()
    C.add_arguments(ap)
    assert C.from_args(ap.parse_args(["--reports-dir", "x/y"]))["reports_dir"] == "x/y"


def test_every_tracked_data_file_of_the_package_is_package_data():
    """A wheel carries only what ``[tool.setuptools.package-data]`` names: every tracked non-Python file under
    g2face_eval/ (embedded faces, checkpoints and their sha256 records, the recognizer thresholds) must match."""
    try:
        out = subprocess.run(["git", "--no-optional-locks", "ls-files", "g2face_eval"], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("git not available")
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    files = [f for f in out.stdout.splitlines() if not f.endswith(".py")]
    assert "g2face_eval/oracles/thresholds.json" in files
    import tomllib  # Python >= 3.11 (config files need it too)

    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    covered = {
        p.relative_to(REPO).as_posix()
        for pat in patterns["g2face_eval"]
        for p in (REPO / "g2face_eval").glob(pat)
        if p.is_file()
    }
    missing = [f for f in files if f not in covered and not fnmatch.fnmatch(f, "*/__pycache__/*")]
    assert not missing, f"not in pyproject's package-data (a wheel install would lose them): {missing}"


# ------------------------------------------------------------------------------------------------ git
def test_git_provenance_is_unknown_outside_the_projects_own_checkout(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    info = T.environment_info(root=plain)  # an installed wheel / unpacked archive: no git at all
    assert info["git_hash"] is None and info["git_dirty"] is None
    host = tmp_path / "host"
    (host / "vendor" / "g2face").mkdir(parents=True)
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(tmp_path), "PATH": __import__("os").environ["PATH"]}
    try:
        for args in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "host"]):
            subprocess.run(["git", *args], cwd=host, env=env, check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"git not usable here: {e}")
    # copied inside another repository: the host's HEAD does not describe this code
    assert T.git_info(host / "vendor" / "g2face") == {"git_hash": None, "git_dirty": None}
    own = T.git_info(host)
    assert own["git_hash"] and len(own["git_hash"]) == 40 and own["git_dirty"] is False
    assert T.git_tags(own) == {"mlflow.source.git.commit": own["git_hash"], "g2face.git_dirty": "false"}
    assert T.git_tags({"git_hash": None, "git_dirty": None}) == {}
    # results written inside the checkout (untracked) are no code change; an edited tracked file is
    (host / "results").mkdir()
    (host / "results" / "records.csv").write_text("id\n")
    assert T.git_info(host)["git_dirty"] is False
    (host / "code.py").write_text("x = 1\n")
    for args in (["add", "code.py"], ["commit", "-q", "-m", "code"]):
        subprocess.run(["git", *args], cwd=host, env=env, check=True, capture_output=True, timeout=60)
    (host / "code.py").write_text("x = 2\n")
    assert T.git_info(host)["git_dirty"] is True


# ------------------------------------------------------------------------------------------------ help
def test_train_baseline_help_shows_the_baselines_defaults(tmp_path, monkeypatch):
    from baselines.learned.base import BaselineConfig
    from baselines.learned.train import build_parser, config_from_args

    text = " ".join(build_parser().format_help().split())
    assert f"total iterations (default {BaselineConfig.steps})" in text
    assert "(default <results dir>/train/<baseline>; $G2FACE_RESULTS_DIR, else ./results)" in text
    monkeypatch.setenv("G2FACE_RESULTS_DIR", str(tmp_path / "res"))
    assert config_from_args(build_parser().parse_args(["fit"])).out == str(tmp_path / "res" / "train" / "fit")
    for flag in ("--preset", "--pretrain-stylegan", "--tiny", "--init-generator", "--geometry", "--payload"):
        assert flag not in text, flag  # G2Face-only: refused by train-baseline
    assert "100000" not in text and "results/train/g2face" not in text


# ------------------------------------------------------------------------------------------------ defaults and help
def test_train_defaults_come_from_settings_and_its_help_states_them(tmp_path, monkeypatch):
    from g2face_eval import settings
    from g2face_eval.training import data as D
    from g2face_eval.training import train as TR
    from g2face_eval.training.loop import TrainConfig

    monkeypatch.setenv("G2FACE_RESULTS_DIR", str(tmp_path / "res"))
    cfg = TR.config_from_args(TR.build_parser().parse_args([]))
    assert (cfg.seed, cfg.device) == (settings.DEFAULTS["seed"], settings.DEFAULTS["train_device"])
    assert (TrainConfig().seed, TrainConfig().device) == (cfg.seed, cfg.device)  # one table for CLI and API
    assert cfg.out == str(tmp_path / "res" / "train" / "g2face")  # follows $G2FACE_RESULTS_DIR like its MLflow store
    sg = TR.config_from_args(TR.build_parser().parse_args(["--pretrain-stylegan"]))
    assert sg.out == str(tmp_path / "res" / "train" / "stylegan2")
    given = TR.config_from_args(TR.build_parser().parse_args(["--seed", "3", "--device", "auto", "--out", "o"]))
    assert (given.seed, given.device, given.out) == (3, "auto", "o")
    monkeypatch.delenv("G2FACE_RESULTS_DIR")
    assert TR.config_from_args(TR.build_parser().parse_args([])).out == str(Path("results") / "train" / "g2face")
    text = " ".join(TR.build_parser().format_help().split())
    assert f"random seed (default {settings.DEFAULTS['seed']}, settings.DEFAULTS['seed'])" in text
    assert f"training device (default {settings.DEFAULTS['train_device']}:" in text
    assert "$G2FACE_DATASETS, else ../shared/datasets beside the repository" in text
    assert "$G2FACE_RESULTS_DIR" in text
    # the data root fallback the help names
    monkeypatch.delenv("G2FACE_DATASETS", raising=False)
    assert D._datasets_root(None) == settings.REPO_ROOT.parent / "shared" / "datasets"
    monkeypatch.setenv("G2FACE_DATASETS", str(tmp_path))
    assert D._datasets_root(None) == tmp_path and D._datasets_root("x") == Path("x")


def test_bench_device_default_comes_from_settings_and_out_help_names_the_results_dir(monkeypatch):
    from g2face_eval import bench, settings

    assert settings.DEFAULTS["bench_device"] == "auto" and settings.DEFAULTS["train_device"] == "auto"
    monkeypatch.setitem(settings.DEFAULTS, "bench_device", "cpu")
    assert bench.parse_args([]).device == "cpu"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        bench.parse_args(["--help"])
    text = " ".join(buf.getvalue().split())
    assert "(default cpu: cuda when available" in text
    assert "<results dir>/bench/<UTC stamp>" in text and "$G2FACE_RESULTS_DIR" in text


def test_validate_defaults_and_atomic_thresholds(tmp_path, monkeypatch):
    from g2face_eval.oracles import recognizers as R
    from g2face_eval.oracles import validation as V

    seen = {}

    def fake_validate(root, recs, folds, workers=1):
        seen.update(recs=recs, workers=workers)
        raise FileNotFoundError("stop here")  # the CLI's "no datasets" exit

    monkeypatch.setattr(V, "validate", fake_validate)
    assert V.cli([]) == 2
    assert seen == {"recs": list(R.DEFAULT_RECOGNIZERS), "workers": 1}
    writes = []
    real = V.atomic.write_text
    monkeypatch.setattr(V.atomic, "write_text", lambda p, t: writes.append(p) or real(p, t))
    out = V.write_thresholds({"dataset": "d", "protocol": "p", "recognizers": {"sface": {"threshold": 0.5}}},
                             tmp_path / "thresholds.json")
    assert writes == [out] and json.loads(out.read_text())["recognizers"]["sface"]["threshold"] == 0.5
    assert [p.name for p in tmp_path.iterdir()] == ["thresholds.json"]  # no temporary file left


def test_top_level_help_tells_which_command_trains_what(capsys):
    from g2face_eval import cli

    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "issue #" not in out
    train = next(line for line in out.splitlines() if line.split()[:1] == ["train"])
    assert "baseline" not in train
    assert "learned baseline" in next(line for line in out.splitlines() if line.split()[:1] == ["train-baseline"])


def test_nox_tests_session_appends_arguments_to_its_defaults(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("g2face_noxfile", REPO / "noxfile.py")
    nf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nf)
    monkeypatch.setattr(nf, "_python", lambda session: "py")

    class Session:
        def __init__(self, posargs):
            self.posargs, self.calls = posargs, []

        def run(self, *args, **kw):
            self.calls.append(args)

    fn = getattr(nf.tests, "func", nf.tests)
    for posargs in ([], ["tests/test_zoo.py"]):
        s = Session(posargs)
        fn(s)
        assert s.calls == [("py", "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not bench", *posargs)]


def test_pyproject_requires_the_python_its_code_needs_and_lists_only_existing_package_data():
    import tomllib

    py = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert py["project"]["requires-python"] == ">=3.11"  # harness/config.py imports tomllib (3.11+)
    for pat in py["tool"]["setuptools"]["package-data"]["g2face_eval"]:
        assert any(p.is_file() for p in (REPO / "g2face_eval").glob(pat)), f"package-data {pat!r} matches no file"


def test_settings_that_do_not_change_results_are_tags_of_the_latest_invocation(tmp_path, cache_dir):
    """A resume with another batch size is the same run (same MLflow runs): the batch size is not a param, which
    MLflow would keep at its first value, but a tag that follows the latest invocation, on the children too."""
    import mlflow

    one = E.evaluate(_cheap(tmp_path, cache_dir, run_name="bs", batch_size=2), progress=False, quiet=True)
    two = E.evaluate(_cheap(tmp_path, cache_dir, run_name="bs", batch_size=3), progress=False, quiet=True)
    assert one["parent_run_id"] == two["parent_run_id"]
    client = mlflow.MlflowClient(two["tracking_uri"])
    parent = client.get_run(two["parent_run_id"])
    assert not set(parent.data.params) & set(C.NON_RESULT_KEYS)
    assert parent.data.params["limit"] == "2"
    assert parent.data.tags["g2face.setting.batch_size"] == "3"
    assert parent.data.tags["g2face.setting.device"] == "cpu"
    kids = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert kids and all(k.data.tags["g2face.setting.batch_size"] == "3" for k in kids)
    assert all(not set(k.data.params) & set(C.NON_RESULT_KEYS) and "method.hash" in k.data.params for k in kids)
