"""Torch dataset and Lightning data module over a :class:`PatchSet` with assigned splits."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from geofuse.config import TrainConfig
from geofuse.data.normalize import (
    BandStats,
    TabularStats,
    compute_band_stats,
    compute_tabular_stats,
    normalize_tabular,
)
from geofuse.data.patchset import SPLIT_CODES, PatchSet
from geofuse.data.transforms import (
    Compose,
    Normalize,
    PerPatchStandardize,
    RandomBandJitter,
    RandomFlipRotate,
    RandomResizedCrop,
    Sample,
    Transform,
)
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

    A multi-label set only needs non-empty splits: rare labels of small sets are often absent
    from a split, and the metrics average over the classes present; a class that occurs in
    the set but not in its train split gets a warning (the model cannot learn it).

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
        if patches.regression:  # strata of continuous targets: any spread of values trains
            continue
        if patches.multilabel:
            _warn_untrained(patches, missing, split, source)
            continue
        if missing:
            raise SplitError(
                f"{source}: class(es) {missing} have no patches in the {split} split; add "
                "labelled polygons for them or drop them from labels.classes, then re-run "
                "'geofuse extract'"
            )


def _warn_untrained(patches: PatchSet, missing: list[str], split: str,
                    source: str | Path) -> None:
    present = {c for c, n in patches.class_counts().items() if n > 0}
    untrained = [c for c in missing if c in present]
    if split == "train" and untrained:
        warnings.warn(f"{source}: class(es) {untrained} occur in the data but not in the train "
                      "split; the model cannot learn them (add samples holding them)",
                      stacklevel=3)


def split_counts(patches: PatchSet) -> dict[str, dict[str, int]]:
    """Class counts of every split, e.g. ``{"train": {"forest": 80, ...}, ...}``."""
    return {split: patches.class_counts(split) for split in SPLIT_CODES}


def train_tabular_stats(patches: PatchSet) -> TabularStats | None:
    """Train-split statistics of the PatchSet's tabular attributes (None: it has none)."""
    if patches.tabular is None:
        return None
    return compute_tabular_stats(patches.tabular[patches.split_indices("train")],
                                 list(patches.tabular_names))


def normalized_tabular(
    patches: PatchSet, stats: TabularStats | None = None
) -> np.ndarray | None:
    """The PatchSet's tabular attributes standardised (NaN -> 0), as float32.

    ``None`` when the set has no tabular attributes. ``stats`` are those saved with a run
    (``tabular_normalization.json``); by default they are computed from the train split
    (:func:`train_tabular_stats`: constant or all-missing columns get std 1, and mean 0 when no
    train value is known).

    Raises:
        ValueError: ``stats`` are for other columns than the PatchSet's.
    """
    if patches.tabular is None:
        return None
    if stats is None:
        stats = compute_tabular_stats(patches.tabular[patches.split_indices("train")],
                                      list(patches.tabular_names))
    if list(stats.columns) != list(patches.tabular_names):
        raise ValueError(f"tabular statistics for {stats.columns}, data has "
                         f"{patches.tabular_names}")
    return normalize_tabular(patches.tabular, stats)


