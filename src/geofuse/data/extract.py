"""``geofuse extract``: label polygons + fused stack -> PatchSet with leakage-free splits."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
from affine import Affine
from rasterio.crs import CRS

from geofuse import __version__
from geofuse.config import LabelsConfig, StudyConfig
from geofuse.data.indices import add_index_modalities
from geofuse.data.patchset import PatchSet
from geofuse.data.splits import assign_splits, split_summary
from geofuse.data.stack_reader import StackPatchReader
from geofuse.errors import ConfigError, RasterError, SamplingError
from geofuse.io_utils import atomic_write_json, atomic_write_text
from geofuse.labels.fit import label_fit
from geofuse.labels.fit import render_markdown as render_fit_markdown
from geofuse.labels.points import is_point_layer
from geofuse.labels.polygons import LabelPolygons, format_ids, read_frame, read_label_polygons
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


def stack_coverage(reader: StackPatchReader) -> str:
    """'the stack covers (left, bottom, right, top) in CRS with HxW pixels'."""
    bounds = ", ".join(f"{v:.2f}" for v in _scene_bounds(reader))
    return (f"the stack covers ({bounds}) in {reader.crs} with {reader.height}x{reader.width} "
            "pixels")


def _no_centres_error(labels: Path, polygons: LabelPolygons, reader: StackPatchReader,
                      patch_size: int) -> SamplingError:
    return SamplingError(
        f"{labels}: no patch centres could be sampled from {len(polygons)} usable polygon(s) "
        f"(of {polygons.report.n_features} features, {len(polygons.report.outside)} outside "
        f"the stack); {stack_coverage(reader)}. Fix: check the polygons overlap the stack, or "
        f"use a smaller extract.patch_size (now {patch_size})"
    )


def nodata_bands(
    x: np.ndarray, manifest: StackManifest, limit: float
) -> dict[str, float]:
    """Band name -> NaN share over all patch pixels, for bands above ``limit``, worst first."""
    if len(x) == 0:
        return {}
    share = np.isnan(x).mean(axis=(0, 2, 3))
    order = np.argsort(-share, kind="stable")
    return {manifest.bands[i]: float(share[i]) for i in order.tolist() if share[i] > limit}


def _describe_bands(shares: dict[str, float], manifest: StackManifest) -> str:
    """'modality 's2' band(s) B2, B3 82%; ...': bands of one modality with one share grouped."""
    groups: dict[tuple[str, str], list[str]] = {}
    modality = {b: m for m, bands in manifest.modalities.items() for b in bands}
    for band, share in shares.items():  # worst first
        groups.setdefault((modality.get(band, "?"), f"{share:.0%}"), []).append(band)
    parts = [f"modality {m!r} band(s) {', '.join(bands)} {pct}"
             for (m, pct), bands in groups.items()]
    return "; ".join(parts[:6]) + (f"; and {len(parts) - 6} more" if len(parts) > 6 else "")


def _apply_nodata(
    cfg: StudyConfig, labels: Path, x: np.ndarray, centres: CentreSample | None,
    polygons: LabelPolygons | None, manifest: StackManifest,
    point_ids: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Keep-mask after the nodata rule, nodata fraction per patch, and what the rule did
    (the ids of label points, one per patch, named when dropped)."""
    frac = nodata_fraction(x)
    ex = cfg.extract
    over = frac > ex.max_nodata_fraction
    bands = nodata_bands(x[over], manifest, ex.max_nodata_fraction) if over.any() else {}
    record = {"n_sampled": len(frac), "n_over_threshold": int(over.sum()),
              "max_nodata_fraction": ex.max_nodata_fraction, "action": ex.on_nodata,
              "nan_share_by_band": bands}
    if ex.on_nodata == "flag" or not over.any():
        return np.ones(len(frac), dtype=bool), frac, record
    culprits = _describe_bands(bands, manifest)
    if over.all():
        raise SamplingError(
            f"{labels}: all {len(frac)} sampled patches have a nodata (NaN) share above "
            f"extract.max_nodata_fraction={ex.max_nodata_fraction}; NaN share of the patch "
            f"pixels: {culprits}; check those bands have data under the labels "
            f"(see the QC report of {cfg.stack_path.name}), drop their modality, raise "
            "max_nodata_fraction, or set extract.on_nodata: flag"
        )
    msg = (f"dropped {int(over.sum())} of {len(frac)} patches with a nodata share above "
           f"{ex.max_nodata_fraction} (NaN share of their pixels: {culprits})")
    if point_ids is not None:
        lost = [point_ids[i] for i in np.flatnonzero(over).tolist()]
        msg += f"; points without patches, ids: {format_ids(lost)}"
        record["points_without_patches"] = lost
    if centres is None or polygons is None:
        warnings.warn(msg, stacklevel=3)
        return ~over, frac, record
    kept_polys = set(centres.polygon[~over].tolist())
    lost = [polygons.ids[i] for i in sorted(set(centres.polygon[over].tolist()) - kept_polys)]
    if lost:
        msg += f"; polygons left without patches, ids: {format_ids(lost)}"
        record["polygons_without_patches"] = lost
    warnings.warn(msg, stacklevel=3)
    return ~over, frac, record


