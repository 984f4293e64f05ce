"""``geofuse extract`` with ``extract.target: mask``: tiles of the fused stack with pixel masks.

Semantic segmentation on the prepared stack: the label raster (``labels.raster``) or the label
polygons burnt in (``labels.path``) give a class per pixel; tiles come from a regular grid
(:mod:`geofuse.labels.label_tiles`), are grouped by spatial block (blocks are whole tiles, so
no tile straddles two groups and no labelled pixel is in two splits) and split stratified by
their dominant class. Pixels where any stack band is nodata are unlabelled in the mask.
"""

from __future__ import annotations

import math
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
    _scene_bounds,
    finish_patchset,
)
from geofuse.data.patchset import MASK_IGNORE, PatchSet
from geofuse.data.stack_reader import StackPatchReader
from geofuse.errors import LabelError, SamplingError
from geofuse.labels.label_tiles import (
    CodeReader,
    TileSampling,
    compact_mask_classes,
    polygon_code_reader,
    raster_code_reader,
    sample_label_tiles,
    tile_strata,
)
from geofuse.labels.points import is_point_layer
from geofuse.labels.polygons import read_frame, read_label_polygons
from geofuse.labels.raster_labels import DEFAULT_PER_CLASS, block_groups
from geofuse.raster.io import Grid
from geofuse.raster.manifest import StackManifest


def tile_block_size(block_size: int | None, patch_size: int) -> int:
    """Block side in pixels: ``block_size`` (default 8 tiles) rounded up to whole tiles."""
    block = block_size or 8 * patch_size
    return patch_size * math.ceil(block / patch_size)


def _label_source(
    cfg: StudyConfig, reader: StackPatchReader, grid: Grid
) -> tuple[CodeReader, TileSampling, str]:
    """Code reader, tile options and the label file's path, for a label raster or polygons."""
    lab, ex = _labels_config(cfg), cfg.extract
    per_class = ex.per_class or DEFAULT_PER_CLASS
    if lab.raster is not None:
        path = cfg.resolve(lab.raster)
        opts = TileSampling(ex.patch_size, per_class, ex.min_labelled, lab.unlabelled, cfg.seed,
                            lab.class_codes)
        return raster_code_reader(path, grid), opts, str(path)
    path = cfg.resolve(lab.path or "")
    frame = read_frame(path)
    if is_point_layer(frame):
        raise LabelError(f"{path}: holds label points, and extract.target: mask needs a class "
                         "per pixel from polygons (or labels.raster); use extract.target: "
                         "class (one patch per point) or label polygons")
    polygons = read_label_polygons(path, class_field=lab.class_field, classes=lab.classes,
                                   id_field=lab.id_field, crs=reader.crs,
                                   scene_bounds=_scene_bounds(reader), frame=frame)
    codes = {name: k + 1 for k, name in enumerate(polygons.class_names)}
    opts = TileSampling(ex.patch_size, per_class, ex.min_labelled, 0, cfg.seed, codes)
    return polygon_code_reader(polygons.geometries, polygons.y, grid), opts, str(path)


