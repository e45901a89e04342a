"""Shared fixtures. Real-data tests use ../shared/datasets (or $G2FACE_DATASETS); in CI they must exist."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _datasets_root() -> Path | None:
    env = os.environ.get("G2FACE_DATASETS")
    cand = Path(env) if env else REPO.parent / "shared" / "datasets"
    return cand if cand.is_dir() else None


@pytest.fixture(scope="session")
def datasets_root() -> Path:
    root = _datasets_root()
    if root is None:
        if os.environ.get("CI"):
            pytest.fail("CI requires the shared datasets (../shared/datasets or $G2FACE_DATASETS)")
        pytest.skip("shared datasets not present")
    return root
