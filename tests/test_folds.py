"""Cross-validation folds: grouped (polygon, tile, spatial block), stratified, held-out test."""

from __future__ import annotations

import numpy as np
import pytest

from geofuse.data.patchset import SPLIT_CODES, PatchSet
from geofuse.errors import SplitError
from geofuse.experiments.folds import (
    TEST_FOLD,
    _balanced_folds,
    change_level_strata,
    fold_summary,
    fold_units,
    make_folds,
)

CLASSES = ["forest", "water", "urban"]


def _patches(groups_per_class: list[int], per_group: int = 4, seed: int = 0,
             tiles: int = 0) -> PatchSet:
    """Polygons of one class each, their patches clustered around a random centre (metres)."""
    rng = np.random.default_rng(seed)
    y, groups, coords = [], [], []
    gid = 0
    for k, n in enumerate(groups_per_class):
        for _ in range(n):
            centre = rng.uniform(0, 1000, 2)
            for _ in range(per_group):
                y.append(k)
                prefix = f"tile_{gid % tiles}/" if tiles else ""
                groups.append(f"{prefix}polygon:{gid}")
                coords.append(centre + rng.normal(0, 15, 2))
            gid += 1
    n = len(y)
    return PatchSet(x=np.zeros((n, 1, 2, 2), np.float32), y=np.array(y), band_names=["b"],
                    modalities={"s2": ["b"]}, class_names=CLASSES, groups=groups,
                    coords=np.array(coords))


def _fold_of(units: np.ndarray, fold: np.ndarray) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for u, f in zip(units.tolist(), fold.tolist(), strict=True):
        out.setdefault(u, set()).add(f)
    return out


def test_polygon_folds_are_grouped_stratified_and_reproducible() -> None:
    patches = _patches([12, 10, 8])
    folds = make_folds(patches, n_folds=4, seed=3)
    assert all(len(f) == 1 for f in _fold_of(patches.groups, folds.fold).values())
    for k in range(4):
        counts = np.bincount(patches.y[folds.fold == k], minlength=3)
        assert (counts >= 4).all()  # every class (>= 1 polygon of 4 patches) in every fold
        codes = folds.split_codes(k)
        assert set(np.unique(codes)) == {SPLIT_CODES["train"], SPLIT_CODES["val"]}
        assert (codes[folds.fold == k] == SPLIT_CODES["val"]).all()
    per_fold = np.bincount(folds.fold, minlength=4)
    assert per_fold.max() - per_fold.min() <= 8  # balanced to within two polygons
    assert np.array_equal(make_folds(patches, n_folds=4, seed=3).fold, folds.fold)
    mapping = folds.to_json(patches.groups)
    assert mapping["groups"]["polygon:0"] == int(folds.fold[0]) and mapping["test_groups"] == []
    assert fold_summary(folds, patches.y, CLASSES)["fold0"]["patches"] == per_fold[0]


def test_spatial_blocks_never_straddle_folds_and_keep_polygons_whole() -> None:
    patches = _patches([15, 15, 15], seed=1)
    folds = make_folds(patches, n_folds=3, group_by="block", block_size=200.0, seed=0)
    cells = np.floor(patches.coords / 200.0).astype(int)
    blocks = np.array([f"{i},{j}" for i, j in cells.tolist()])
    assert all(len(f) == 1 for f in _fold_of(blocks, folds.fold).values())
    assert all(len(f) == 1 for f in _fold_of(patches.groups, folds.fold).values())
    assert folds.units[0].startswith("block:")
    with pytest.raises(SplitError, match="block_size"):
        fold_units(patches, "block", None)


def test_tile_folds_and_tile_regex_errors() -> None:
    patches = _patches([9, 9, 9], tiles=9)
    folds = make_folds(patches, n_folds=3, group_by="tile", seed=0)
    tiles = np.array([g.split("/")[0] for g in patches.groups])
    assert all(len(f) == 1 for f in _fold_of(tiles, folds.fold).values())
    assert len(set(folds.units.tolist())) == 9
    with pytest.raises(SplitError, match=r"'polygon:0' does not match.*tile_regex"):
        fold_units(_patches([3, 3, 3]), "tile")


def test_held_out_test_set_is_carved_first_and_never_trained_or_validated() -> None:
    patches = _patches([12, 12, 12])
    folds = make_folds(patches, n_folds=3, test_fraction=0.2, seed=5)
    test = folds.fold == TEST_FOLD
    assert 0.1 < test.mean() < 0.3
    assert set(patches.y[test].tolist()) == {0, 1, 2}
    assert not set(patches.groups[test]) & set(patches.groups[~test])
    for k in range(3):
        codes = folds.split_codes(k)
        assert (codes[test] == SPLIT_CODES["test"]).all()
        assert (codes[~test] != SPLIT_CODES["test"]).all()
    # the test set does not depend on how many folds follow
    assert np.array_equal(make_folds(patches, 4, test_fraction=0.2, seed=5).fold == TEST_FOLD,
                          test)
    assert sorted(folds.to_json(patches.groups)["test_groups"]) == sorted(set(patches.groups[test]))


def test_too_few_groups_raise_split_error_with_per_class_counts() -> None:
    patches = _patches([8, 3, 8])
    with pytest.raises(SplitError) as err:
        make_folds(patches, n_folds=5)
    msg = str(err.value)
    assert "'water' has 3" in msg and "forest 8, water 3, urban 8" in msg
    assert "lower ablation.folds" in msg and "\n" not in msg
    with pytest.raises(SplitError, match=r"\+ test.*test_fraction"):
        make_folds(_patches([4, 4, 4]), n_folds=4, test_fraction=0.2)
    with pytest.raises(SplitError, match="at least 2 folds"):
        make_folds(patches, n_folds=1)
    with pytest.raises(SplitError, match="fold 7 does not exist"):
        make_folds(_patches([3, 3, 3]), n_folds=3).split_codes(7)


def test_change_level_strata_and_stratified_folds() -> None:
    frac = np.array([0.0, 0.049, 0.05, 0.29, 0.30, 1.0])
    assert change_level_strata(frac).tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(SplitError, match=r"\[0, 1\]"):
        change_level_strata(np.array([0.2, 1.5]))
    rng = np.random.default_rng(0)
    n = 45  # one tile per sample, as in the land-take study: 15 low, 25 moderate, 5 high
    levels = np.repeat([0, 1, 2], [15, 25, 5])
    patches = PatchSet(x=np.zeros((n, 1, 2, 2), np.float32), y=np.zeros(n, int),
                       band_names=["b"], modalities={"s2": ["b"]}, class_names=["change"],
                       groups=[f"tile:{i}" for i in range(n)], coords=rng.uniform(0, 1, (n, 2)))
    folds = make_folds(patches, n_folds=5, strata=levels)
    for k in range(5):
        assert np.bincount(levels[folds.fold == k], minlength=3).tolist() == [3, 5, 1]


def test_balanced_fallback_puts_every_class_in_every_fold() -> None:
    major = np.repeat([0, 1], [5, 3])
    fold = _balanced_folds(major, np.ones(8), n_folds=3, seed=0)
    for k in range(3):
        assert set(major[fold == k].tolist()) == {0, 1}
