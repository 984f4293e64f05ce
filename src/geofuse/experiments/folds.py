"""Leakage-free k-fold cross-validation folds: stratified, grouped, optional held-out test set.

Patches are gathered into *units* that never straddle folds: their polygon group, their tile
(a regex on the group) or square spatial blocks of their centre coordinates (merged with the
polygons that cut across blocks). A held-out test set of whole units is carved out first
(stratified); the remaining units are divided into ``k`` folds with scikit-learn's
``StratifiedGroupKFold``, falling back to a per-class balanced division when that leaves a
class out of some fold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedGroupKFold

from geofuse.data._multilabel import class_table, covers, stratify_units, unit_class_table
from geofuse.data.external_test import external_test_mask
from geofuse.data.patchset import SPLIT_CODES, UNASSIGNED, PatchSet, class_totals
from geofuse.data.splits import divide_groups, group_table
from geofuse.errors import SplitError
from geofuse.experiments._buffer import TEST_FOLD, buffer_counts, buffer_exclusion

GroupBy = Literal["polygon", "cell", "tile", "block"]
CHANGE_LEVELS = ("low", "moderate", "high")
__all__ = ["TEST_FOLD", "FoldAssignment", "make_folds"]


def change_level_strata(positive_fraction: np.ndarray) -> np.ndarray:
    """Change level per sample from its share of positive pixels: 0 low (<5%), 1 moderate
    (5-30%), 2 high (>=30%); names in :data:`CHANGE_LEVELS`.

    Raises:
        SplitError: a fraction is outside [0, 1] or not finite.
    """
    frac = np.asarray(positive_fraction, dtype=np.float64)
    bad = frac[~np.isfinite(frac) | (frac < 0) | (frac > 1)]
    if bad.size:
        raise SplitError(
            f"positive fractions must lie in [0, 1]; got {bad[:3].tolist()}; pass the share of "
            "changed pixels per sample (e.g. mask.mean())"
        )
    return np.digitize(frac, [0.05, 0.30]).astype(np.int64)


def _block_units(patches: PatchSet, block_size: float) -> np.ndarray:
    """Spatial block of each patch, merged with every polygon group that spans blocks."""
    cells = np.floor(patches.coords / block_size).astype(np.int64)
    blocks = np.array([f"block:{i},{j}" for i, j in cells.tolist()], dtype=str)
    _, b_idx = np.unique(blocks, return_inverse=True)
    _, g_idx = np.unique(patches.groups, return_inverse=True)
    n_b = int(b_idx.max()) + 1 if len(b_idx) else 0
    n_g = int(g_idx.max()) + 1 if len(g_idx) else 0
    # bipartite graph block <-> group: a connected component is one unit
    graph = coo_matrix((np.ones(len(b_idx)), (b_idx, n_b + g_idx)), shape=(n_b + n_g,) * 2)
    _, comp = connected_components(graph, directed=False)
    first_block = {}
    for c, name in zip(comp[b_idx].tolist(), blocks.tolist(), strict=True):
        first_block.setdefault(c, name)
    return np.array([first_block[c] for c in comp[b_idx].tolist()], dtype=str)


def _tile_units(groups: np.ndarray, tile_regex: str) -> np.ndarray:
    pattern = re.compile(tile_regex)
    out = []
    for group in groups.tolist():
        match = pattern.search(group)
        if match is None:
            raise SplitError(
                f"group {group!r} does not match ablation.tile_regex {tile_regex!r}; fix the "
                "regex (its first group should capture the tile) or use group_by: polygon"
            )
        out.append(match.group(1) if match.groups() else match.group(0))
    return np.array(out, dtype=str)


def fold_units(
    patches: PatchSet, group_by: GroupBy = "polygon", block_size: float | None = None,
    tile_regex: str = r"^([^/]+)/",
) -> np.ndarray:
    """The unit of each patch that must stay within one fold (polygon, tile or block)."""
    if group_by in ("polygon", "cell"):  # the PatchSet's own groups
        return np.asarray(patches.groups).astype(str)
    if group_by == "tile":
        return _tile_units(np.asarray(patches.groups).astype(str), tile_regex)
    if group_by == "block":
        if block_size is None or block_size <= 0:
            raise SplitError(
                f"group_by 'block' needs a positive block_size, got {block_size}; set "
                "ablation.block_size in CRS units"
            )
        return _block_units(patches, float(block_size))
    raise SplitError(f"unknown group_by {group_by!r}; use polygon, tile or block")


@dataclass
class FoldAssignment:
    """Fold of every patch (``-1`` = held-out test) and of every unit.

    Attributes:
        fold: int64 (N,) fold index per patch, :data:`TEST_FOLD` for the test set.
        units: (N,) unit name per patch (polygon group, tile or block).
        n_folds: number of folds.
        group_by: how units were formed.
    """

    fold: np.ndarray
    units: np.ndarray
    n_folds: int
    group_by: str
    #: ``ablation.buffer``: training patches closer than this to the fold's validation or
    #: test patches (centres ``coords``) are left out of its training (:mod:`._buffer`)
    buffer: float | None = None
    coords: np.ndarray | None = None
    #: training patches the buffer leaves out, per fold
    buffer_excluded: dict[int, int] | None = None

    def split_codes(self, k: int) -> np.ndarray:
        """PatchSet split codes for fold ``k``: val = fold k, test = held out, train = rest,
        except training patches inside the buffer (unassigned, 255)."""
        if not 0 <= k < self.n_folds:
            raise SplitError(f"fold {k} does not exist; folds are 0..{self.n_folds - 1}")
        codes = np.full(len(self.fold), SPLIT_CODES["train"], dtype=np.uint8)
        codes[self.fold == k] = SPLIT_CODES["val"]
        codes[self.fold == TEST_FOLD] = SPLIT_CODES["test"]
        if self.buffer and self.coords is not None:
            codes[buffer_exclusion(self.coords, self.fold, k, self.buffer)] = UNASSIGNED
        return codes

    def to_json(self, groups: np.ndarray | None = None) -> dict[str, Any]:
        """``{"n_folds", "group_by", "units": {unit: fold}, "groups": {group: fold},
        "test_units", "test_groups"}`` (fold ``-1`` = test)."""
        unit_fold = dict(zip(self.units.tolist(), self.fold.tolist(), strict=True))
        out: dict[str, Any] = {
            "n_folds": self.n_folds, "group_by": self.group_by,
            "units": dict(sorted(unit_fold.items())),
            "test_units": sorted(u for u, f in unit_fold.items() if f == TEST_FOLD),
        }
        if self.buffer:
            out["buffer"] = self.buffer
            out["buffer_excluded"] = {f"fold{k}": n
                                      for k, n in (self.buffer_excluded or {}).items()}
        if groups is not None:
            group_fold = dict(zip(np.asarray(groups).astype(str).tolist(), self.fold.tolist(),
                                  strict=True))
            out["groups"] = dict(sorted(group_fold.items()))
            out["test_groups"] = sorted(g for g, f in group_fold.items() if f == TEST_FOLD)
        return out


def _units_per_class(
    strata: np.ndarray, units: np.ndarray, n_strata: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(patch -> unit index, unit majority stratum, unit size, units containing each stratum)."""
    inverse, major, sizes = group_table(strata, units, n_strata)
    present = np.zeros((len(major), n_strata), dtype=bool)
    present[inverse, strata] = True
    return inverse, major, sizes, present.sum(axis=0)


