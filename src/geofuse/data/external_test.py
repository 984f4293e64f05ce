"""An external test set: patches from another place (e.g. a second city) appended as ``test``.

Training on one city and testing on another measures how a model transfers, which a random
or even a grouped split of one city cannot. The external patches are marked in the
provenance (``external_test``) and by a group prefix, so that cross-validation keeps them out
of every fold (:func:`external_test_mask`).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from geofuse.data.patchset import (
    MASK_IGNORE,
    SPLIT_CODES,
    PatchSet,
    class_totals,
    primary_labels,
)
from geofuse.errors import BandError, ConfigError, SamplingError

_SOURCE_KEYS = ("dataset", "city", "city_dir", "cells", "dropped_cells", "patch_size", "stride")


def with_external_test(train: PatchSet, test: PatchSet, name: str) -> PatchSet:
    """``train`` plus ``test`` as the test split (groups ``<name>/<group>``).

    Test patches of classes the training set lacks are dropped with a warning (a model cannot
    predict them); classes follow the training set's order. Multi-label sets (``multi_hot``)
    must share their class list (one nomenclature): all their rows are kept, and ``y`` is
    recomputed over the merged rows (:func:`primary_labels`).

    Raises:
        BandError: the two sets have different bands or tabular columns.
        ConfigError: ``train`` already holds test patches, or only one set is multi-label, or
            two multi-label sets have different classes.
        SamplingError: no test patch has a class known to the training set.
    """
    if list(test.band_names) != list(train.band_names):
        raise BandError(f"external test set {name!r} has bands {test.band_names}, the training "
                        f"set {train.band_names}; read both with the same seasons/layers")
    if (test.tabular is None) != (train.tabular is None) or (
            list(test.tabular_names) != list(train.tabular_names)):
        raise BandError(f"external test set {name!r} has other tabular columns than the "
                        "training set; use the same attribute table layout for both")
    if (train.split == SPLIT_CODES["test"]).any():
        raise ConfigError("the training city already has a test split while an external test "
                          "set is given; set splits.test_fraction to 0")
    masks = None
    if (train.masks is None) != (test.masks is None):
        which = "training" if train.masks is not None else "external test"
        raise ConfigError(f"only the {which} set carries pixel masks (external test set "
                          f"{name!r}); read both with the same dataset.target")
    if train.regression != test.regression:
        which = "training" if train.regression else "external test"
        raise ConfigError(f"only the {which} set carries continuous targets (external test set "
                          f"{name!r}); read both with the same dataset.target")
    if train.multilabel or test.multilabel:
        _check_multilabel(train, test, name)
        dropped: dict[str, int] = {}
        y = test.y
    elif train.regression:  # every value is a valid target; strata unknown to train -> first
        known = {c: k for k, c in enumerate(train.class_names)}
        names = np.array(test.class_names)[test.y]
        y = np.array([known.get(c, 0) for c in names], np.int64)
        dropped = {}  # no patch is dropped; strata the training set lacks are counted apart
        unknown = {str(c): int((names == c).sum()) for c in sorted(set(names) - set(known))}
    elif train.masks is not None:
        test, y, test_masks, dropped = _known_mask_classes(train, test, name)
        masks = np.concatenate([train.masks, test_masks])
    else:
        test, y, dropped = _known_classes(train, test, name)
    hot = None if train.multi_hot is None or test.multi_hot is None else np.concatenate(
        [train.multi_hot, test.multi_hot])
    prefix = f"{name}/"
    tab = None if train.tabular is None else np.concatenate([train.tabular, test.tabular])
    info: dict[str, Any] = {
        "name": name, "group_prefix": prefix, "patches": len(test), "crs": test.crs,
        "dropped_classes": dropped,
        **({"strata_unknown_to_training": unknown} if train.regression else {}),
        "per_class": {c: int(n) for c, n in zip(train.class_names, class_totals(
            test.targets() if hot is not None else y, train.num_classes), strict=True)},
        "source": {k: test.provenance[k] for k in _SOURCE_KEYS if k in test.provenance},
    }
    return train._replace(
        x=np.concatenate([train.x, test.x]), multi_hot=hot,
        y=np.concatenate([train.y, y]) if hot is None else primary_labels(hot),
        groups=np.concatenate([train.groups, np.char.add(prefix, test.groups)]),
        coords=np.concatenate([train.coords, test.coords]),
        split=np.concatenate([train.split, np.full(len(test), SPLIT_CODES["test"], np.uint8)]),
        nodata_fraction=np.concatenate([train.nodata_fraction, test.nodata_fraction]),
        tabular=tab, provenance={**train.provenance, "external_test": info},
        **({"masks": masks} if masks is not None else {}),
        **({"values": np.concatenate([train.values, test.values])}
           if train.values is not None and test.values is not None else {}),
    )


def _check_multilabel(train: PatchSet, test: PatchSet, name: str) -> None:
    """Raise :class:`ConfigError` unless both sets are multi-label over the same classes."""
    if not (train.multilabel and test.multilabel):
        which = "training" if train.multilabel else "external test"
        raise ConfigError(f"only the {which} set is multi-label (external test set {name!r}); "
                          "read both with the same dataset settings")
    if list(test.class_names) != list(train.class_names):
        raise ConfigError(f"external test set {name!r} has classes {test.class_names}, the "
                          f"training set {train.class_names}; read both with the same "
                          "nomenclature (dataset.nomenclature)")


def _known_classes(train: PatchSet, test: PatchSet, name: str
                   ) -> tuple[PatchSet, np.ndarray, dict[str, int]]:
    """Single-label test patches of the training classes, their class indices in the
    training order, and the count of dropped patches per unknown class."""
    known = {c: k for k, c in enumerate(train.class_names)}
    test_classes = np.array(test.class_names)[test.y]
    keep = np.isin(test_classes, list(known))
    dropped = {str(c): int((test_classes == c).sum()) for c in sorted(set(test_classes[~keep]))}
    if not keep.any():
        raise SamplingError(f"external test set {name!r} has no patch of a class of the training "
                            f"set {train.class_names}; check the test city folder")
    if dropped:
        warnings.warn(f"external test set {name!r}: dropped patches of classes the training set "
                      f"lacks: {dropped}", stacklevel=3)
    y = np.array([known[c] for c in test_classes[keep]], dtype=np.int64)
    return test.subset(keep), y, dropped


def _known_mask_classes(train: PatchSet, test: PatchSet, name: str
                        ) -> tuple[PatchSet, np.ndarray, np.ndarray, dict[str, int]]:
    """Test tiles with masks recoded to the training mask classes (pixels of other classes
    ignored), those still holding a labelled pixel, their strata (the most frequent training
    stratum class in the mask) and the ignored pixels per unknown class."""
    known = {c: k for k, c in enumerate(train.mask_names)}
    lookup = np.full(256, MASK_IGNORE, dtype=np.uint8)
    dropped: dict[str, int] = {}
    for k, c in enumerate(test.mask_names):
        if c in known:
            lookup[k] = known[c]
        else:
            dropped[c] = int((test.masks == k).sum())
    masks = lookup[test.masks]
    keep = (masks != MASK_IGNORE).any(axis=(1, 2))
    if not keep.any():
        raise SamplingError(f"external test set {name!r} has no pixel of a mask class of the "
                            f"training set {train.mask_names}; check the test folder")
    if any(dropped.values()):
        warnings.warn(f"external test set {name!r}: pixels of classes the training set lacks "
                      f"are ignored (pixel counts): {dropped}", stacklevel=3)
    strata = [known[c] for c in train.class_names if c in known]
    counts = np.stack([(masks[keep] == m).sum(axis=(1, 2)) for m in strata], axis=1)
    return test.subset(keep), counts.argmax(axis=1).astype(np.int64), masks[keep], dropped


def external_test_mask(patches: PatchSet) -> np.ndarray | None:
    """Boolean per patch: part of the external test set; ``None`` when there is none."""
    info = patches.provenance.get("external_test")
    if not info:
        return None
    return np.char.startswith(patches.groups.astype(str), str(info["group_prefix"]))
