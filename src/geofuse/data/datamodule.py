"""Torch dataset and Lightning data module over a :class:`PatchSet` with assigned splits."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from geofuse.config import TrainConfig
from geofuse.data.normalize import BandStats, compute_band_stats
from geofuse.data.patchset import SPLIT_CODES, PatchSet
from geofuse.data.transforms import Compose, Normalize, RandomFlipRotate, Sample, Transform
from geofuse.errors import SplitError

REQUIRED_SPLITS = ("train", "val")


def select_inputs(patches: PatchSet, train: TrainConfig) -> PatchSet:
    """The bands a run uses: ``train.bands`` if set, else ``train.modalities``, else all.

    Raises:
        BandError: an unknown band or modality is named.
    """
    if train.bands:
        return patches.select_bands(list(train.bands))
    if train.modalities:
        return patches.select_bands(patches.modality_bands(list(train.modalities)))
    return patches


def check_splits(patches: PatchSet, source: str | Path = "PatchSet") -> None:
    """Require non-empty train and val splits that each hold every class.

    Raises:
        SplitError: naming the empty split or the missing class, and the fix.
    """
    for split in REQUIRED_SPLITS:
        counts = patches.class_counts(split)
        if sum(counts.values()) == 0:
            raise SplitError(
                f"{source}: the {split} split is empty; re-run 'geofuse extract' to assign "
                "splits (check splits.val_fraction)"
            )
        missing = [c for c, n in counts.items() if n == 0]
        if missing:
            raise SplitError(
                f"{source}: class(es) {missing} have no patches in the {split} split; add "
                "labelled polygons for them or drop them from labels.classes, then re-run "
                "'geofuse extract'"
            )


def split_counts(patches: PatchSet) -> dict[str, dict[str, int]]:
    """Class counts of every split, e.g. ``{"train": {"forest": 80, ...}, ...}``."""
    return {split: patches.class_counts(split) for split in SPLIT_CODES}


class PatchDataset(Dataset[Sample]):
    """Samples ``{"image": (C, P, P) float tensor, "label": int, "index": int}``.

    Args:
        patches: the PatchSet (already restricted to the run's bands).
        indices: which patches this dataset serves; ``index`` is the PatchSet row.
        transform: applied to every sample dict (normalisation, augmentation).
    """

    def __init__(
        self, patches: PatchSet, indices: np.ndarray, transform: Transform | None = None
    ) -> None:
        self.patches = patches
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Sample:
        row = int(self.indices[i])
        sample: Sample = {
            "image": torch.from_numpy(self.patches.x[row].copy()),
            "label": int(self.patches.y[row]),
            "index": row,
        }
        return self.transform(sample) if self.transform else sample


class PatchDataModule(L.LightningDataModule):
    """Train/val/test loaders with training-only normalisation statistics.

    Args:
        patches: PatchSet restricted to the run's bands, splits assigned.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        augment: random flips and 90-degree rotations on the training split.
        stats: normalisation statistics; computed from the train split when None.
        seed: seed of the training shuffle order.
    """

    def __init__(
        self,
        patches: PatchSet,
        batch_size: int = 32,
        num_workers: int = 0,
        augment: bool = True,
        stats: BandStats | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.patches = patches
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augment = augment
        self.seed = seed
        self.stats = stats or compute_band_stats(
            patches.x[patches.split_indices("train")], patches.band_names
        )
        if list(self.stats.bands) != list(patches.band_names):
            raise ValueError(f"statistics for {self.stats.bands}, data has {patches.band_names}")

    def dataset(self, split: str) -> PatchDataset:
        """Dataset of one split; only ``train`` is augmented."""
        steps: list[Transform] = [Normalize(self.stats)]
        if split == "train" and self.augment:
            steps.append(RandomFlipRotate())
        return PatchDataset(self.patches, self.patches.split_indices(split), Compose(steps))

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader[Sample]:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            self.dataset(split), batch_size=self.batch_size, shuffle=shuffle,
            num_workers=self.num_workers, generator=generator,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader[Sample]:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader[Sample]:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader[Sample]:
        return self._loader("test")

    def loader(self, split: str) -> DataLoader[Sample]:
        """Unshuffled, unaugmented loader of any split (for evaluation)."""
        return self._loader(split)
