"""Tabular normalisation statistics: computed on the train split, saved with the run, reused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from factories import make_config
from geofuse.data.datamodule import PatchDataModule, normalized_tabular
from geofuse.data.normalize import TabularStats, compute_tabular_stats
from geofuse.data.patchset import PatchSet
from geofuse.errors import RunDirError
from geofuse.evaluation.evaluate import evaluate_run
from geofuse.rundir import RunDir
from geofuse.training.train import train_model
from test_tabular import TAB, tabular_patchset


@pytest.fixture(scope="module")
def tabular_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunDir, PatchSet]:
    root = tmp_path_factory.mktemp("tabstats")
    cfg = make_config(root, epochs=2, lr=3e-3, model={"name": "tabular_fusion", "mode": "late"})
    patches = tabular_patchset(n=160)
    return RunDir(train_model(cfg, patchset=patches, progress=False)), patches


def _nan_aware_train_stats(patches: PatchSet) -> tuple[np.ndarray, np.ndarray]:
    assert patches.tabular is not None
    train = patches.tabular[patches.split == 0].astype(np.float64)
    return np.nanmean(train, axis=0), np.nanstd(train, axis=0)


def test_run_saves_train_split_tabular_stats(tabular_run: tuple[RunDir, PatchSet]) -> None:
    run, patches = tabular_run
    saved = json.loads(run.tabular_normalization.read_text())
    assert saved["columns"] == TAB
    mean, std = _nan_aware_train_stats(patches)
    assert patches.tabular is not None and np.isnan(patches.tabular[patches.split == 0]).any()
    np.testing.assert_allclose(saved["mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(saved["std"], std, rtol=1e-12)
    # the band statistics stay where they were
    assert json.loads(run.normalization.read_text())["bands"] == list(patches.band_names)


def test_evaluation_uses_the_saved_stats_not_the_current_train_split(
    tabular_run: tuple[RunDir, PatchSet],
) -> None:
    run, _ = tabular_run
    before = json.loads(run.metrics.read_text())
    stats_file = run.tabular_normalization.read_bytes()
    data_path = Path(json.loads(run.run_json.read_text())["patches_path"])
    original = PatchSet.load(data_path)
    assert original.tabular is not None
    changed_tab = original.tabular.copy()
    train = original.split == 0
    changed_tab[train] = changed_tab[train] * 5.0 + 300.0  # very different train mean/std
    try:
        original._replace(tabular=changed_tab).save(data_path)
        after = evaluate_run(run.path, verbose=False)
        for split in ("val", "test"):
            assert after[split] == before[split]
        # the check can fail: statistics recomputed from the changed split change predictions
        run.tabular_normalization.unlink()
        recomputed = evaluate_run(run.path, verbose=False)
        assert recomputed["val"]["confusion_matrix"] != before["val"]["confusion_matrix"]
    finally:
        original.save(data_path)
        run.tabular_normalization.write_bytes(stats_file)
        evaluate_run(run.path, verbose=False)


def test_evaluation_rejects_other_tabular_columns(tabular_run: tuple[RunDir, PatchSet]) -> None:
    run, _ = tabular_run
    saved = TabularStats.load(run.tabular_normalization)
    try:
        TabularStats(["a", "b", "c"], saved.mean, saved.std).save(run.tabular_normalization)
        with pytest.raises(RunDirError, match="tabular columns"):
            evaluate_run(run.path, verbose=False)
    finally:
        saved.save(run.tabular_normalization)


def test_stats_round_trip_exactly_and_drive_the_data_module(tmp_path: Path) -> None:
    patches = tabular_patchset(n=80)
    assert patches.tabular is not None
    stats = compute_tabular_stats(patches.tabular[patches.split == 0], TAB)
    loaded = TabularStats.load(stats.save(tmp_path / "tab.json"))
    np.testing.assert_array_equal(loaded.mean, stats.mean)
    np.testing.assert_array_equal(loaded.std, stats.std)
    np.testing.assert_array_equal(normalized_tabular(patches, loaded), normalized_tabular(patches))
    shifted = TabularStats(TAB, stats.mean + 10.0, stats.std)
    tab = PatchDataModule(patches, tabular_stats=shifted).tabular
    assert tab is not None
    expected = np.nan_to_num((patches.tabular - shifted.mean) / shifted.std, nan=0.0)
    np.testing.assert_allclose(tab, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="tabular statistics"):
        normalized_tabular(patches, TabularStats(["x", "y", "z"], stats.mean, stats.std))


def test_all_missing_and_constant_columns_get_unit_std() -> None:
    tab = np.array([[np.nan, 2.0, 1.0], [np.nan, 2.0, 3.0]], dtype=np.float32)
    stats = compute_tabular_stats(tab, ["gone", "flat", "ok"])
    assert stats.mean.tolist() == [0.0, 2.0, 2.0]
    assert stats.std.tolist() == [1.0, 1.0, 1.0]
