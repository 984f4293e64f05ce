"""Shared fixtures: paths to the real data in ../shared/data and small generated inputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _require(path: Path) -> Path:
    """Return ``path``; skip locally if it is missing, but fail in CI (CI=true)."""
    if not path.exists():
        msg = f"real test data missing: {path} (expected ../shared/data beside the repo)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real data folder (../shared/data)."""
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def gdansk_dir(shared_data: Path) -> Path:
    return _require(shared_data / "so2sat_pop" / "gdansk")


@pytest.fixture(scope="session")
def los_lagos_dir(shared_data: Path) -> Path:
    return _require(shared_data / "los_lagos")


@pytest.fixture(scope="session")
def bigearthnet_dir(shared_data: Path) -> Path:
    return _require(shared_data / "bigearthnet_mm")