class PatchDataset(Dataset[Sample]):
    """Samples ``{"image": (C, P, P) float tensor, "label": int, "index": int}``; the label
    of a multi-label PatchSet is its (K,) float32 multi-hot label set, of a regression set its
    value (float).

    With ``tabular``, samples also hold ``"tab"``: the row's (F,) float32 attributes.

    Args:
        patches: the PatchSet (already restricted to the run's bands).
        indices: which patches this dataset serves; ``index`` is the PatchSet row.
        transform: applied to every sample dict (normalisation, augmentation).
        tabular: (N, F) attributes aligned with ``patches`` (already normalised), or None.
    """

    def __init__(
        self, patches: PatchSet, indices: np.ndarray, transform: Transform | None = None,
        tabular: np.ndarray | None = None,
    ) -> None:
        self.patches = patches
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform
        self.tabular = tabular

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Sample:
        row = int(self.indices[i])
        multi_hot, values = self.patches.multi_hot, self.patches.values
        label: Any = (torch.from_numpy(multi_hot[row].astype(np.float32)) if multi_hot is not None
                      else int(self.patches.y[row]) if values is None
                      else torch.from_numpy(values[row].copy()) if values.ndim == 3
                      else float(values[row]))  # dense: (P, P), flipped with the image
        sample: Sample = {
            "image": torch.from_numpy(self.patches.x[row].copy()),
            "label": label,
            "index": row,
        }
        if self.tabular is not None:
            sample["tab"] = torch.from_numpy(self.tabular[row].copy())
        if self.patches.masks is not None:  # int64 class per pixel, 255 = unlabelled
            sample["mask"] = torch.from_numpy(self.patches.masks[row].astype(np.int64))
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
        tabular_stats: statistics of the tabular attributes (when the PatchSet has them);
            computed from the train split when None.
        jitter: std of the per-band gain/offset jitter on the training split (0 = none;
            :class:`~geofuse.data.transforms.RandomBandJitter`).
        split_stats: statistics for particular splits instead of ``stats``, e.g. the test
            area's own (``train.normalization: test_area``).
        per_patch: standardise every patch by its own band mean/std after the statistics
            (``train.normalization: per_patch``), in every split.
        crop: smallest area share of the random resized crop of the training patches
            (1 = none; :class:`~geofuse.data.transforms.RandomResizedCrop`).
    """

    def __init__(
        self,
        patches: PatchSet,
        batch_size: int = 32,
        num_workers: int = 0,
        augment: bool = True,
        stats: BandStats | None = None,
        seed: int = 0,
        tabular_stats: TabularStats | None = None,
        jitter: float = 0.0,
        split_stats: dict[str, BandStats] | None = None,
        per_patch: bool = False,
        crop: float = 1.0,
    ) -> None:
        super().__init__()
        self.crop = crop
        self.per_patch = per_patch
        self.jitter = jitter
        self.split_stats = dict(split_stats or {})
        self.patches = patches
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augment = augment
        self.seed = seed
        self.stats = stats or compute_band_stats(
            patches.x[patches.split_indices("train")], patches.band_names, patches.time_steps
        )
        if list(self.stats.bands) != list(patches.band_names):
            raise ValueError(f"statistics for {self.stats.bands}, data has {patches.band_names}")
        self.tabular_stats = tabular_stats or train_tabular_stats(patches)
        self.tabular = normalized_tabular(patches, self.tabular_stats)

    def dataset(self, split: str) -> PatchDataset:
        """Dataset of one split; only ``train`` is augmented."""
        steps: list[Transform] = [Normalize(self.split_stats.get(split, self.stats))]
        if self.per_patch:
            steps.append(PerPatchStandardize())
        if split == "train" and self.crop < 1:
            steps.append(RandomResizedCrop(self.crop))
        if split == "train" and self.augment:
            steps.append(RandomFlipRotate())
        if split == "train" and self.jitter > 0:
            steps.append(RandomBandJitter(self.jitter))
        return PatchDataset(self.patches, self.patches.split_indices(split), Compose(steps),
                            tabular=self.tabular)

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader[Sample]:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        dataset = self.dataset(split)
        trainer = self._trainer_if_attached()
        world = trainer.world_size if trainer is not None else 1
        sampler = None
        if world > 1 and not shuffle:  # every patch once: no padding that counts some twice
            sampler = UnrepeatedDistributedSampler(dataset, num_replicas=world,
                                                   rank=trainer.global_rank, shuffle=False)
        # A last training batch of one sample breaks batch-norm statistics: drop only that
        # one (with several devices: of each device's share, padded to equal sizes)
        share = -(-len(dataset) // world)
        drop_last = shuffle and share % self.batch_size == 1 and share > 1
        return DataLoader(
            dataset, batch_size=self.batch_size, shuffle=shuffle, drop_last=drop_last,
            num_workers=self.num_workers, generator=generator, sampler=sampler,
            persistent_workers=self.num_workers > 0,
        )

    def _trainer_if_attached(self) -> L.Trainer | None:
        """The trainer while one fits this data module (None for evaluation loaders)."""
        return getattr(self, "trainer", None)

    def train_dataloader(self) -> DataLoader[Sample]:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader[Sample]:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader[Sample]:
        return self._loader("test")

    def loader(self, split: str) -> DataLoader[Sample]:
        """Unshuffled, unaugmented loader of any split (for evaluation)."""
        return self._loader(split)

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        """The batch itself when all its values are tensors on ``device`` already (CPU
        training); otherwise Lightning's move. Lightning's generic move walks the batch and
        rebuilds it, ~50 us a step, to return equal tensors."""
        if isinstance(batch, dict) and all(
            isinstance(v, torch.Tensor) and v.device == device for v in batch.values()
        ):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)
