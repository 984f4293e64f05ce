"""Training on a share of the labels (``train.label_fraction``): learning curves.

"How many labelled polygons do I need?" and "does elevation help more when labels are few?"
are answered by training on nested shares of the training groups. A share keeps, per class
(the group's most frequent label or stratum), ``ceil(fraction x groups)`` of the class's
training groups, at least one, drawn by one seeded permutation, so that for one seed a smaller
share is a subset of a larger one and every class stays in training. The patches of the other
training groups are unassigned (split code 255) for the run; validation and test splits are
untouched, so every share is judged on the same patches.
"""

from __future__ import annotations

import math

import numpy as np

from geofuse.data.patchset import UNASSIGNED, PatchSet


def subsample_training(patches: PatchSet, fraction: float, seed: int) -> PatchSet:
    """``patches`` with only a seeded ``fraction`` of the training split's groups, per class.

    Returns ``patches`` itself for a fraction of 1 or more.
    """
    if fraction >= 1.0:
        return patches
    train = patches.split_indices("train")
    groups = np.asarray(patches.groups)[train].astype(str)
    names, inverse = np.unique(groups, return_inverse=True)
    labels = np.asarray(patches.y)[train].astype(np.int64)
    votes = np.zeros((len(names), int(labels.max(initial=0)) + 1), dtype=np.int64)
    np.add.at(votes, (inverse, labels), 1)
    group_class = votes.argmax(axis=1)
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(names), dtype=bool)
    for c in np.unique(group_class):  # one permutation per class, in class order: nested
        members = np.flatnonzero(group_class == c)
        order = rng.permutation(len(members))
        keep[members[order[:max(1, math.ceil(fraction * len(members)))]]] = True
    split = np.array(patches.split, copy=True)
    split[train[~keep[inverse]]] = UNASSIGNED
    return patches._replace(split=split)
