"""Buffered cross-validation (``ablation.buffer``): a gap between training and evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from factories import make_config, make_patchset
from geofuse.data.patchset import SPLIT_CODES, UNASSIGNED, PatchSet
from geofuse.errors import SplitError
from geofuse.experiments.ablation import run_ablation
from geofuse.experiments.folds import TEST_FOLD, make_folds

CLASSES = ["forest", "water", "urban"]


def _field(n_side: int = 12, spacing: float = 100.0) -> PatchSet:
    """Patches on a regular grid, one polygon per patch, classes in vertical stripes."""
    ii, jj = np.meshgrid(np.arange(n_side), np.arange(n_side), indexing="ij")
    coords = np.stack([ii.ravel(), jj.ravel()], axis=1) * spacing
    y = (jj.ravel() // 2) % 3
    n = len(y)
    return PatchSet(x=np.zeros((n, 1, 2, 2), np.float32), y=y, band_names=["b"],
                    modalities={"s2": ["b"]}, class_names=CLASSES,
                    groups=[f"polygon:{i}" for i in range(n)], coords=coords.astype(float))


@pytest.mark.parametrize("test_fraction", [0.0, 0.2])
def test_training_patches_near_validation_or_test_are_left_out(test_fraction: float) -> None:
    patches = _field()
    plain = make_folds(patches, n_folds=3, group_by="block", block_size=400.0, seed=1,
                       test_fraction=test_fraction)
    folds = make_folds(patches, n_folds=3, group_by="block", block_size=400.0, seed=1,
                       test_fraction=test_fraction, buffer=150.0)
    assert np.array_equal(folds.fold, plain.fold)  # the same folds, only a gap added
    for k in range(3):
        codes, before = folds.split_codes(k), plain.split_codes(k)
        held = (folds.fold == k) | (folds.fold == TEST_FOLD)
        near = cdist(patches.coords, patches.coords[held]).min(axis=1) < 150.0
        expect = (before == SPLIT_CODES["train"]) & near
        assert np.array_equal(codes == UNASSIGNED, expect)  # exactly the near ones
        assert expect.any() and (codes == SPLIT_CODES["train"]).any()
        # validation and test codes are untouched
        assert np.array_equal(codes[held], before[held])
        assert folds.buffer_excluded[k] == int(expect.sum())
    mapping = folds.to_json(patches.groups)
    assert mapping["buffer"] == 150.0 and set(mapping["buffer_excluded"]) == {"fold0", "fold1",
                                                                               "fold2"}


def test_a_buffer_that_empties_a_class_or_has_no_coordinates_is_refused() -> None:
    patches = _field()
    with pytest.raises(SplitError, match=r"ablation.buffer = 5000 leaves fold 0 no training "
                                         r"patch of 'forest'.*smaller buffer"):
        make_folds(patches, n_folds=3, group_by="block", block_size=400.0, buffer=5000.0)
    flat = patches._replace(coords=np.zeros((len(patches), 2)))
    with pytest.raises(SplitError, match=r"same point.*remove ablation.buffer"):
        make_folds(flat, n_folds=3, buffer=100.0)


def test_a_buffered_study_trains_without_the_near_patches(tmp_path: Path) -> None:
    ps = make_patchset(n=96)
    rng = np.random.default_rng(3)
    ps = ps._replace(coords=rng.uniform(0, 6000, (len(ps), 2)))
    cfg = make_config(tmp_path, epochs=1, batch_size=16, model={"hidden": 8})
    cfg.ablation.folds = 2
    cfg.ablation.buffer = 400.0
    cfg.ablation.sensors = [["s2"]]
    ps.save(cfg.patches_path)
    study = run_ablation(cfg, progress=False)
    meta = json.loads((study / "study.json").read_text())
    excluded = meta["folds"]["buffer_excluded"]
    assert meta["folds"]["buffer"] == 400.0 and sum(excluded.values()) > 0
    for k in (0, 1):
        fold = PatchSet.load(study / "folds" / f"fold{k}.h5")
        assert int((fold.split == UNASSIGNED).sum()) == excluded[str(k)]
        train, val = fold.split_indices("train"), fold.split_indices("val")
        assert cdist(fold.coords[train], fold.coords[val]).min() >= 400.0
        info = json.loads(next((study / "runs").glob(f"*fold{k}")).joinpath(
            "run.json").read_text())
        assert sum(info["class_counts"]["train"].values()) == len(train)
    report = (study / "report.md").read_text()
    assert "spatial buffer: 400 CRS units" in report and "fold 0: " in report
