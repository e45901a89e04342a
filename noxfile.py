"""Sessions of g2face-eval. All sessions share one environment, ``.nox/g2face-env``, built once by
``scripts/install_env.py`` and rebuilt only when pyproject.toml or that script changes, so torch is never
reinstalled on an ordinary run. Arguments after ``--`` pass through to the underlying command (for ``tests``,
after its default pytest arguments)."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["tests"]

ROOT = Path(__file__).resolve().parent
ENV = Path(os.environ.get("G2FACE_NOX_ENV", ROOT / ".nox" / "g2face-env"))
BIN = ENV / ("Scripts" if os.name == "nt" else "bin")


def _fingerprint() -> str:
    h = hashlib.sha256()
    for name in ("pyproject.toml", "scripts/install_env.py"):
        h.update((ROOT / name).read_bytes())
    return h.hexdigest()


def _python(session: nox.Session) -> str:
    """The shared environment's interpreter, created or updated when needed."""
    py = BIN / "python"
    stamp = ENV / ".g2face-installed"
    if not py.exists():
        session.run(sys.executable, "-m", "venv", str(ENV), external=True)
    if not stamp.exists() or stamp.read_text() != _fingerprint():
        session.run(str(py), str(ROOT / "scripts" / "install_env.py"), external=True)
        stamp.write_text(_fingerprint())
    return str(py)


def _g2face(session: nox.Session, *args: str) -> None:
    session.run(_python(session), "-m", "g2face_eval", *args, *session.posargs, external=True)


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (uses ../shared/datasets or $G2FACE_DATASETS). Arguments after ``--`` are appended to the
    defaults ``-x -q -p no:cacheprovider -m "not bench"``: e.g. ``-- tests/test_zoo.py`` runs one file, and a later
    ``-m`` replaces the marker filter (pytest keeps the last one)."""
    args = ["-x", "-q", "-p", "no:cacheprovider", "-m", "not bench", *session.posargs]
    session.run(_python(session), "-m", "pytest", *args, external=True)


@nox.session
def evaluate(session: nox.Session) -> None:
    """Run the evaluation; with no arguments, the embedded default dataset and every default method."""
    _g2face(session, "evaluate")


@nox.session
def report(session: nox.Session) -> None:
    """Build the report (figures, tables, HTML) of the latest evaluation, into the folder an evaluation writes its
    report to ($G2FACE_REPORTS_DIR, else ./reports/out; ``-- --out DIR`` elsewhere)."""
    _g2face(session, "report")


@nox.session
def train(session: nox.Session) -> None:
    """Train G2Face (``g2face-eval train``; torchrun-compatible, one CPU process by default). The learned
    baselines train with ``g2face-eval train-baseline <fit|inpaint|riddle>``, which has no nox session."""
    _g2face(session, "train")


@nox.session
def bench(session: nox.Session) -> None:
    """Latency benchmarks (g2face-eval bench) and the pytest-benchmark CPU hot paths."""
    py = _python(session)
    session.run(py, "-m", "g2face_eval", "bench", *session.posargs, external=True)
    session.run(py, "-m", "pytest", "-q", "-m", "bench", "--benchmark-only", "tests", external=True)


def _datasets_root() -> Path | None:
    """The shared datasets, found as the tests find them: $G2FACE_DATASETS, else ../shared/datasets."""
    env = os.environ.get("G2FACE_DATASETS")
    cand = Path(env) if env else ROOT.parent / "shared" / "datasets"
    return cand if cand.is_dir() else None


@nox.session
def validate(session: nox.Session) -> None:
    """Validate the face oracles against published numbers (full LFW View 2) on the shared datasets
    (``--datasets-root`` from $G2FACE_DATASETS or ../shared/datasets unless given after ``--``)."""
    root = _datasets_root()
    given = any(a == "--datasets-root" or a.startswith("--datasets-root=") for a in session.posargs)
    _g2face(session, "validate", *(["--datasets-root", str(root)] if root is not None and not given else []))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the code base."""
    py = _python(session)
    session.run(py, "-m", "ruff", "check", "g2face_eval", "baselines", "tests", "noxfile.py", "scripts",
                *session.posargs, external=True)
