"""Leakage-free train/val/test splits: stratified by class, grouped by polygon.

Every group (e.g. ``polygon:17``) goes wholly into one split, so no two splits share pixels of
the same polygon. Each group is assigned by its majority class, and each class's groups are
divided so that its patch counts per split follow the requested fractions, with at least one
group of every class in every split. Where a class is the majority in too few groups (groups
holding several classes, e.g. 1 km cells), the groups are divided by iterative stratification
over all of their classes (:mod:`geofuse.data._multilabel`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from geofuse.data._multilabel import stratify_units, unit_class_table
from geofuse.data.patchset import SPLIT_CODES, class_totals
from geofuse.errors import SplitError

SPLIT_NAMES = {code: name for name, code in SPLIT_CODES.items()}


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not 0 < val_fraction < 1 or not 0 <= test_fraction < 1:
        raise SplitError(
            f"splits: val_fraction={val_fraction} must be in (0, 1) and test_fraction="
            f"{test_fraction} in [0, 1); fix the splits section of the config"
        )
    if val_fraction + test_fraction >= 1:
        raise SplitError(
            f"splits: val_fraction + test_fraction = {val_fraction + test_fraction:g} leaves "
            "nothing for training; make their sum smaller than 1"
        )


def group_table(
    y: np.ndarray, groups: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group class counts: (inverse index of each patch, majority class, patch count)."""
    inverse, table = unit_class_table(y, groups, num_classes)
    return inverse, table.argmax(axis=1), table.sum(axis=1)


def _group_kind(groups: np.ndarray) -> str:
    """What the groups are, from their names (``polygon:17``, ``tile:3``, ``cell:...``)."""
    kinds = {str(g).split(":", 1)[0] for g in np.unique(groups) if ":" in str(g)}
    return kinds.pop() if len(kinds) == 1 else "group"


def _impossible_message(
    n_groups: np.ndarray, names: list[str], need: int, split_names: list[str],
    kind: str = "polygon",
) -> str:
    short = [f"{names[k]!r} has {n}" for k, n in enumerate(n_groups) if n < need]
    all_counts = ", ".join(f"{names[k]} {n}" for k, n in enumerate(n_groups))
    unit = "groups" if kind == "group" else f"{kind} groups"
    fix = f"add {kind}s holding those classes"
    if need == 3:
        fix += ", set splits.test_fraction to 0 (then 2 groups per class suffice)"
    return (
        f"cannot split without leakage: every class needs at least {need} {unit} (one "
        f"each for {'/'.join(split_names)}), but {'; '.join(short)}; groups per class "
        f"({kind}s holding it): {all_counts}. Fix: {fix}, or drop the "
        "class from labels.classes"
    )


def _closest(sizes: np.ndarray, pool: list[int], target: float) -> int:
    """Member of ``pool`` whose size is closest to ``target`` (first on ties)."""
    return pool[int(np.argmin([abs(sizes[g] - target) for g in pool]))]


def _fill_empty(assign: np.ndarray, sizes: np.ndarray, n_splits: int) -> None:
    """Give every empty split the smallest group of the split that has the most groups."""
    for s in range(n_splits):
        if (assign == s).any():
            continue
        donor = int(np.argmax(np.bincount(assign, minlength=n_splits)))
        members = np.flatnonzero(assign == donor)
        assign[members[np.argmin(sizes[members])]] = s


def divide_groups(
    sizes: np.ndarray, fractions: list[float], rng: np.random.Generator
) -> np.ndarray:
    """Assign groups of the given patch counts to splits 0..S-1 in proportion to ``fractions``.

    Splits 1..S-1 first take the group closest to their target size, then the rest go, largest
    first (random order among equal sizes), to the split furthest below its target. Needs at
    least ``len(fractions)`` groups; every split gets one.
    """
    n_splits = len(fractions)
    order = rng.permutation(len(sizes))
    order = order[np.argsort(-sizes[order], kind="stable")]
    targets = np.asarray(fractions) * sizes.sum()
    assign = np.full(len(sizes), -1, dtype=np.int64)
    pool = [int(g) for g in order]
    for s in range(1, n_splits):
        g = _closest(sizes, pool, targets[s])
        assign[g] = s
        pool.remove(g)
    current = np.bincount(assign[assign >= 0], weights=sizes[assign >= 0], minlength=n_splits)
    for g in pool:
        s = int(np.argmax(targets - current))
        assign[g] = s
        current[s] += sizes[g]
    _fill_empty(assign, sizes, n_splits)
    return assign