def _too_few_message(
    counts: np.ndarray, names: list[str], need: int, n_folds: int, group_by: str, test: bool
) -> str:
    short = "; ".join(f"{names[k]!r} has {n}" for k, n in enumerate(counts) if n < need)
    all_counts = ", ".join(f"{names[k]} {n}" for k, n in enumerate(counts))
    fix = "lower ablation.folds, add labelled polygons or points"
    fix += ", use a smaller ablation.block_size" if group_by == "block" else ""
    fix += ", set ablation.test_fraction to 0" if test else ""
    return (
        f"cannot make {n_folds} leakage-free folds grouped by {group_by}: every class needs at "
        f"least {need} {group_by} groups ({n_folds} folds{' + test' if test else ''}), but "
        f"{short}; {group_by} groups per class: {all_counts}. Fix: {fix}"
    )


def _carve_test(
    major: np.ndarray, sizes: np.ndarray, test_fraction: float, seed: int
) -> np.ndarray:
    """Boolean per unit: held out for test (per majority class, ~test_fraction of patches)."""
    test = np.zeros(len(major), dtype=bool)
    for k in np.unique(major):
        idx = np.flatnonzero(major == k)
        if len(idx) < 2:  # a lone unit stays for cross-validation
            continue
        rng = np.random.default_rng([seed % 2**63, int(k), 7])
        assign = divide_groups(sizes[idx].astype(float), [1 - test_fraction, test_fraction], rng)
        test[idx[assign == 1]] = True
    return test


