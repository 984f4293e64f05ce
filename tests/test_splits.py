"""Leakage-free, stratified, grouped train/val/test splits."""

from __future__ import annotations

import numpy as np
import pytest

from geofuse.data.patchset import SPLIT_CODES
from geofuse.data.splits import assign_splits, divide_groups, split_summary
from geofuse.errors import SplitError

TRAIN, VAL, TEST = SPLIT_CODES["train"], SPLIT_CODES["val"], SPLIT_CODES["test"]


def make_patches(groups_per_class: list[int], per_group: int | list[int] = 10,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and group names: class k has ``groups_per_class[k]`` polygons of patches."""
    rng = np.random.default_rng(seed)
    y, groups = [], []
    gid = 0
    for k, n in enumerate(groups_per_class):
        for _ in range(n):
            size = per_group if isinstance(per_group, int) else int(rng.choice(per_group))
            y += [k] * size
            groups += [f"polygon:{gid}"] * size
            gid += 1
    order = rng.permutation(len(y))  # patches need not be sorted by group
    return np.asarray(y)[order], np.asarray(groups)[order]


def assert_no_group_in_two_splits(groups: np.ndarray, split: np.ndarray) -> None:
    for g in np.unique(groups):
        assert len(np.unique(split[groups == g])) == 1, g


def test_no_leakage_all_classes_everywhere_and_fractions() -> None:
    y, groups = make_patches([20, 30, 10, 40])
    split = assign_splits(y, groups, val_fraction=0.2, test_fraction=0.1, seed=1)
    assert split.dtype == np.uint8 and set(split.tolist()) == {TRAIN, VAL, TEST}
    assert_no_group_in_two_splits(groups, split)
    for k in range(4):
        for code, frac in ((TRAIN, 0.7), (VAL, 0.2), (TEST, 0.1)):
            share = ((y == k) & (split == code)).sum() / (y == k).sum()
            assert share == pytest.approx(frac, abs=0.051)  # equal groups: off by < one group


def test_unequal_group_sizes_stay_close_to_fractions() -> None:
    y, groups = make_patches([25, 25, 25], per_group=[3, 10, 40, 80], seed=3)
    split = assign_splits(y, groups, val_fraction=0.25, test_fraction=0.15, seed=2)
    assert_no_group_in_two_splits(groups, split)
    n = len(y)
    assert (split == VAL).sum() / n == pytest.approx(0.25, abs=0.05)
    assert (split == TEST).sum() / n == pytest.approx(0.15, abs=0.05)


def test_no_test_split_when_fraction_zero() -> None:
    y, groups = make_patches([2, 5])
    split = assign_splits(y, groups, val_fraction=0.3, test_fraction=0.0, seed=0)
    assert set(split.tolist()) == {TRAIN, VAL}
    for k in range(2):
        assert {TRAIN, VAL} <= set(split[y == k].tolist())


def test_deterministic_and_seed_dependent() -> None:
    y, groups = make_patches([12, 12, 12])
    a = assign_splits(y, groups, 0.25, 0.25, seed=7)
    b = assign_splits(y, groups, 0.25, 0.25, seed=7)
    c = assign_splits(y, groups, 0.25, 0.25, seed=8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_impossible_split_message_counts_groups_per_class() -> None:
    y, groups = make_patches([5, 2, 1])
    with pytest.raises(SplitError) as err:
        assign_splits(y, groups, 0.2, 0.1, seed=0, class_names=["crop", "water", "urban"])
    msg = str(err.value)
    assert "at least 3 polygon groups" in msg
    assert "'water' has 2; 'urban' has 1" in msg
    assert "crop 5, water 2, urban 1" in msg
    assert "test_fraction to 0" in msg and "labels.classes" in msg


def test_class_without_patches_is_impossible() -> None:
    y, groups = make_patches([4, 4])
    with pytest.raises(SplitError, match="'empty' has 0"):
        assign_splits(y, groups, 0.2, 0.0, seed=0, class_names=["a", "b", "empty"])


def test_mixed_groups_follow_their_majority_class() -> None:
    y, groups = make_patches([6, 6])
    # polygon:0 (class 0) also holds three class-1 patches: still a class-0 group
    y = np.concatenate([y, [1, 1, 1]])
    groups = np.concatenate([groups, ["polygon:0"] * 3])
    split = assign_splits(y, groups, 0.3, 0.2, seed=0)
    assert_no_group_in_two_splits(groups, split)
    summary = split_summary(y, groups, split, ["a", "b"])
    assert sum(v["groups"] for v in summary.values()) == 12
    assert sum(v["patches"] for v in summary.values()) == len(y)
    # class 1 keeps >= 1 of its own six groups in every split, so its patches are everywhere
    own = np.isin(groups, [f"polygon:{g}" for g in range(6, 12)])
    assert set(split[own].tolist()) == {TRAIN, VAL, TEST}
    for name in ("train", "val", "test"):
        assert min(summary[name]["per_class"].values()) >= 10


@pytest.mark.parametrize(("val", "test"), [(0.0, 0.1), (0.6, 0.4), (0.5, -0.1)])
def test_invalid_fractions(val: float, test: float) -> None:
    y, groups = make_patches([5, 5])
    with pytest.raises(SplitError, match="splits"):
        assign_splits(y, groups, val, test)


def test_divide_groups_gives_every_split_a_group() -> None:
    rng = np.random.default_rng(0)
    # one huge group and two tiny ones: val and test still get one each
    assign = divide_groups(np.array([1000.0, 1.0, 1.0]), [0.8, 0.1, 0.1], rng)
    assert sorted(assign.tolist()) == [0, 1, 2] and assign[0] == 0
    assign = divide_groups(np.array([5.0, 5.0, 5.0, 5.0]), [0.3, 0.7], rng)
    assert np.bincount(assign).tolist() == [1, 3]


def test_impossible_split_message_names_tiles_when_the_groups_are_tiles() -> None:
    y, groups = make_patches([5, 2, 1])
    tiles = np.array([f"tile:{str(g).split(':', 1)[-1]}" for g in groups])
    with pytest.raises(SplitError) as err:
        assign_splits(y, tiles, 0.2, 0.1, seed=0, class_names=["crop", "water", "urban"])
    msg = str(err.value)
    assert "at least 3 tile groups" in msg and "add tiles holding" in msg
    assert "polygon" not in msg
