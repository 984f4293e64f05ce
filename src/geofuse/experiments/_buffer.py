"""Spatial buffers between training and evaluation patches (``ablation.buffer``).

Grouping by polygon, cell or block keeps a unit within one fold, but two neighbouring units on
either side of a fold boundary still look alike (spatial autocorrelation), so validation scores
are optimistic for ground the model never saw. Buffered cross-validation (Roberts et al. 2017,
"Cross-validation strategies for data with temporal, spatial, hierarchical, or phylogenetic
structure"; Valavi et al. 2019, blockCV) leaves a gap: in each fold, training patches whose
centre lies closer than the buffer to any validation or test patch centre are left out of that
fold's training (split code 255), so the model is judged at least that far from what it learnt.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.spatial import cKDTree

from geofuse.data.patchset import class_totals
from geofuse.errors import SplitError

TEST_FOLD = -1


def buffer_exclusion(coords: np.ndarray, fold: np.ndarray, k: int, buffer: float
                     ) -> np.ndarray:
    """Training patches of fold ``k`` (neither in fold ``k`` nor in the test set) whose centre
    lies closer than ``buffer`` to a validation (fold ``k``) or test patch centre."""
    held = (fold == k) | (fold == TEST_FOLD)
    train = ~held
    out = np.zeros(len(fold), dtype=bool)
    if not held.any() or not train.any():
        return out
    dist, _ = cKDTree(coords[held]).query(coords[train], k=1, distance_upper_bound=buffer)
    out[np.flatnonzero(train)[dist < buffer]] = True
    return out


def check_coordinates(coords: np.ndarray, buffer: float) -> None:
    """Refuse a buffer the patch coordinates cannot support (missing or all one point)."""
    c = np.asarray(coords, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != 2 or not len(c):
        raise SplitError(f"ablation.buffer = {buffer:g} needs patch centre coordinates (N, 2); "
                         "this PatchSet has none: remove ablation.buffer")
    if not np.isfinite(c).all():
        raise SplitError(f"ablation.buffer = {buffer:g}: {int((~np.isfinite(c)).any(axis=1).sum())}"
                         " patches have no finite centre coordinates; re-run 'geofuse extract' "
                         "or remove ablation.buffer")
    if np.ptp(c, axis=0).max() == 0:
        raise SplitError(f"ablation.buffer = {buffer:g}: every patch of this PatchSet sits at "
                         f"the same point {tuple(c[0])} (a dataset without georeferenced "
                         "patches); a distance buffer cannot work: remove ablation.buffer")


def buffer_counts(coords: np.ndarray, fold: np.ndarray, n_folds: int, buffer: float,
                  targets: np.ndarray, names: Sequence[str]) -> dict[int, int]:
    """Training patches left out of each fold by the buffer.

    Raises:
        SplitError: the buffer leaves a fold with no training patch of a class (stratum)
            that its validation patches hold.
    """
    check_coordinates(coords, buffer)
    t = np.asarray(targets)
    counts = {}
    for k in range(n_folds):
        dropped = buffer_exclusion(coords, fold, k, buffer)
        train = (fold != k) & (fold != TEST_FOLD) & ~dropped
        in_val = class_totals(t[fold == k], len(names)) > 0
        in_train = class_totals(t[train], len(names)) > 0
        lost = [names[c] for c in np.flatnonzero(in_val & ~in_train)]
        if lost:
            raise SplitError(
                f"ablation.buffer = {buffer:g} leaves fold {k} no training patch of "
                f"{', '.join(repr(n) for n in lost)} (all lie within {buffer:g} CRS units of "
                "its validation or test patches); use a smaller buffer, or fewer folds")
        counts[k] = int(dropped.sum())
    return counts
