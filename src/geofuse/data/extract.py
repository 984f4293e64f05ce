"""``geofuse extract``: label polygons + fused stack -> PatchSet with leakage-free splits."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.crs import CRS

from geofuse import __version__
from geofuse.config import LabelsConfig, StudyConfig
from geofuse.data.patchset import PatchSet
from geofuse.data.splits import assign_splits, split_summary
from geofuse.data.stack_reader import StackPatchReader
from geofuse.errors import ConfigError, RasterError, SamplingError
from geofuse.labels.polygons import LabelPolygons, format_ids, read_label_polygons
from geofuse.labels.sampling import CentreSample, SamplingParams, sample_centres
from geofuse.raster.manifest import StackManifest, manifest_path


def nodata_fraction(x: np.ndarray) -> np.ndarray:
    """Share of pixels of each (N, C, P, P) patch where any band is NaN, as float32 (N,)."""
    if len(x) == 0:
        return np.zeros(0, dtype=np.float32)
    return np.isnan(x).any(axis=1).mean(axis=(1, 2)).astype(np.float32)


def _labels_config(cfg: StudyConfig) -> LabelsConfig:
    if cfg.labels is None:
        raise ConfigError(
            f"{cfg.source or 'config'}: no 'labels' section; add labels.path (a GeoJSON, "
            "GeoPackage or Shapefile of polygons) and labels.class_field"
        )
    return cfg.labels


def _check_stack(reader: StackPatchReader, manifest: StackManifest, stack: Path) -> None:
    """Raise :class:`RasterError` when the stack and its manifest disagree."""
    problems = []
    if (reader.height, reader.width) != (manifest.height, manifest.width):
        problems.append(f"size {reader.height}x{reader.width} vs manifest "
                        f"{manifest.height}x{manifest.width}")
    if reader.count != len(manifest.bands):
        problems.append(f"{reader.count} bands vs {len(manifest.bands)} in the manifest")
    elif not all(d.startswith("band_") or d == b
                 for d, b in zip(reader.band_names, manifest.bands, strict=True)):
        problems.append(f"band descriptions {reader.band_names} vs manifest {manifest.bands}")
    if not reader.crs or CRS.from_user_input(reader.crs) != CRS.from_user_input(manifest.crs):
        problems.append(f"CRS {reader.crs!r} vs manifest {manifest.crs!r}")
    if not np.allclose(list(reader.transform)[:6], manifest.transform[:6], rtol=0, atol=1e-6):
        problems.append("geotransform differs from the manifest")
    if problems:
        raise RasterError(
            f"fused stack {str(stack)!r} does not match its manifest ({'; '.join(problems)}); "
            "re-run 'geofuse prepare -c CONFIG'"
        )


def _scene_bounds(reader: StackPatchReader) -> tuple[float, float, float, float]:
    xs, ys = reader.transform @ (np.array([0, reader.width]), np.array([0, reader.height]))
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


def _sampling_params(cfg: StudyConfig) -> SamplingParams:
    ex = cfg.extract
    return SamplingParams(
        patch_size=ex.patch_size, per_polygon=ex.per_polygon, per_class=ex.per_class,
        jitter=ex.jitter, min_distance=ex.min_distance, seed=cfg.seed,
    )


def _no_centres_error(labels: Path, polygons: LabelPolygons, reader: StackPatchReader,
                      patch_size: int) -> SamplingError:
    bounds = ", ".join(f"{v:.2f}" for v in _scene_bounds(reader))
    return SamplingError(
        f"{labels}: no patch centres could be sampled from {len(polygons)} usable polygon(s) "
        f"(of {polygons.report.n_features} features, {len(polygons.report.outside)} outside "
        f"the stack); the stack covers ({bounds}) in "
        f"{reader.crs} with {reader.height}x{reader.width} pixels. Fix: check the polygons "
        f"overlap the stack, or use a smaller extract.patch_size (now {patch_size})"
    )


def _apply_nodata(
    cfg: StudyConfig, labels: Path, x: np.ndarray, centres: CentreSample,
    polygons: LabelPolygons,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Keep-mask after the nodata rule, nodata fraction per patch, and what the rule did."""
    frac = nodata_fraction(x)
    ex = cfg.extract
    over = frac > ex.max_nodata_fraction
    record = {"n_sampled": len(frac), "n_over_threshold": int(over.sum()),
              "max_nodata_fraction": ex.max_nodata_fraction, "action": ex.on_nodata}
    if ex.on_nodata == "flag" or not over.any():
        return np.ones(len(frac), dtype=bool), frac, record
    if over.all():
        raise SamplingError(
            f"{labels}: all {len(frac)} sampled patches have a nodata (NaN) share above "
            f"extract.max_nodata_fraction={ex.max_nodata_fraction}; check the stack has data "
            "under the polygons, raise max_nodata_fraction, or set extract.on_nodata: flag"
        )
    kept_polys = set(centres.polygon[~over].tolist())
    lost = [polygons.ids[i] for i in sorted(set(centres.polygon[over].tolist()) - kept_polys)]
    msg = (f"dropped {int(over.sum())} of {len(frac)} patches with a nodata share above "
           f"{ex.max_nodata_fraction}")
    if lost:
        msg += f"; polygons left without patches, ids: {format_ids(lost)}"
        record["polygons_without_patches"] = lost
    warnings.warn(msg, stacklevel=3)
    return ~over, frac, record


