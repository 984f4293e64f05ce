"""``geofuse extract`` with ``labels.raster``: label raster + fused stack -> PatchSet."""

from __future__ import annotations

from typing import Any

from rasterio.crs import CRS

from geofuse.config import StudyConfig
from geofuse.data.extract import (
    _apply_nodata,
    _base_provenance,
    _check_stack,
    _labels_config,
    finish_patchset,
)
from geofuse.data.patchset import PatchSet
from geofuse.data.stack_reader import StackPatchReader
from geofuse.labels.raster_labels import (
    DEFAULT_PER_CLASS,
    RasterSampling,
    block_groups,
    sample_raster_centres,
)
from geofuse.raster.io import Grid
from geofuse.raster.manifest import StackManifest


def raster_sampling(cfg: StudyConfig) -> RasterSampling:
    """Sampling options of the raster path from the config."""
    lab, ex = _labels_config(cfg), cfg.extract
    return RasterSampling(
        patch_size=ex.patch_size, per_class=ex.per_class or DEFAULT_PER_CLASS,
        min_distance=ex.min_distance, unlabelled=lab.unlabelled, seed=cfg.seed,
        class_codes=lab.class_codes,
    )


def extract_from_label_raster(
    cfg: StudyConfig, manifest: StackManifest, progress: bool = True
) -> PatchSet:
    """Sample class-balanced centres from ``labels.raster`` and write the PatchSet.

    Groups are spatial blocks of ``extract.block_size`` stack pixels (``block:{bx}_{by}``);
    the label of a patch is the class of the label-raster pixel under its centre.

    Raises:
        DataNotFoundError: the stack, its manifest or the label raster is missing.
        RasterError: the stack does not match its manifest; the label raster has no CRS or
            does not overlap the stack.
        SamplingError: no labelled pixel; all patches dropped for nodata.
        SplitError: a class has too few blocks for every split.
    """
    lab, stack = _labels_config(cfg), cfg.stack_path
    path = cfg.resolve(lab.raster or "")
    opts = raster_sampling(cfg)
    limit = cfg.extract.memory_limit_mb * 2**20
    with StackPatchReader(stack, max_memory_bytes=limit) as reader:
        _check_stack(reader, manifest, stack)
        grid = Grid(CRS.from_user_input(reader.crs), reader.transform, reader.width,
                    reader.height)
        centres = sample_raster_centres(path, grid, opts)
        x = reader.read_patches(centres.rows, centres.cols, opts.patch_size, progress)
        coords = reader.pixel_centre_coords(centres.rows, centres.cols)
    keep, frac, nodata = _apply_nodata(cfg, path, x, None, None, manifest)
    block = cfg.extract.block_size or 8 * opts.patch_size
    groups = block_groups(centres.rows[keep], centres.cols[keep], block)
    qc: dict[str, Any] = {"status": "passed", "warnings": [],
                          "label_fit": {"status": "passed", "warnings": [], "classes": {}},
                          "nodata": nodata}
    provenance = {
        **_base_provenance(cfg),
        "labels_raster": str(path),
        "patch_size": opts.patch_size,
        "centre_convention": "window rows/cols start at centre - patch_size // 2; coords are "
                             "the map x, y of the centre pixel's centre; label = code there",
        "sampling": {"per_class": opts.per_class, "min_distance": opts.min_distance,
                     "block_size": block, **centres.report},
        "seed": cfg.seed,
        "nodata": nodata,
    }
    return finish_patchset(
        cfg, manifest, x[keep], centres.y[keep], groups, coords[keep], frac[keep],
        centres.class_names, provenance, qc,
    )
