"""``geofuse extract`` for a config with a ``dataset`` section: read it, split it, save it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from geofuse._config_base import ModalityConfig
from geofuse.config import StudyConfig
from geofuse.config_dataset import DatasetConfig
from geofuse.data.datasets.so2sat_lcz import load_so2sat_lcz
from geofuse.data.datasets.so2sat_pop import load_so2sat_pop
from geofuse.data.external_test import with_external_test
from geofuse.data.indices import add_index_modalities
from geofuse.data.patchset import PatchSet
from geofuse.data.splits import assign_splits, split_summary
from geofuse.errors import ConfigError

#: A dataset reader: (dataset section, resolved root, study config, external test?) -> PatchSet.
Reader = Callable[[DatasetConfig, Path, StudyConfig, bool], PatchSet]
#: The modalities a dataset supplies (names, bands after ``dataset.bands``, files, scale).
Modalities = Callable[[DatasetConfig], list[ModalityConfig]]


def _read_so2sat_lcz(d: DatasetConfig, city: Path, cfg: StudyConfig, external: bool
                     ) -> PatchSet:
    if d.target == "mask":
        from geofuse.data.datasets.so2sat_lcz_masks import load_so2sat_lcz_masks

        return load_so2sat_lcz_masks(
            city, d.seasons, d.layers, cfg.extract.patch_size, d.stride,
            cfg.extract.max_nodata_fraction, 1 if external else d.min_cells_per_class,
            cfg.extract.min_labelled)
    return load_so2sat_lcz(
        city, d.seasons, d.layers, cfg.extract.patch_size, d.stride,
        cfg.extract.max_nodata_fraction, 1 if external else d.min_cells_per_class,
    )


def _read_so2sat_pop(d: DatasetConfig, city: Path, cfg: StudyConfig, external: bool
                     ) -> PatchSet:
    bins = {k: tuple(v) for k, v in d.class_bins.items()} if d.class_bins else None
    return load_so2sat_pop(city, d.seasons, d.layers, cfg.extract.patch_size, d.target, bins)


def _readers() -> dict[str, tuple[Reader, Modalities | None]]:
    """Dataset name -> (reader, modalities); imported lazily (each reader is its own module).
    The city datasets' modalities come from :meth:`DatasetConfig.modality_configs` itself."""
    from geofuse.data.datasets import (
        bigearthnet_mm,
        eopatch,
        eurosat_ms,
        land_take,
        so2sat_lcz42,
        temporal_tiles,
    )

    return {"so2sat_lcz": (_read_so2sat_lcz, None), "so2sat_pop": (_read_so2sat_pop, None),
            "eurosat_ms": (eurosat_ms.read_eurosat_ms, eurosat_ms.dataset_modalities),
            "so2sat_lcz42": (so2sat_lcz42.read_so2sat_lcz42, so2sat_lcz42.dataset_modalities),
            "bigearthnet_mm": (bigearthnet_mm.read_bigearthnet_mm,
                               bigearthnet_mm.dataset_modalities),
            "land_take_synthetic": (land_take.read_land_take, land_take.dataset_modalities),
            "eopatch": (eopatch.read_eopatch, eopatch.dataset_modalities),
            "temporal_tiles": (temporal_tiles.read_temporal_tiles,
                               temporal_tiles.dataset_modalities)}


def dataset_modalities(d: DatasetConfig) -> list[ModalityConfig]:
    """The modalities of a non-city dataset (see :data:`Modalities`)."""
    modalities = _readers()[d.name][1]
    if modalities is None:
        raise ConfigError(f"dataset {d.name!r} has no modality catalogue")
    return modalities(d)


def _read(d: DatasetConfig, root: Path, cfg: StudyConfig, external: bool) -> PatchSet:
    return _readers()[d.name][0](d, root, cfg, external)


def build_dataset_patches(cfg: StudyConfig) -> PatchSet:
    """Read ``cfg.dataset`` (and its test city), assign grouped splits, write the PatchSet.

    The training city is split into train/val(/test) by ``cfg.splits``, grouped by cell and
    stratified by class; a ``test_city_dir`` becomes the test split instead.

    Raises:
        ConfigError: no dataset section, or a test city together with splits.test_fraction.
        GeofuseError: the readers' errors (missing folders, no patches, ...).
    """
    d = cfg.dataset
    if d is None:
        raise ConfigError("build_dataset_patches needs a 'dataset' section in the config")
    test_key = "test_city_dir" if d.test_city_dir else "test_root"
    if d.test_source and cfg.splits.test_fraction > 0:
        raise ConfigError(
            f"splits.test_fraction = {cfg.splits.test_fraction} with dataset.{test_key} "
            f"{d.test_source!r}: that is the test set; set splits.test_fraction to 0"
        )
    patches = _read(d, cfg.resolve(d.source), cfg, external=False)
    split = assign_splits(patches.targets(), patches.groups, cfg.splits.val_fraction,
                          cfg.splits.test_fraction, cfg.seed, list(patches.class_names))
    provenance = {**patches.provenance, "config": str(cfg.source) if cfg.source else None,
                  "splits": {"val_fraction": cfg.splits.val_fraction,
                             "test_fraction": cfg.splits.test_fraction, "seed": cfg.seed,
                             "summary": split_summary(patches.targets(), patches.groups, split,
                                                      list(patches.class_names))}}
    patches = dataclasses.replace(patches, split=split, provenance=provenance)
    if d.test_source:
        test_root = cfg.resolve(d.test_source)
        test = _read(d, test_root, cfg, external=True)
        patches = with_external_test(patches, test, name=test_root.name)
    # on the merged set: one dB-or-linear decision for the training and the external test set
    patches = add_index_modalities(patches, cfg.index_requests(), cfg.index_sensors())
    patches.save(cfg.patches_path)
    return patches