def _provenance(
    cfg: StudyConfig, labels: Path, polygons: LabelPolygons, centres: CentreSample,
    nodata: dict[str, Any],
) -> dict[str, Any]:
    ex, lab = cfg.extract, _labels_config(cfg)
    return {
        **_base_provenance(cfg),
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
    }


def _base_provenance(cfg: StudyConfig) -> dict[str, Any]:
    return {
        "created_by": "geofuse extract",
        "geofuse_version": __version__,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": str(cfg.source) if cfg.source else None,
        "stack_path": str(cfg.stack_path),
        "sensors": {m.name: m.sensor for m in cfg.modalities},
    }


def _read_patches(
    cfg: StudyConfig, labels: Path, manifest: StackManifest, progress: bool,
    frame: gpd.GeoDataFrame,
) -> tuple[np.ndarray, np.ndarray, LabelPolygons, CentreSample, Affine]:
    """Validated polygons (of ``frame``, read from ``labels``), sampled centres, their
    patches, map coordinates, stack transform."""
    lab, stack = _labels_config(cfg), cfg.stack_path
    limit = cfg.extract.memory_limit_mb * 2**20
    with StackPatchReader(stack, max_memory_bytes=limit) as reader:
        _check_stack(reader, manifest, stack)
        polygons = read_label_polygons(
            labels, class_field=lab.class_field, classes=lab.classes, id_field=lab.id_field,
            crs=reader.crs, scene_bounds=_scene_bounds(reader), value_field=lab.value_field,
            value_strata_count=lab.value_strata, frame=frame,
        )
        params = _sampling_params(cfg)
        centres = sample_centres(polygons, reader.transform, reader.height, reader.width,
                                 params, progress=progress)
        if len(centres) == 0:
            raise _no_centres_error(labels, polygons, reader, params.patch_size)
        x = reader.read_patches(centres.rows, centres.cols, params.patch_size, progress)
        coords = reader.pixel_centre_coords(centres.rows, centres.cols)
        transform = reader.transform
    return x, coords, polygons, centres, transform


def extract_qc_paths(patches_path: Path) -> tuple[Path, Path]:
    """(JSON, Markdown) extract QC report paths that belong to a PatchSet file."""
    stem = patches_path.with_suffix("").name
    return (patches_path.with_name(f"{stem}_qc.json"), patches_path.with_name(f"{stem}_qc.md"))


def _extract_qc(fit: dict[str, Any], nodata: dict[str, Any], cfg: StudyConfig) -> dict[str, Any]:
    """The extract QC record: label fit (status) and what the nodata rule did; warns once."""
    flagged = {k: c for k, c in fit["classes"].items() if c["flagged"]}
    if flagged:
        names = ", ".join(f"{k!r} ({c['share_outside']:.0%})" for k, c in flagged.items())
        small = sum(c["polygons_smaller_than_patch"] for c in flagged.values())
        total = sum(c["polygons"] for c in flagged.values())
        p = cfg.extract.patch_size
        warnings.warn(
            f"extract QC: most patches of class(es) {names} lie mostly outside their label "
            f"polygon; {small} of their {total} polygons are smaller than one {p}x{p} px patch; "
            "use a smaller extract.patch_size or larger label polygons (see "
            f"{extract_qc_paths(cfg.patches_path)[1]})", UserWarning, stacklevel=3,
        )
    return {"status": fit["status"], "warnings": list(fit["warnings"]), "label_fit": fit,
            "nodata": nodata}


def _write_extract_qc(qc: dict[str, Any], patches_path: Path) -> None:
    json_path, md_path = extract_qc_paths(patches_path)
    atomic_write_json(json_path, qc)
    atomic_write_text(md_path, render_fit_markdown(qc, patches_path.name))


