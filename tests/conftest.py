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


#: Modules whose tests start processes, clusters or signal timings of their own: under
#: pytest-xdist (``make test`` runs two workers) they all run in one worker, one at a time.
PROCESS_MODULES = {
    "test_interrupt", "test_no_traceback", "test_distributed", "test_ray_cluster",
    "test_predict_resume", "test_ablation", "test_benchmark_scripts", "test_html_chromium",
    "test_demo",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in PROCESS_MODULES:
            item.add_marker(pytest.mark.xdist_group("processes"))


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers share the cores: one thread each
        import torch

        torch.set_num_threads(1)
