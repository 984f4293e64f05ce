"""Area of applicability (AOA) of a map: where the model has seen data like the scene's.

Meyer & Pebesma 2021 ("Predicting into unknown space? Estimating the area of applicability of
spatial prediction models", Methods Ecol. Evol. 12: 1620; R package CAST, ``aoa()``) judge a
prediction by how far its predictors lie from the training data, in the model's own feature
space:

- the space: for a network the inputs of its output layer (the patch embedding it classifies
  from; every branch's for decision fusion), for a per-patch forest its features weighted by
  the forest's importances (their recipe); standardised on the training patches. A feature
  that never varied in training (a unit no training patch activates) gets the median scale of
  the others, so novelty along it still counts; features the forest never uses have weight 0.
  Features wider than :data:`MAX_FULL_FEATURES` (a forest on flattened pixels) are reduced to
  :data:`COMPONENTS` principal components plus the norm of the rest;
- the dissimilarity index (DI) of a patch: the distance to the nearest training patch divided
  by the mean distance between training patches;
- the threshold: the DI of each training patch to the nearest training patch of *another
  cross-validation fold* (a study's fold models: the folds of ``folds.json``; a single run: its
  groups, the units its splits keep apart), of those the largest within the upper whisker of a
  box plot (Tukey's hinges + 1.5 IQR, as R's ``boxplot.stats`` that CAST uses).

A map pixel is inside the AOA when its DI does not exceed the threshold. The map stores
``DI / threshold`` (``dissimilarity``: above 1 = outside); an ensemble averages its members'
ratios, each member measured against its own training data. The reference is at most
:data:`MAX_REFERENCE` training patches (a seeded sample, read and embedded a batch at a time),
so memory stays bounded. With ``--tta`` the features are those of the patch as it is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geofuse.data.label_fraction import kept_training
from geofuse.errors import ConfigError, DataNotFoundError

MAX_REFERENCE = 5000  #: training patches a member's AOA is measured against
MAX_FULL_FEATURES = 4096  #: wider feature spaces are reduced (principal components + rest)
COMPONENTS = 64  #: principal components kept of a wider space
SEED = 20210601  #: sample of the training patches
BATCH = 256
PAIR_CHUNK = 512  #: reference rows per distance block


@dataclass
class AoaReference:
    """A member's training patches in its feature space (plain data, picklable).

    Attributes:
        mean, scale: standardisation of the raw features (and, for forests, their weights).
        components: (D, k) principal components of a reduced space, or None (full space).
        points: (n, k) the reference patches in the space (with the rest's norm if reduced).
        mean_distance: mean distance between two reference patches.
        threshold: largest non-outlying DI of a reference patch to another fold's.
        training_di: quantiles (0, 25, 50, 75, 100 %) of the reference patches' DI.
        exclusion: what the threshold's DI left out (``fold`` or ``group``).
    """

    mean: np.ndarray
    scale: np.ndarray
    components: np.ndarray | None
    points: np.ndarray
    mean_distance: float
    threshold: float
    training_di: list[float]
    exclusion: str = "fold"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AoaReference:
        return cls(**d)

    def embed(self, features: np.ndarray) -> np.ndarray:
        """Raw features (N, D) -> coordinates in the reference's space."""
        z = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        return _reduce(z, self.components).astype(np.float32)

    def dissimilarity(self, features: np.ndarray) -> np.ndarray:
        """``DI / threshold`` of patches with raw features (N, D): above 1 = outside."""
        nearest = _nearest(self.embed(features), self.points)
        return (nearest / self.mean_distance / self.threshold).astype(np.float32)

    def summary(self) -> dict[str, Any]:
        """What ``predict.json`` records of the reference."""
        return {"reference_patches": len(self.points), "features": len(self.mean),
                "components": None if self.components is None else self.components.shape[1],
                "mean_distance": self.mean_distance, "threshold_di": self.threshold,
                "training_di_quantiles": self.training_di, "exclusion": self.exclusion}


def _reduce(z: np.ndarray, components: np.ndarray | None) -> np.ndarray:
    """Coordinates on ``components`` plus the norm of the rest (``z`` itself without)."""
    if components is None:
        return z
    proj = z @ components
    rest = np.sqrt(np.clip((z ** 2).sum(axis=1) - (proj ** 2).sum(axis=1), 0.0, None))
    return np.concatenate([proj, rest[:, None]], axis=1)


def _nearest(query: np.ndarray, points: np.ndarray,
             exclude: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Distance from each query row to its nearest row of ``points``; with ``exclude`` =
    (query units, point units), points of the query's own unit are skipped."""
    p = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
    out = np.empty(len(query), dtype=np.float64)
    for s in range(0, len(query), PAIR_CHUNK):
        q = torch.from_numpy(np.ascontiguousarray(query[s:s + PAIR_CHUNK], dtype=np.float32))
        d = torch.cdist(q, p)
        if exclude is not None:
            same = exclude[0][s:s + PAIR_CHUNK, None] == exclude[1][None, :]
            d = d.masked_fill(torch.from_numpy(same), float("inf"))
        out[s:s + PAIR_CHUNK] = d.min(dim=1).values.double().numpy()
    return out


def _mean_distance(points: np.ndarray) -> float:
    """Mean Euclidean distance between two different rows of ``points``."""
    p = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
    total, n = 0.0, len(points)
    for s in range(0, n, PAIR_CHUNK):
        total += float(torch.cdist(p[s:s + PAIR_CHUNK], p).double().sum())
    return total / (n * (n - 1))


def fivenum(values: np.ndarray) -> np.ndarray:
    """Tukey's five numbers (minimum, lower hinge, median, upper hinge, maximum), as R's
    ``fivenum``."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = len(x)
    n4 = math.floor((n + 3) / 2) / 2
    d = np.array([1, n4, (n + 1) / 2, n + 1 - n4, n]) - 1
    return 0.5 * (x[np.floor(d).astype(int)] + x[np.ceil(d).astype(int)])


def upper_whisker(values: np.ndarray) -> float:
    """The largest value within the hinge + 1.5 x the hinge spread (R's ``boxplot.stats``
    ``stats[5]``, CAST's AOA threshold)."""
    v = np.asarray(values, dtype=np.float64)
    _, lower, _, upper, _ = fivenum(v)
    return float(v[v <= upper + 1.5 * (upper - lower)].max())


def build_reference(features: np.ndarray, units: np.ndarray,
                    weights: np.ndarray | None = None, what: str = "the model",
                    exclusion: str = "fold") -> AoaReference:
    """The AOA reference of training patches with raw features (N, D) and units (N,): the
    cross-validation folds (or groups) whose patches the threshold's DI leaves out.

    Args:
        features: the patches in the model's feature space.
        units: each patch's fold (or group).
        weights: per-feature weights applied after standardising (a forest's importances).
        what: names the run in messages.
        exclusion: what ``units`` are (recorded).

    Raises:
        ConfigError: fewer than two units, or features that do not separate the patches.
    """
    x = np.asarray(features, dtype=np.float64)
    codes = np.unique(np.asarray(units).astype(str), return_inverse=True)[1]
    if codes.max(initial=0) < 1:
        raise ConfigError(f"{what}: the area of applicability needs training patches from at "
                          f"least 2 {exclusion}s; map without --aoa")
    mean, std = x.mean(axis=0), x.std(axis=0)
    w = np.ones(x.shape[1]) if weights is None else np.asarray(weights, dtype=np.float64)
    varied = std > 1e-12
    floor = float(np.median(std[varied])) if varied.any() else 1.0
    std = np.where(varied, std, floor)  # a feature constant in training still measures novelty
    scale = np.where(w > 0, std / np.where(w > 0, w, 1.0), np.inf)  # z = (x - mean) * w / std
    z = (x - mean) / scale
    components = None
    if z.shape[1] > MAX_FULL_FEATURES:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=min(COMPONENTS, len(z) - 1), random_state=SEED).fit(z)
        components = pca.components_.T
    points = _reduce(z, components).astype(np.float32)
    mean_distance = _mean_distance(points)
    di = _nearest(points, points, exclude=(codes, codes)) / max(mean_distance, 1e-300)
    threshold = upper_whisker(di)
    if mean_distance <= 0 or threshold <= 0:
        raise ConfigError(f"{what}: its training patches of different {exclusion}s share the "
                          "same features (a collapsed model?), so no area of applicability can "
                          "be measured; map without --aoa")
    return AoaReference(mean, scale, components, points, mean_distance, threshold,
                        np.percentile(di, [0, 25, 50, 75, 100]).tolist(), exclusion)


# -- a member's training patches --------------------------------------------------------------
def patches_file(run_dir: str | Path) -> Path:
    """The PatchSet a run trained on.

    Raises:
        DataNotFoundError: it is gone.
    """
    info = json.loads((Path(run_dir) / "run.json").read_text())
    path = Path(info.get("patches_path") or "")
    if not path.is_file():
        raise DataNotFoundError(
            f"--aoa needs the training patches of run {str(run_dir)!r}, but its PatchSet "
            f"{str(path)!r} is gone; restore it (or re-run 'geofuse extract') or map without "
            "--aoa")
    return path


@dataclass(frozen=True)
class TrainingSample:
    """Where a member's reference patches are: file, rows, band positions, units."""

    path: Path
    rows: np.ndarray
    bands: list[int]
    units: np.ndarray
    exclusion: str


def training_sample(run_dir: str | Path, bands: list[str], limit: int = MAX_REFERENCE
                    ) -> TrainingSample:
    """A seeded sample of at most ``limit`` training patches of a run and their units (the
    fold of each patch's group for a study's fold model, else the group), reading only the
    PatchSet's labels.

    Raises:
        DataNotFoundError: the PatchSet is gone or unreadable; ConfigError: it lacks a band of
            the run, or has no training patch.
    """
    import h5py

    path = patches_file(run_dir)
    fraction, seed = _label_share(Path(run_dir))
    try:
        with h5py.File(path, "r") as f:
            names = json.loads(f.attrs["band_names"])
            groups = np.char.decode(f["groups"][()], "utf-8")
            train = kept_training(f["split"][()], groups, f["y"][()], fraction, seed)
    except (OSError, KeyError) as err:
        raise DataNotFoundError(f"--aoa: cannot read the PatchSet {str(path)!r} of run "
                                f"{str(run_dir)!r} ({err}); re-run 'geofuse extract' or map "
                                "without --aoa") from None
    missing = [b for b in bands if b not in names]
    if missing or not len(train):
        raise ConfigError(
            f"--aoa: the PatchSet {str(path)!r} of run {str(run_dir)!r} "
            + (f"lacks its bands {missing}" if missing else "holds no training patch")
            + "; map with the PatchSet the run trained on, or without --aoa")
    if len(train) > limit:
        train = np.sort(np.random.default_rng(SEED).choice(train, limit, replace=False))
    units, exclusion = _units(Path(run_dir), groups[train])
    where = {b: i for i, b in enumerate(names)}
    return TrainingSample(path, train, [where[b] for b in bands], units, exclusion)


def _label_share(run_dir: Path) -> tuple[float, int]:
    """The run's ``train.label_fraction`` and seed (its training patches are that share)."""
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    return float((cfg.get("train") or {}).get("label_fraction", 1.0)), int(cfg.get("seed", 0))


def _units(run_dir: Path, groups: np.ndarray) -> tuple[np.ndarray, str]:
    """The cross-validation fold of each group for a study's fold model (``folds.json`` of
    the study the run lies in), else the groups themselves."""
    folds_json = run_dir.parent.parent / "folds.json"
    if run_dir.parent.name == "runs" and folds_json.is_file():
        fold_of = json.loads(folds_json.read_text()).get("groups") or {}
        if all(g in fold_of for g in groups):
            return np.array([str(fold_of[g]) for g in groups]), "fold"
    return groups.astype(str), "group"


def sample_batches(sample: TrainingSample) -> Iterator[np.ndarray]:
    """The sample's patches (B, C, P, P) in the run's bands, a batch at a time."""
    import h5py

    with h5py.File(sample.path, "r") as f:
        for s in range(0, len(sample.rows), BATCH):
            yield f["x"][sample.rows[s:s + BATCH]][:, sample.bands].astype(np.float32)