def _sklearn_folds(
    strata: np.ndarray, unit_idx: np.ndarray, n_folds: int, seed: int
) -> np.ndarray:
    """Fold per patch from StratifiedGroupKFold."""
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed % 2**32)
    fold = np.zeros(len(strata), dtype=np.int64)
    for k, (_, val) in enumerate(splitter.split(np.zeros(len(strata)), strata, unit_idx)):
        fold[val] = k
    return fold


def _balanced_folds(
    major: np.ndarray, sizes: np.ndarray, n_folds: int, seed: int
) -> np.ndarray:
    """Fold per unit: each majority class's units divided evenly (every fold gets one)."""
    fold = np.zeros(len(major), dtype=np.int64)
    for k in np.unique(major):
        idx = np.flatnonzero(major == k)
        rng = np.random.default_rng([seed % 2**63, int(k), 11])
        fold[idx] = divide_groups(sizes[idx].astype(float), [1 / n_folds] * n_folds, rng)
    return fold


def _covers_all(strata: np.ndarray, fold: np.ndarray, n_folds: int, wanted: np.ndarray) -> bool:
    return all(set(wanted.tolist()) <= set(strata[fold == k].tolist()) for k in range(n_folds))


def _rest_folds(
    y: np.ndarray, unit_idx: np.ndarray, major: np.ndarray, sizes: np.ndarray,
    rest_units: np.ndarray, n_folds: int, n_strata: int, seed: int,
) -> np.ndarray | None:
    """Fold per unit of ``rest_units`` when StratifiedGroupKFold left a fold without a class.

    Units of one class (polygons) are divided per class; units holding several classes
    (cells, tiles) by iterative stratification. ``None`` when neither covers every class.
    """
    table = class_table(unit_idx, y, len(major), n_strata)[rest_units]
    per_major = np.bincount(major[rest_units], minlength=n_strata)
    if (per_major[per_major > 0] >= n_folds).all():
        fold = _balanced_folds(major[rest_units], sizes[rest_units], n_folds, seed)
        if covers(table, fold, n_folds):
            return fold
    return stratify_units(table, [1 / n_folds] * n_folds, seed)


def _fixed_test_units(fixed_test: np.ndarray, unit_idx: np.ndarray, n_units: int,
                      test_fraction: float) -> np.ndarray:
    """Boolean per unit: all its patches are in the external test set."""
    if test_fraction > 0:
        raise SplitError(
            f"ablation.test_fraction = {test_fraction} but the patches carry an external test "
            "set (dataset.test_city_dir); set ablation.test_fraction to 0"
        )
    fixed = np.asarray(fixed_test, dtype=bool)
    test_unit = np.zeros(n_units, dtype=bool)
    test_unit[unit_idx[fixed]] = True
    if (test_unit[unit_idx] != fixed).any():
        raise SplitError("a fold unit mixes external-test and training patches; group by "
                         "polygon (cell) or use group ids that differ between the two datasets")
    return test_unit