def _stratify(
    cfg: StudyConfig, masks: np.ndarray, keep: np.ndarray, groups: np.ndarray,
    names: list[str], source: str,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Tiles kept, the stratum of each kept tile and the strata names (see
    :func:`~geofuse.labels.label_tiles.tile_strata`): strata span the study's folds when the
    blocks allow it, else the splits; warns about the classes passed over."""
    splits = 3 if cfg.splits.test_fraction > 0 else 2
    pixels = np.stack([(masks == c).sum(axis=(1, 2)) for c in range(len(names))],
                      axis=1) * keep[:, None]
    for need in (max(splits, cfg.ablation.folds), splits):
        dominant, has, passed = tile_strata(pixels, groups, need)
        if has.any():
            break
    if not has.any():
        raise SamplingError(
            f"labels {source!r}: no mask class dominates tiles in {splits} spatial blocks "
            f"({len(set(groups[keep].tolist()))} blocks hold tiles); lower extract.block_size "
            "or label a larger area"
        )
    if passed:
        lost = int((keep & ~has).sum())
        warnings.warn(
            f"labels {source!r}: class(es) { {names[k]: n for k, n in passed.items()} } "
            f"dominate tiles in fewer than {need} spatial blocks (blocks shown), too few to "
            "stratify splits and folds on; their tiles are stratified by their next most "
            "frequent class (their pixels stay in the masks)"
            + (f"; {lost} tile(s) with no other class are left out" if lost else ""),
            UserWarning, stacklevel=3)
    keep = keep & has
    present, y = np.unique(dominant[keep], return_inverse=True)
    return keep, y, [names[c] for c in present.tolist()]


def extract_mask_tiles(
    cfg: StudyConfig, manifest: StackManifest, progress: bool = True
) -> PatchSet:
    """Cut mask tiles from the stack and its labels and write the PatchSet.

    Raises:
        DataNotFoundError: the stack, its manifest or the label file is missing.
        RasterError: the stack does not match its manifest; the label raster has no CRS or
            does not overlap the stack.
        LabelError: bad label polygons.
        SamplingError: no tile with enough labelled pixels; every tile dropped for nodata.
        SplitError: the blocks cannot be split with every stratum in every split.
    """
    ex = cfg.extract
    limit = ex.memory_limit_mb * 2**20
    with StackPatchReader(cfg.stack_path, max_memory_bytes=limit) as reader:
        _check_stack(reader, manifest, cfg.stack_path)
        grid = Grid(CRS.from_user_input(reader.crs), reader.transform, reader.width,
                    reader.height)
        read, opts, source = _label_source(cfg, reader, grid)
        tiles = sample_label_tiles(read, grid, opts, source)
        half = ex.patch_size // 2
        x = reader.read_patches(tiles.rows + half, tiles.cols + half, ex.patch_size, progress)
        coords = reader.pixel_centre_coords(tiles.rows + half, tiles.cols + half)
    keep, frac, nodata = _apply_nodata(cfg, Path(source), x, None, None, manifest)
    masks = tiles.masks.copy()
    masks[np.isnan(x).any(axis=1)] = MASK_IGNORE
    keep &= (masks != MASK_IGNORE).mean(axis=(1, 2)) >= max(ex.min_labelled, 1e-9)
    if not keep.any():
        raise SamplingError(
            f"labels {source!r}: no tile keeps extract.min_labelled={ex.min_labelled} of its "
            "pixels labelled where the stack has data; check the stack's QC report "
            f"({cfg.stack_path.name}), that the labels cover its data, or lower min_labelled"
        )
    block = tile_block_size(ex.block_size, ex.patch_size)
    groups = block_groups(tiles.rows, tiles.cols, block)
    masks, mask_names = compact_mask_classes(np.where(keep[:, None, None], masks, MASK_IGNORE),
                                             tiles.mask_names)
    keep, y, strata = _stratify(cfg, masks, keep, groups, mask_names, source)
    masks, mask_names = compact_mask_classes(masks[keep], mask_names)
    groups = groups[keep]
    qc: dict[str, Any] = {"status": "passed", "warnings": [],
                          "label_fit": {"status": "passed", "warnings": [], "classes": {}},
                          "nodata": nodata}
    provenance = {
        **_base_provenance(cfg),
        "labels_raster" if _labels_config(cfg).raster else "labels_polygons": source,
        "target": "mask",
        "patch_size": ex.patch_size,
        "centre_convention": "tiles of a regular grid from the stack's top-left corner; window "
                             "rows/cols start at centre - patch_size // 2; coords are the map "
                             "x, y of the centre pixel's centre; y = the tile's dominant class",
        "sampling": {"per_class": opts.per_class, "block_size": block, **tiles.report},
        "seed": cfg.seed,
        "nodata": nodata,
    }
    return finish_patchset(
        cfg, manifest, x[keep], y, groups, coords[keep], frac[keep], strata,
        provenance, qc, masks=masks, mask_names=mask_names,
    )
