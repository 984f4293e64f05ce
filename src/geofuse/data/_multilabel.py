"""Stratified grouping when one group holds patches of several classes.

Polygons hold one class, but a 1 km So2Sat cell or an image tile holds many. Dividing such
groups by their majority class can leave a class that is a minority everywhere out of a split.
:func:`stratify_units` uses iterative stratification (Sechidis, Tsoumakas & Vlahavas 2011):
the rarest class first, each of its groups goes to a split that does not hold that class yet,
else to the split that most lacks it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def class_table(inverse: np.ndarray, y: np.ndarray, n_units: int, num_classes: int
                ) -> np.ndarray:
    """(U, K) patch counts per unit and class, given each patch's unit index.

    ``y`` is a class index per patch (N,) or a multi-hot label set per patch (N, K).
    """
    table = np.zeros((n_units, num_classes), dtype=np.int64)
    y = np.asarray(y)
    if y.ndim == 2:
        np.add.at(table, inverse, y.astype(np.int64))
    else:
        np.add.at(table, (inverse, y.astype(np.int64)), 1)
    return table


def unit_class_table(
    y: np.ndarray, units: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(unit index of each patch, (U, K) patch counts per unit and class)."""
    _, inverse = np.unique(np.asarray(units).astype(str), return_inverse=True)
    n_units = int(inverse.max()) + 1 if len(inverse) else 0
    return inverse, class_table(inverse, y, n_units, num_classes)


def covers(table: np.ndarray, split: np.ndarray, n_splits: int) -> bool:
    """Whether every split holds every class that occurs in at least ``n_splits`` units."""
    needed = (table > 0).sum(axis=0) >= n_splits
    for s in range(n_splits):
        held = table[split == s].sum(axis=0) > 0
        if not (held | ~needed).all():
            return False
    return True


def _one_try(table: np.ndarray, fractions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n_units = len(table)
    sizes = table.sum(axis=1).astype(float)
    want = fractions[:, None] * table.sum(axis=0)[None, :].astype(float)
    want_total = fractions * sizes.sum()
    split = np.full(n_units, -1, dtype=np.int64)
    has = table > 0
    while (split < 0).any():
        open_units = split < 0
        remaining = has[open_units].sum(axis=0)
        classes = np.flatnonzero(remaining > 0)
        if len(classes) == 0:  # units without patches
            split[open_units] = rng.integers(0, len(fractions), open_units.sum())
            break
        rarest = remaining[classes].min()
        k = int(rng.choice(classes[remaining[classes] == rarest]))
        members = np.flatnonzero(open_units & has[:, k])
        members = members[rng.permutation(len(members))]
        members = members[np.argsort(-table[members, k], kind="stable")]
        held = np.zeros(len(fractions), dtype=bool)  # splits holding class k already
        held[np.unique(split[has[:, k] & (split >= 0)])] = True
        for u in members.tolist():
            # a split without the class first (coverage), then the one that most lacks it
            score = np.lexsort((rng.random(len(fractions)), want_total, want[:, k], ~held))
            s = int(score[-1])
            held[s] = True
            split[u] = s
            want[s] -= table[u]
            want_total[s] -= sizes[u]
    return split


def stratify_units(
    table: np.ndarray, fractions: Sequence[float], seed: int, tries: int = 50
) -> np.ndarray | None:
    """Split index per unit, in proportion to ``fractions`` and stratified by class.

    Args:
        table: (U, K) patch counts per unit and class.
        fractions: share of patches per split (summing to 1).
        seed: seed of the random tie-breaks.
        tries: attempts with different tie-breaks before giving up.

    Returns:
        The split of each unit such that every split holds every class found in at least
        ``len(fractions)`` units, or ``None`` when no attempt achieved that.
    """
    frac = np.asarray(fractions, dtype=float)
    for attempt in range(tries):
        rng = np.random.default_rng([seed % 2**63, attempt, 23])
        split = _one_try(table, frac, rng)
        if covers(table, split, len(frac)) and len(np.unique(split)) == len(frac):
            return split
    return None
