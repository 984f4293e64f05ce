"""Groups holding several classes (1 km cells, tiles) and an external test set."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from factories import make_patchset
from geofuse.data._multilabel import covers, stratify_units, unit_class_table
from geofuse.data.external_test import external_test_mask, with_external_test
from geofuse.data.patchset import SPLIT_CODES, PatchSet
from geofuse.data.splits import assign_splits
from geofuse.errors import BandError, ConfigError, SplitError
from geofuse.experiments.folds import TEST_FOLD, make_folds


def _cells(n_cells: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Patches in cells of mixed classes: class 3 is a minority in every cell it appears in."""
    rng = np.random.default_rng(seed)
    y, groups = [], []
    for c in range(n_cells):
        main = c % 3
        labels = [main] * int(rng.integers(6, 12))
        if c % 5 == 0:  # 8 cells hold one or two patches of class 3
            labels += [3] * int(rng.integers(1, 3))
        y += labels
        groups += [f"cell:{c}"] * len(labels)
    return np.array(y), np.array(groups)


def _patchset(y: np.ndarray, groups: np.ndarray) -> PatchSet:
    n = len(y)
    return PatchSet(x=np.zeros((n, 1, 2, 2)), y=y, band_names=["b"], modalities={"m": ["b"]},
                    class_names=["a", "b", "c", "rare"], groups=groups, coords=np.zeros((n, 2)))


def test_a_class_that_is_never_the_majority_reaches_every_split() -> None:
    y, groups = _cells()
    split = assign_splits(y, groups, 0.2, 0.2, seed=1, class_names=["a", "b", "c", "rare"])
    for code in SPLIT_CODES.values():
        assert set(y[split == code].tolist()) == {0, 1, 2, 3}
    for g in np.unique(groups):  # grouped: a cell lies in one split
        assert len(set(split[groups == g].tolist())) == 1
    shares = np.bincount(split, minlength=3) / len(y)
    assert shares[0] == pytest.approx(0.6, abs=0.12)


def test_folds_of_multiclass_cells_cover_every_class_and_stay_grouped() -> None:
    y, groups = _cells()
    folds = make_folds(_patchset(y, groups), n_folds=4, group_by="cell", seed=3)
    for k in range(4):
        assert 3 in y[folds.fold == k]
    for g in np.unique(groups):
        assert len(set(folds.fold[groups == g].tolist())) == 1
    sizes = np.bincount(folds.fold, minlength=4)
    assert sizes.min() > 0.6 * sizes.max()


def test_two_units_of_a_class_fill_two_splits_but_never_three() -> None:
    y, groups = _cells(n_cells=10)  # class 3 in cells 0 and 5 only
    _, table = unit_class_table(y, groups, 4)
    split = stratify_units(table, [0.5, 0.5], seed=0)
    assert split is not None and covers(table, split, 2)
    assert set(split[table[:, 3] > 0].tolist()) == {0, 1}
    # splits 1 and 2 lack the classes found in three or more cells
    assert covers(table, np.zeros(10, dtype=int), 3) is False
    with pytest.raises(SplitError, match="'rare' has 2"):
        assign_splits(y, groups, 0.3, 0.3, class_names=["a", "b", "c", "rare"])


def _two_cities() -> tuple[PatchSet, PatchSet]:
    train = make_patchset(n=80)
    train = dataclasses.replace(train, split=np.where(train.split == 2, 1, train.split))
    test = make_patchset(n=40, seed=5)
    # the test city knows only three of the four classes and names them in another order
    order = [2, 0, 1, 3]
    test = dataclasses.replace(test, y=np.array(order)[test.y],
                               class_names=[test.class_names[k] for k in np.argsort(order)])
    return train, test


def test_external_test_set_is_appended_as_test_and_kept_out_of_every_fold() -> None:
    train, test = _two_cities()
    test = test.subset(test.y != test.class_names.index("crop"))
    both = with_external_test(train, test, name="rostock")
    assert len(both) == len(train) + len(test)
    mask = external_test_mask(both)
    assert mask is not None and mask.sum() == len(test)
    assert (both.split[mask] == SPLIT_CODES["test"]).all()
    assert not (both.split[~mask] == SPLIT_CODES["test"]).any()
    # classes are matched by name, not index
    names_in = np.array(test.class_names)[test.y]
    names_out = np.array(both.class_names)[both.y[mask]]
    assert (names_in == names_out).all()
    assert both.provenance["external_test"]["name"] == "rostock"
    folds = make_folds(both, n_folds=3, group_by="polygon", seed=0)
    assert (folds.fold[mask] == TEST_FOLD).all() and (folds.fold[~mask] >= 0).all()
    with pytest.raises(SplitError, match=r"set ablation\.test_fraction to 0"):
        make_folds(both, n_folds=3, test_fraction=0.2, fixed_test=mask)
    assert external_test_mask(train) is None


def test_external_test_drops_unknown_classes_and_rejects_other_bands() -> None:
    train, test = _two_cities()
    test = dataclasses.replace(test, class_names=[*test.class_names[:3], "desert"])
    n_desert = int((test.y == 3).sum())
    with pytest.warns(UserWarning, match="desert"):
        both = with_external_test(train, test, name="b")
    assert both.provenance["external_test"]["dropped_classes"] == {"desert": n_desert}
    assert external_test_mask(both).sum() == len(test) - n_desert
    with pytest.raises(BandError, match="same seasons/layers"):
        with_external_test(train, test.select_bands(["s2_b", "s2_g"]), name="b")
    with pytest.raises(ConfigError, match="test_fraction to 0"):
        with_external_test(make_patchset(n=80), test, name="b")
