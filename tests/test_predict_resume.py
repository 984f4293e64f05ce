"""``geofuse predict`` resumes an interrupted map from its finished windows, never leaves a
half-written product, and maps the same in worker processes as in one."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geofuse.mapping.predict import PARTIAL_DIR, PredictOptions, predict_map
from test_predict import read, train_run, write_stack

OPTIONS = PredictOptions(tile_size=16, probabilities=True)  # 4 x 5 = 20 windows


class Stop(Exception):
    """Raised from the window callback: an interruption after k windows."""


@pytest.fixture(scope="module")
def scene_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("resume")
    stack = write_stack(root / "stack.tif")
    return stack, train_run(root, stack)


@pytest.fixture(scope="module")
def reference(scene_run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The map made in one go."""
    stack, run = scene_run
    out = tmp_path_factory.mktemp("whole")
    predict_map(run, stack, out, OPTIONS, progress=False)
    return out


def _stop_after(k: int) -> Callable[[int], None]:
    def callback(done: int) -> None:
        if done >= k:
            raise Stop

    return callback


def test_an_interrupted_map_resumes_from_its_finished_windows(
    scene_run: tuple[Path, Path], reference: Path, tmp_path: Path
) -> None:
    stack, run = scene_run
    with pytest.raises(Stop):
        predict_map(run, stack, tmp_path, OPTIONS, progress=False, on_window=_stop_after(7))
    # nothing published yet: no product is half-written, the partial record says 7 are done
    assert sorted(p.name for p in tmp_path.iterdir()) == [PARTIAL_DIR]
    assert len((tmp_path / PARTIAL_DIR / "done.txt").read_text().split()) == 7
    with pytest.raises(Stop):  # a second interruption keeps the first one's windows
        predict_map(run, stack, tmp_path, OPTIONS, progress=False, on_window=_stop_after(5))
    record = predict_map(run, stack, tmp_path, OPTIONS, progress=False)
    assert record["windows"] == {"total": 20, "resumed": 12, "computed": 8}
    for name in ("classes", "probabilities", "uncertainty"):
        np.testing.assert_array_equal(read(tmp_path / f"{name}.tif"),
                                      read(reference / f"{name}.tif"))
    assert not (tmp_path / PARTIAL_DIR).exists()
    assert json.loads((tmp_path / "predict.json").read_text())["counts"] == json.loads(
        (reference / "predict.json").read_text())["counts"]


def test_other_options_start_the_map_over_and_replace_every_product(
    scene_run: tuple[Path, Path], tmp_path: Path
) -> None:
    stack, run = scene_run
    with pytest.raises(Stop):
        predict_map(run, stack, tmp_path, OPTIONS, progress=False, on_window=_stop_after(3))
    record = predict_map(run, stack, tmp_path, PredictOptions(tile_size=16, stride=2),
                         progress=False)
    assert record["windows"]["resumed"] == 0 and record["stride"] == 2
    assert not (tmp_path / "probabilities.tif").exists()  # not asked for this time
    cells = read(tmp_path / "classes.tif", 1).astype(int).reshape(32, 2, 40, 2)
    cells = cells.transpose(0, 2, 1, 3).reshape(32, 40, 4)
    valid = cells != 255
    hi, lo = np.where(valid, cells, -1).max(axis=-1), np.where(valid, cells, 256).min(axis=-1)
    assert valid.any() and (hi == lo)[valid.any(axis=-1)].all()  # one class per 2 x 2 cell


def test_damaged_partial_files_start_the_map_over(
    scene_run: tuple[Path, Path], reference: Path, tmp_path: Path
) -> None:
    stack, run = scene_run
    with pytest.raises(Stop):
        predict_map(run, stack, tmp_path, OPTIONS, progress=False, on_window=_stop_after(4))
    (tmp_path / PARTIAL_DIR / "classes.tif").write_bytes(b"not a tiff")  # killed mid-write
    record = predict_map(run, stack, tmp_path, OPTIONS, progress=False)
    assert record["windows"]["resumed"] == 0
    np.testing.assert_array_equal(read(tmp_path / "classes.tif"), read(reference / "classes.tif"))


def test_worker_processes_map_the_same_as_one_process(
    scene_run: tuple[Path, Path], reference: Path, tmp_path: Path
) -> None:
    stack, run = scene_run
    record = predict_map(run, stack, tmp_path, PredictOptions(
        tile_size=32, probabilities=True, workers=2), progress=False)
    assert record["workers"] == 2 and record["windows"]["total"] == 6
    for name in ("classes", "probabilities"):
        np.testing.assert_array_equal(read(tmp_path / f"{name}.tif"),
                                      read(reference / f"{name}.tif"))
    with rasterio.open(tmp_path / "uncertainty.tif") as a, \
            rasterio.open(reference / "uncertainty.tif") as b:
        np.testing.assert_allclose(a.read(), b.read(), atol=1e-5)


@pytest.mark.slow
def test_ray_tasks_map_the_same_as_one_process(
    scene_run: tuple[Path, Path], reference: Path, tmp_path: Path
) -> None:
    pytest.importorskip("ray")
    stack, run = scene_run
    record = predict_map(run, stack, tmp_path, PredictOptions(
        tile_size=32, probabilities=True, ray_address="local", workers=2), progress=False)
    assert record["ray"] == "local" and record["windows"]["computed"] == 6
    for name in ("classes", "probabilities"):
        np.testing.assert_array_equal(read(tmp_path / f"{name}.tif"),
                                      read(reference / f"{name}.tif"))
