"""``geofuse extract`` with ``labels.value_raster`` and ``extract.target: mask``: dense regression.

The stack is cut into tiles as for segmentation (:mod:`geofuse.data.extract_masks`); each
tile keeps the value raster under it, resampled onto the stack grid, as a float32 value per
pixel (NaN = unlabelled, also where any stack band is nodata). Tiles are grouped by spatial
blocks of whole tiles and stratified by quantile ranges of their mean value, so splits and
folds cover the whole range of the quantity.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.crs import CRS

from geofuse.config import StudyConfig
from geofuse.data.extract import (
    _apply_nodata,
    _base_provenance,
    _check_stack,
    _labels_config,
    finish_patchset,
)
from geofuse.data.extract_masks import tile_block_size
from geofuse.data.patchset import PatchSet
from geofuse.data.stack_reader import StackPatchReader
from geofuse.errors import SamplingError
from geofuse.labels.raster_labels import DEFAULT_PER_CLASS, block_groups
from geofuse.labels.value_tiles import (
    ValueTileSampling,
    sample_value_tiles,
    span_strata,
    value_name_of,
    value_raster_reader,
)
from geofuse.raster.io import Grid
from geofuse.raster.manifest import StackManifest


def _strata(cfg: StudyConfig, means: np.ndarray, strata: np.ndarray, groups: np.ndarray,
            source: str) -> tuple[np.ndarray, list[str]]:
    """Value-range strata spanning the study's folds when the blocks allow it, else the
    splits; warns when ranges were merged."""
    splits = 3 if cfg.splits.test_fraction > 0 else 2
    n_blocks = len(set(groups.tolist()))
    if n_blocks < splits:
        raise SamplingError(
            f"labels {source!r}: the kept tiles lie in {n_blocks} spatial block(s), too few "
            f"for {splits} splits; lower extract.block_size or label a larger area"
        )
    for need in (max(splits, cfg.ablation.folds), splits):
        y, names, merged = span_strata(strata, groups, means, need)
        spans = [len(set(groups[y == k].tolist())) for k in range(len(names))]
        if min(spans) >= need:
            break
    if merged:
        warnings.warn(
            f"labels {source!r}: {merged} value range(s) of labels.value_strata lay in fewer "
            f"than {need} spatial blocks and were merged with a neighbouring range; strata "
            f"now {names}", UserWarning, stacklevel=3)
    return y, names


def extract_value_tiles(
    cfg: StudyConfig, manifest: StackManifest, progress: bool = True
) -> PatchSet:
    """Cut tiles with per-pixel values from the stack and ``labels.value_raster``, and write
    the PatchSet.

    Raises:
        DataNotFoundError: the stack, its manifest or the value raster is missing.
        RasterError: the stack does not match its manifest; the raster has no CRS or does not
            overlap the stack.
        SamplingError: no tile with enough labelled pixels; constant values; too few blocks.
        SplitError: the blocks cannot be split with every stratum in every split.
    """
    ex, lab = cfg.extract, _labels_config(cfg)
    source = str(cfg.resolve(lab.value_raster or ""))
    limit = ex.memory_limit_mb * 2**20
    with StackPatchReader(cfg.stack_path, max_memory_bytes=limit) as reader:
        _check_stack(reader, manifest, cfg.stack_path)
        grid = Grid(CRS.from_user_input(reader.crs), reader.transform, reader.width,
                    reader.height)
        read = value_raster_reader(Path(source), grid, lab.value_resampling, lab.value_nodata)
        opts = ValueTileSampling(ex.patch_size, ex.per_class or DEFAULT_PER_CLASS,
                                 ex.min_labelled, lab.value_strata, cfg.seed)
        tiles = sample_value_tiles(read, grid, opts, source)
        half = ex.patch_size // 2
        x = reader.read_patches(tiles.rows + half, tiles.cols + half, ex.patch_size, progress)
        coords = reader.pixel_centre_coords(tiles.rows + half, tiles.cols + half)
    keep, frac, nodata = _apply_nodata(cfg, Path(source), x, None, None, manifest)
    values = tiles.values.copy()
    values[np.isnan(x).any(axis=1)] = np.nan
    labelled = np.isfinite(values).mean(axis=(1, 2))
    keep &= labelled >= max(ex.min_labelled, 1e-9)
    if not keep.any():
        raise SamplingError(
            f"labels {source!r}: no tile keeps extract.min_labelled={ex.min_labelled} of its "
            "pixels with a value where the stack has data; check the stack's QC report "
            f"({cfg.stack_path.name}), that the values cover its data, or lower min_labelled"
        )
    groups = block_groups(tiles.rows, tiles.cols, tile_block_size(ex.block_size, ex.patch_size))
    values, groups = values[keep], groups[keep]
    means = np.nanmean(values.reshape(len(values), -1), axis=1)
    y, strata = _strata(cfg, means, tiles.strata[keep], groups, source)
    qc: dict[str, Any] = {"status": "passed", "warnings": [],
                          "label_fit": {"status": "passed", "warnings": [], "classes": {}},
                          "nodata": nodata}
    provenance = {
        **_base_provenance(cfg),
        "labels_value_raster": source,
        "target": "values",
        "value_resampling": lab.value_resampling,
        "patch_size": ex.patch_size,
        "centre_convention": "tiles of a regular grid from the stack's top-left corner; window "
                             "rows/cols start at centre - patch_size // 2; coords are the map "
                             "x, y of the centre pixel's centre; y = the tile's value range "
                             "(quantile stratum of its mean value)",
        "sampling": {"per_stratum": opts.per_stratum,
                     "block_size": tile_block_size(ex.block_size, ex.patch_size),
                     **tiles.report},
        "seed": cfg.seed,
        "nodata": nodata,
    }
    return finish_patchset(
        cfg, manifest, x[keep], y, groups, coords[keep], frac[keep], strata,
        provenance, qc, values=values,
        value_name=lab.value_name or value_name_of(lab.value_raster or ""),
    )