def _label_set_folds(
    patches: PatchSet, units: np.ndarray, n_folds: int, test_fraction: float, seed: int,
    fixed_test: np.ndarray | None, group_by: str,
) -> FoldAssignment:
    """Folds of a multi-label set: iterative stratification of its units' label sets.

    Every class found in at least ``n_folds`` units of the cross-validation pool is in every
    fold; a test set (``test_fraction``) is carved out first the same way.
    """
    unit_idx, table = unit_class_table(patches.targets(), units, patches.num_classes)
    n_units = len(table)
    fixed = external_test_mask(patches) if fixed_test is None else fixed_test
    test_unit = np.zeros(n_units, dtype=bool)
    if fixed is not None:
        test_unit = _fixed_test_units(fixed, unit_idx, n_units, test_fraction)
    elif test_fraction > 0:
        carved = stratify_units(table, [1 - test_fraction, test_fraction], seed + 7) \
            if n_units >= 2 else None
        if carved is None:
            raise SplitError(f"cannot hold out a stratified test set of {n_units} {group_by} "
                             "groups; set ablation.test_fraction to 0 or add samples")
        test_unit = carved == 1
    rest = np.flatnonzero(~test_unit)
    found = stratify_units(table[rest], [1 / n_folds] * n_folds, seed) \
        if len(rest) >= n_folds else None
    if found is None:
        per_class = (table[rest] > 0).sum(axis=0)
        counts = ", ".join(f"{patches.class_names[k]} {n}" for k, n in enumerate(per_class)
                           if n)
        raise SplitError(
            f"cannot make {n_folds} stratified folds of {len(rest)} {group_by} groups holding "
            f"every class found in at least {n_folds} groups ({group_by} groups per class: "
            f"{counts}); lower ablation.folds or add samples"
        )
    unit_fold = np.full(n_units, TEST_FOLD, dtype=np.int64)
    unit_fold[rest] = found
    return FoldAssignment(fold=unit_fold[unit_idx], units=units, n_folds=n_folds,
                          group_by=group_by)


def make_folds(
    patches: PatchSet,
    n_folds: int = 5,
    group_by: GroupBy = "polygon",
    block_size: float | None = None,
    tile_regex: str = r"^([^/]+)/",
    test_fraction: float = 0.0,
    seed: int = 42,
    strata: np.ndarray | None = None,
    strata_names: list[str] | None = None,
    fixed_test: np.ndarray | None = None,
    buffer: float | None = None,
) -> FoldAssignment:
    """:func:`grouped_folds`, then the spatial ``buffer`` (CRS units) between each fold's
    training patches and its validation and test patches (:mod:`._buffer`).

    Raises:
        SplitError: as :func:`grouped_folds`; or the buffer has no coordinates to work on, or
            leaves a fold without training patches of a class its validation patches hold.
    """
    folds = grouped_folds(patches, n_folds, group_by, block_size, tile_regex, test_fraction,
                          seed, strata, strata_names, fixed_test)
    if not buffer:
        return folds
    names = list(strata_names or (patches.class_names if strata is None else CHANGE_LEVELS))
    targets = patches.targets() if strata is None else np.asarray(strata)
    if targets.ndim == 1 and len(targets):
        names += [str(k) for k in range(len(names), int(targets.max()) + 1)]
    excluded = buffer_counts(patches.coords, folds.fold, n_folds, buffer, targets, names)
    return replace(folds, buffer=float(buffer), coords=np.asarray(patches.coords, float),
                   buffer_excluded=excluded)


