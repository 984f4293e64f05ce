"""Training on a share of the labels (``train.label_fraction``): learning curves.

"How many labelled polygons do I need?" and "does elevation help more when labels are few?"
are answered by training on nested shares of the training groups. A share keeps, per class
(the group's most frequent label or stratum), ``ceil(fraction x groups)`` of the class's
training groups, at least one, drawn by one seeded permutation per class, so that for one seed
a smaller share is a subset of a larger one. A class that is no group's majority (a minority
in mixed raster blocks or point clusters) keeps the first group holding it in one seeded order
of all groups, the same for every share, so every class stays in training and the shares stay
nested. The patches of the other training groups are unassigned (split code 255) for the run;
validation and test splits are untouched, so every share is judged on the same patches.
"""

from __future__ import annotations

import math

import numpy as np

from geofuse.data.patchset import UNASSIGNED, PatchSet


def kept_training(split: np.ndarray, groups: np.ndarray, y: np.ndarray, fraction: float,
                  seed: int) -> np.ndarray:
    """Indices of the training patches (split code 0) a share ``fraction`` keeps."""
    train = np.flatnonzero(np.asarray(split) == 0)
    if fraction >= 1.0 or not len(train):
        return train
    names, inverse = np.unique(np.asarray(groups)[train].astype(str), return_inverse=True)
    labels = np.asarray(y)[train].astype(np.int64)
    known = labels >= 0  # a multi-label patch without a label has y = -1
    votes = np.zeros((len(names), int(labels.max(initial=0)) + 1), dtype=np.int64)
    np.add.at(votes, (inverse[known], labels[known]), 1)
    majority = votes.argmax(axis=1)
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(names), dtype=bool)
    for c in np.unique(majority):  # one permutation per class, in class order: nested
        members = np.flatnonzero(majority == c)
        order = rng.permutation(len(members))
        keep[members[order[:max(1, math.ceil(fraction * len(members)))]]] = True
    order = rng.permutation(len(names))  # classes that are no group's majority: the same
    for c in np.setdiff1d(np.flatnonzero(votes.sum(axis=0)), majority):  # group every share
        keep[order[np.flatnonzero(votes[order, c] > 0)[0]]] = True
    return train[keep[inverse]]


def subsample_training(patches: PatchSet, fraction: float, seed: int) -> PatchSet:
    """``patches`` with only a seeded ``fraction`` of the training split's groups, per class
    (the others unassigned). Returns ``patches`` itself for a fraction of 1 or more."""
    if fraction >= 1.0:
        return patches
    train = patches.split_indices("train")
    kept = kept_training(patches.split, patches.groups, patches.y, fraction, seed)
    split = np.array(patches.split, copy=True)
    split[np.setdiff1d(train, kept)] = UNASSIGNED
    return patches._replace(split=split)