def assign_splits(
    y: np.ndarray,
    groups: np.ndarray,
    val_fraction: float,
    test_fraction: float = 0.0,
    seed: int = 42,
    class_names: list[str] | None = None,
) -> np.ndarray:
    """Split codes (:data:`SPLIT_CODES`) per patch, stratified by class and grouped.

    Multi-label sets (``y`` of shape (N, K)) are always divided by iterative stratification
    over their label sets; every class found in at least as many groups as there are splits
    then appears in every split.

    Args:
        y: class index of each patch, or its multi-hot label set (N, K).
        groups: group of each patch (e.g. ``polygon:17``); a group never spans two splits.
        val_fraction: share of each class's patches for validation.
        test_fraction: share for test; 0 means no test split.
        seed: seed of the random group order.
        class_names: names for messages; also classes that must appear (even with no patches).

    Raises:
        SplitError: a class has fewer groups than splits, or the fractions are invalid.
    """
    _check_fractions(val_fraction, test_fraction)
    y = np.asarray(y, dtype=np.int64)
    groups = np.asarray(groups).astype(str)
    if y.ndim == 2:
        num_classes = y.shape[1]
    else:
        num_classes = max(len(class_names or []), int(y.max()) + 1 if len(y) else 0)
    names = list(class_names or []) + [str(k) for k in range(len(class_names or []), num_classes)]
    fractions = [1 - val_fraction - test_fraction, val_fraction]
    fractions += [test_fraction] if test_fraction > 0 else []
    split_names = [SPLIT_NAMES[s] for s in range(len(fractions))]
    inverse, table = unit_class_table(y, groups, num_classes)
    major, sizes = table.argmax(axis=1), table.sum(axis=1)
    n_groups = np.bincount(major, minlength=num_classes)
    if y.ndim == 2:
        return _stratify_label_sets(table, inverse, fractions, seed, names, split_names)
    if (n_groups < len(fractions)).any():
        # groups holding several classes (cells, tiles): stratify on all of their classes
        present = (table > 0).sum(axis=0)
        found = None
        if (present >= len(fractions)).all():
            found = stratify_units(table, fractions, seed)
        if found is None:
            raise SplitError(_impossible_message(present, names, len(fractions), split_names,
                                                 _group_kind(groups)))
        return found[inverse].astype(np.uint8)
    group_split = np.zeros(len(major), dtype=np.uint8)
    for k in range(num_classes):
        idx = np.flatnonzero(major == k)
        rng = np.random.default_rng([seed % 2**63, k])
        group_split[idx] = divide_groups(sizes[idx].astype(float), fractions, rng)
    return group_split[inverse]


def _stratify_label_sets(
    table: np.ndarray, inverse: np.ndarray, fractions: list[float], seed: int,
    names: list[str], split_names: list[str],
) -> np.ndarray:
    """Split codes of a multi-label set: iterative stratification of its groups."""
    n_units = len(table)
    if n_units < len(fractions):
        raise SplitError(
            f"cannot split {n_units} group(s) into {'/'.join(split_names)} without leakage: "
            f"add samples, use a smaller dataset.block_size_m, or set splits.test_fraction to 0"
        )
    found = stratify_units(table, fractions, seed)
    if found is None:
        counts = ", ".join(f"{names[k]} {n}" for k, n in enumerate((table > 0).sum(axis=0)) if n)
        raise SplitError(
            f"cannot divide {n_units} groups into {'/'.join(split_names)} so that each split "
            f"holds every class found in at least {len(fractions)} groups (groups per class: "
            f"{counts}); add samples, use a smaller dataset.block_size_m, or set "
            "splits.test_fraction to 0"
        )
    return found[inverse].astype(np.uint8)


def split_summary(
    y: np.ndarray, groups: np.ndarray, split: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    """Patches and groups per split and patches per class per split (for provenance)."""
    out: dict[str, Any] = {}
    for code in sorted(set(np.asarray(split).tolist())):
        sel = split == code
        name = SPLIT_NAMES.get(code, "unassigned")
        counts = class_totals(np.asarray(y)[sel], len(class_names))
        out[name] = {
            "patches": int(sel.sum()),
            "groups": len(np.unique(groups[sel])),
            "per_class": {c: int(n) for c, n in zip(class_names, counts, strict=True)},
        }
    return out