def grouped_folds(
    patches: PatchSet,
    n_folds: int = 5,
    group_by: GroupBy = "polygon",
    block_size: float | None = None,
    tile_regex: str = r"^([^/]+)/",
    test_fraction: float = 0.0,
    seed: int = 42,
    strata: np.ndarray | None = None,
    strata_names: list[str] | None = None,
    fixed_test: np.ndarray | None = None,
) -> FoldAssignment:
    """Assign every patch to one of ``n_folds`` folds or the held-out test set.

    Args:
        patches: the PatchSet (its ``groups``, ``coords`` and ``y`` are used).
        n_folds: number of folds (>= 2).
        group_by: unit kept within one fold: polygon, tile or block.
        block_size: block side in CRS units (group_by block).
        tile_regex: regex giving the tile of a group (group_by tile).
        test_fraction: share of patches held out first for testing (0 = none).
        seed: seed of the fold assignment.
        strata: stratification label per patch (default ``patches.y``), e.g.
            :func:`change_level_strata`.
        strata_names: names of the strata for messages (default the class names).
        fixed_test: boolean per patch: an external test set (e.g. another city), held out
            as the test set instead of carving one by ``test_fraction``; default the
            PatchSet's own external test set (:func:`external_test_mask`), if any.

    A multi-label PatchSet (without ``strata``) is divided by iterative stratification of
    its units' label sets (:func:`_label_set_folds`).

    Raises:
        SplitError: a class (stratum) occurs in fewer units than folds (+1 with a test set);
            the message lists the units per class.
    """
    if n_folds < 2:
        raise SplitError(f"ablation.folds = {n_folds}: cross-validation needs at least 2 folds")
    if not 0 <= test_fraction < 1:
        raise SplitError(f"test_fraction = {test_fraction} must be in [0, 1); fix the config")
    if strata is None and patches.multilabel:
        units = fold_units(patches, group_by, block_size, tile_regex)
        return _label_set_folds(patches, units, n_folds, test_fraction, seed, fixed_test,
                                group_by)
    y = np.asarray(patches.y if strata is None else strata, dtype=np.int64)
    names = list(strata_names or (patches.class_names if strata is None else CHANGE_LEVELS))
    n_strata = max(len(names), int(y.max()) + 1 if len(y) else 0)
    names += [str(k) for k in range(len(names), n_strata)]
    units = fold_units(patches, group_by, block_size, tile_regex)
    unit_idx, major, sizes, with_class = _units_per_class(y, units, n_strata)
    fixed_test = external_test_mask(patches) if fixed_test is None else fixed_test
    if fixed_test is not None:
        test_unit = _fixed_test_units(fixed_test, unit_idx, len(major), test_fraction)
        pool = ~test_unit[unit_idx]
        _, _, _, with_class = _units_per_class(y[pool], units[pool], n_strata)
        wanted = np.flatnonzero(np.bincount(y[pool], minlength=n_strata) > 0)
    else:
        wanted = np.flatnonzero(np.bincount(y, minlength=n_strata) > 0)
    need = n_folds + (1 if test_fraction > 0 else 0)
    if (with_class[wanted] < need).any():
        counts = np.where(np.isin(np.arange(n_strata), wanted), with_class, need)
        raise SplitError(_too_few_message(counts, names, need, n_folds, group_by,
                                          test_fraction > 0))
    if fixed_test is None:
        test_unit = _carve_test(major, sizes, test_fraction, seed) if test_fraction > 0 else (
            np.zeros(len(major), dtype=bool))
    rest = ~test_unit[unit_idx]
    fold = np.full(len(y), TEST_FOLD, dtype=np.int64)
    fold[rest] = _sklearn_folds(y[rest], unit_idx[rest], n_folds, seed)
    if not _covers_all(y[rest], fold[rest], n_folds, np.unique(y[rest])):
        rest_units = np.flatnonzero(~test_unit)
        unit_fold = np.full(len(major), TEST_FOLD, dtype=np.int64)
        found = _rest_folds(y, unit_idx, major, sizes, rest_units, n_folds, n_strata, seed)
        if found is not None:
            unit_fold[rest_units] = found
            fold = unit_fold[unit_idx]
        if found is None or not _covers_all(y[rest], fold[rest], n_folds, np.unique(y[rest])):
            _, _, _, in_rest = _units_per_class(y[rest], units[rest], n_strata)
            raise SplitError(_too_few_message(in_rest, names, n_folds, n_folds, group_by, False))
    return FoldAssignment(fold=fold, units=units, n_folds=n_folds, group_by=group_by)


def fold_summary(
    assignment: FoldAssignment, y: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    """Patches, units and patches per class of every fold and the test set (``y``: class
    indices, or multi-hot label sets)."""
    out: dict[str, Any] = {}
    for k in [*range(assignment.n_folds), TEST_FOLD]:
        sel = assignment.fold == k
        if k == TEST_FOLD and not sel.any():
            continue
        counts = class_totals(np.asarray(y)[sel], len(class_names))
        out["test" if k == TEST_FOLD else f"fold{k}"] = {
            "patches": int(sel.sum()), "units": len(np.unique(assignment.units[sel])),
            "per_class": {c: int(n) for c, n in zip(class_names, counts, strict=True)},
        }
    return out