def _provenance(
    cfg: StudyConfig, labels: Path, polygons: LabelPolygons, centres: CentreSample,
    nodata: dict[str, Any], summary: dict[str, Any],
) -> dict[str, Any]:
    ex, lab = cfg.extract, _labels_config(cfg)
    return {
        "created_by": "geofuse extract",
        "geofuse_version": __version__,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": str(cfg.source) if cfg.source else None,
        "stack_path": str(cfg.stack_path),
        "labels_path": str(labels),
        "class_field": lab.class_field,
        "id_field": lab.id_field,
        "patch_size": ex.patch_size,
        "centre_convention": "window rows/cols start at centre - patch_size // 2; coords are "
                             "the map x, y of the centre pixel's centre",
        "sampling": {"per_polygon": ex.per_polygon, "per_class": ex.per_class,
                     "jitter": ex.jitter, "min_distance": ex.min_distance, **centres.report},
        "seed": cfg.seed,
        "polygons": polygons.report.to_dict(),
        "nodata": nodata,
        "splits": {"val_fraction": cfg.splits.val_fraction,
                   "test_fraction": cfg.splits.test_fraction, "counts": summary},
    }


def _read_patches(
    cfg: StudyConfig, labels: Path, manifest: StackManifest, progress: bool
) -> tuple[np.ndarray, np.ndarray, LabelPolygons, CentreSample]:
    """Validated polygons, sampled centres, their patches and map coordinates."""
    lab, stack = _labels_config(cfg), cfg.stack_path
    limit = cfg.extract.memory_limit_mb * 2**20
    with StackPatchReader(stack, max_memory_bytes=limit) as reader:
        _check_stack(reader, manifest, stack)
        polygons = read_label_polygons(
            labels, class_field=lab.class_field, classes=lab.classes, id_field=lab.id_field,
            crs=reader.crs, scene_bounds=_scene_bounds(reader),
        )
        params = _sampling_params(cfg)
        centres = sample_centres(polygons, reader.transform, reader.height, reader.width,
                                 params, progress=progress)
        if len(centres) == 0:
            raise _no_centres_error(labels, polygons, reader, params.patch_size)
        x = reader.read_patches(centres.rows, centres.cols, params.patch_size, progress)
        coords = reader.pixel_centre_coords(centres.rows, centres.cols)
    return x, coords, polygons, centres


def extract_patches(cfg: StudyConfig, progress: bool = True) -> PatchSet:
    """Sample patches inside the label polygons and write a PatchSet to ``cfg.patches_path``.

    With a ``dataset`` section the dataset's own layout is read instead
    (:func:`~geofuse.data.datasets.build.build_dataset_patches`).

    Raises:
        ConfigError: the config has no labels section.
        DataNotFoundError: the stack, its manifest or the label file is missing.
        RasterError: the stack does not match its manifest.
        LabelError: bad label file (see :func:`read_label_polygons`).
        SamplingError: no usable patches.
        SplitError: a class has too few polygons for every split.
    """
    if cfg.dataset is not None:  # a published layout: read it directly (no stack, no polygons)
        from geofuse.data.datasets.build import build_dataset_patches

        return build_dataset_patches(cfg)
    labels = cfg.resolve(_labels_config(cfg).path)
    manifest = StackManifest.load(manifest_path(cfg.stack_path))
    x, coords, polygons, centres = _read_patches(cfg, labels, manifest, progress)
    keep, frac, nodata = _apply_nodata(cfg, labels, x, centres, polygons)
    poly = centres.polygon[keep]
    y = polygons.y[poly]
    groups = np.array([f"polygon:{polygons.ids[i]}" for i in poly.tolist()], dtype=str)
    split = assign_splits(y, groups, cfg.splits.val_fraction, cfg.splits.test_fraction,
                          cfg.seed, class_names=polygons.class_names)
    summary = split_summary(y, groups, split, polygons.class_names)
    patches = PatchSet(
        x=x[keep], y=y, band_names=list(manifest.bands), modalities=dict(manifest.modalities),
        class_names=polygons.class_names, groups=groups, coords=coords[keep], split=split,
        nodata_fraction=frac[keep], crs=manifest.crs,
        provenance=_provenance(cfg, labels, polygons, centres, nodata, summary),
    )
    patches.save(cfg.patches_path)
    return patches

