"""Small in-memory study objects shared by the training, guard and report tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from geofuse.config import StudyConfig, parse_config
from geofuse.data.patchset import PatchSet, primary_labels

CLASSES = ["forest", "water", "urban", "crop"]
S2 = ["s2_b", "s2_g", "s2_r", "s2_nir"]
DEM = ["dem_elev", "dem_slope"]


def make_patchset(n: int = 200, patch_size: int = 8, seed: int = 0) -> PatchSet:
    """Learnable PatchSet: class-dependent band means + noise; 70/20/10 split, NaN sprinkled."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(CLASSES)
    means = rng.normal(0, 1.0, (len(CLASSES), len(S2) + len(DEM)))
    x = means[y][:, :, None, None] + rng.normal(0, 0.6, (n, len(S2) + len(DEM), patch_size,
                                                           patch_size))
    x = x * 800 + 1500  # physical-looking scale: normalisation must matter
    x[rng.random(x.shape) < 0.01] = np.nan
    split = np.zeros(n, dtype=np.uint8)
    split[(np.arange(n) // len(CLASSES)) % 10 >= 7] = 1
    split[(np.arange(n) // len(CLASSES)) % 10 == 9] = 2
    return PatchSet(x=x, y=y, band_names=S2 + DEM, modalities={"s2": S2, "dem": DEM},
                    class_names=CLASSES, groups=[f"polygon:{i}" for i in range(n)],
                    coords=np.zeros((n, 2)), split=split)


def ready_config_copy(config: Path, tmp_path: Path, root: Path, **dataset: Any) -> Path:
    """A copy of a ready config (``configs/*.yaml``) in ``tmp_path`` reading ``root``, with its
    workdir under ``tmp_path`` and ``dataset`` keys changed; returns the new file."""
    data = yaml.safe_load(config.read_text())
    data["workdir"] = str(tmp_path / "work")
    data["dataset"].update(root=str(root), **dataset)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def make_config(root: Path, **train: Any) -> StudyConfig:
    """Study config rooted at ``root`` (workdir ``root/work``), small fast training."""
    data = {
        "name": "toy", "workdir": "work", "seed": 7,
        "modalities": [{"name": "s2", "files": ["s2.tif"], "bands": S2},
                       {"name": "dem", "files": ["dem.tif"], "bands": DEM}],
        "train": {"epochs": 8, "batch_size": 32, "early_stopping_patience": 20, **train},
    }
    return parse_config(data, root)


def make_multilabel_patchset(n: int = 160, patch_size: int = 8, seed: int = 0) -> PatchSet:
    """Learnable multi-label PatchSet: each present class adds its signature to the band means
    (1-3 labels per patch); 70/20/10 split."""
    rng = np.random.default_rng(seed)
    k = len(CLASSES)
    multi_hot = (rng.random((n, k)) < 0.4).astype(np.uint8)
    multi_hot[multi_hot.sum(axis=1) == 0, rng.integers(0, k)] = 1
    signature = rng.normal(0, 1.5, (k, len(S2) + len(DEM)))
    means = multi_hot @ signature
    x = means[:, :, None, None] + rng.normal(0, 0.5, (n, len(S2) + len(DEM), patch_size,
                                                      patch_size))
    split = np.zeros(n, dtype=np.uint8)
    split[np.arange(n) % 10 >= 7] = 1
    split[np.arange(n) % 10 == 9] = 2
    return PatchSet(x=x * 800 + 1500, y=primary_labels(multi_hot), band_names=S2 + DEM,
                    modalities={"s2": S2, "dem": DEM}, class_names=CLASSES,
                    groups=[f"tile:{i}" for i in range(n)], coords=rng.random((n, 2)) * 1e4,
                    split=split, multi_hot=multi_hot)


def make_regression_patchset(n: int = 160, patch_size: int = 8, seed: int = 0) -> PatchSet:
    """Learnable regression PatchSet: a skewed, count-like value driven mostly by the DEM band
    (and a little by the first S2 band), strata = value quartiles; 70/20/10 split."""
    rng = np.random.default_rng(seed)
    drivers = rng.normal(0, 1, (n, 2))
    values = np.expm1(4 + 1.2 * drivers[:, 0] + 0.3 * drivers[:, 1])  # 0 .. thousands
    x = rng.normal(0, 0.5, (n, len(S2) + len(DEM), patch_size, patch_size))
    x[:, len(S2)] += drivers[:, 0, None, None]  # the DEM band carries the main driver
    x[:, 0] += drivers[:, 1, None, None]
    strata = np.searchsorted(np.quantile(values, [0.25, 0.5, 0.75]), values)
    split = np.zeros(n, dtype=np.uint8)
    split[np.arange(n) % 10 >= 7] = 1
    split[np.arange(n) % 10 == 9] = 2
    return PatchSet(x=x * 800 + 1500, y=strata, band_names=S2 + DEM,
                    modalities={"s2": S2, "dem": DEM}, class_names=["q1", "q2", "q3", "q4"],
                    groups=[f"polygon:{i}" for i in range(n)], coords=rng.random((n, 2)) * 1e4,
                    split=split, values=values, value_name="people")
