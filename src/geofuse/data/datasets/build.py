"""``geofuse extract`` for a config with a ``dataset`` section: read it, split it, save it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from geofuse.config import StudyConfig
from geofuse.config_dataset import DatasetConfig
from geofuse.data.datasets.so2sat_lcz import load_so2sat_lcz
from geofuse.data.datasets.so2sat_pop import load_so2sat_pop
from geofuse.data.external_test import with_external_test
from geofuse.data.patchset import PatchSet
from geofuse.data.splits import assign_splits, split_summary
from geofuse.errors import ConfigError


def _read(d: DatasetConfig, city: Path, cfg: StudyConfig, external: bool) -> PatchSet:
    if d.name == "so2sat_lcz":
        return load_so2sat_lcz(
            city, d.seasons, d.layers, cfg.extract.patch_size, d.stride,
            cfg.extract.max_nodata_fraction, 1 if external else d.min_cells_per_class,
        )
    bins = {k: tuple(v) for k, v in d.class_bins.items()} if d.class_bins else None
    return load_so2sat_pop(city, d.seasons, d.layers, cfg.extract.patch_size, d.target, bins)


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
    if d.test_city_dir and cfg.splits.test_fraction > 0:
        raise ConfigError(
            f"splits.test_fraction = {cfg.splits.test_fraction} with dataset.test_city_dir "
            f"{d.test_city_dir!r}: the test city is the test set; set splits.test_fraction to 0"
        )
    patches = _read(d, cfg.resolve(d.city_dir), cfg, external=False)
    split = assign_splits(patches.y, patches.groups, cfg.splits.val_fraction,
                          cfg.splits.test_fraction, cfg.seed, list(patches.class_names))
    provenance = {**patches.provenance, "config": str(cfg.source) if cfg.source else None,
                  "splits": {"val_fraction": cfg.splits.val_fraction,
                             "test_fraction": cfg.splits.test_fraction, "seed": cfg.seed,
                             "summary": split_summary(patches.y, patches.groups, split,
                                                      list(patches.class_names))}}
    patches = dataclasses.replace(patches, split=split, provenance=provenance)
    if d.test_city_dir:
        test_city = cfg.resolve(d.test_city_dir)
        test = _read(d, test_city, cfg, external=True)
        patches = with_external_test(patches, test, name=test_city.name)
    patches.save(cfg.patches_path)
    return patches