def extract_patches(cfg: StudyConfig, progress: bool = True) -> PatchSet:
    """Sample patches inside the label polygons and write a PatchSet to ``cfg.patches_path``.

    Beside it, ``<name>_qc.json`` / ``_qc.md`` report how well the patches fit their polygons
    (status ``warning`` and a console warning when a class's patches mostly lie outside them).

    With a ``dataset`` section the dataset's own layout is read instead
    (:func:`~geofuse.data.datasets.build.build_dataset_patches`).

    Raises:
        ConfigError: the config has no labels section.
        DataNotFoundError: the stack, its manifest or the label file is missing.
        RasterError: the stack does not match its manifest.
        LabelError: bad label file (see :func:`read_label_polygons`).
        SamplingError: no usable patches.
        SplitError: a class has too few polygons for every split.
        DiskFullError, WriteAccessError: the PatchSet cannot be written.
    """
    if cfg.dataset is not None:  # a published layout: read it directly (no stack, no polygons)
        from geofuse.data.datasets.build import build_dataset_patches

        return build_dataset_patches(cfg)
    lab = _labels_config(cfg)
    manifest = StackManifest.load(manifest_path(cfg.stack_path))
    if cfg.extract.target == "mask" and lab.value_field is not None:
        raise ConfigError(f"{cfg.source or 'config'}: extract.target mask makes a class mask "
                          f"per tile, labels.value_field = {lab.value_field!r} a number per "
                          "patch; remove one of them")
    if cfg.extract.target == "mask" and lab.value_raster is not None:
        from geofuse.data.extract_values import extract_value_tiles

        return extract_value_tiles(cfg, manifest, progress)
    if cfg.extract.target == "mask":
        from geofuse.data.extract_masks import extract_mask_tiles

        return extract_mask_tiles(cfg, manifest, progress)
    if lab.raster is not None:
        from geofuse.data.extract_raster import extract_from_label_raster

        return extract_from_label_raster(cfg, manifest, progress)
    labels = cfg.resolve(lab.path or "")
    frame = read_frame(labels)
    if is_point_layer(frame):
        from geofuse.data.extract_points import extract_from_points

        return extract_from_points(cfg, manifest, labels, frame, progress)
    x, coords, polygons, centres, transform = _read_patches(cfg, labels, manifest, progress,
                                                            frame)
    keep, frac, nodata = _apply_nodata(cfg, labels, x, centres, polygons, manifest)
    qc = _extract_qc(label_fit(polygons, centres, transform, cfg.extract.patch_size, keep),
                     nodata, cfg)
    poly = centres.polygon[keep]
    groups = np.array([f"polygon:{polygons.ids[i]}" for i in poly.tolist()], dtype=str)
    values = None if polygons.values is None else polygons.values[poly]
    return finish_patchset(
        cfg, manifest, x[keep], polygons.y[poly], groups, coords[keep], frac[keep],
        polygons.class_names, _provenance(cfg, labels, polygons, centres, nodata), qc,
        values=values, value_name=lab.value_field or "",
    )


def finish_patchset(
    cfg: StudyConfig, manifest: StackManifest, x: np.ndarray, y: np.ndarray,
    groups: np.ndarray, coords: np.ndarray, frac: np.ndarray, class_names: list[str],
    provenance: dict[str, Any], qc: dict[str, Any], masks: np.ndarray | None = None,
    mask_names: list[str] | None = None, values: np.ndarray | None = None,
    value_name: str = "",
) -> PatchSet:
    """Split by group, build the PatchSet (plus index modalities), save it and its QC report.

    The shared tail of every stack-based extract path (label polygons, label raster).
    """
    split = assign_splits(y, groups, cfg.splits.val_fraction, cfg.splits.test_fraction,
                          cfg.seed, class_names=class_names)
    summary = split_summary(y, groups, split, class_names)
    provenance = {**provenance, "splits": {"val_fraction": cfg.splits.val_fraction,
                                           "test_fraction": cfg.splits.test_fraction,
                                           "counts": summary}, "qc": qc}
    patches = PatchSet(
        x=x, y=y, band_names=list(manifest.bands), modalities=dict(manifest.modalities),
        class_names=class_names, groups=groups, coords=coords, split=split,
        nodata_fraction=frac, crs=manifest.crs, provenance=provenance, masks=masks,
        mask_names=list(mask_names or []), values=values,
        value_name=value_name if values is not None else "",
    )
    patches = add_index_modalities(patches, cfg.index_requests(), cfg.index_sensors())
    patches.save(cfg.patches_path)
    _write_extract_qc(qc, cfg.patches_path)
    return patches
