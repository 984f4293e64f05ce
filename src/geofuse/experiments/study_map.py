"""After an ablation: map a scene with the best configuration and assess it (``mapping``).

The best configuration's fold models map the scene as an ensemble (:mod:`geofuse.mapping.
predict`) into ``<study>/map/``. When the study held polygons out (``ablation.test_fraction``),
those polygons (or label points), which no fold model ever trained on, are written to
``map/heldout_polygons.gpkg`` (``map/heldout_points.gpkg``) and the map is assessed against
them (:mod:`geofuse.mapping.assess`): confusion matrix, accuracies and error-adjusted
class areas. The study report then shows the map and its assessment; with
``mapping.mmu_ha`` the map is also published with that minimum mapping unit
(:mod:`geofuse.mapping.vectorize`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from rich.console import Console

from geofuse.config import StudyConfig
from geofuse.errors import ConfigError, GeofuseError

console = Console(stderr=True)
MAP_DIR = "map"
HELDOUT = "heldout_polygons.gpkg"
HELDOUT_POINTS = "heldout_points.gpkg"
ORIGIN = "mapping.suggest"  #: ``origin`` of the places this module writes


def scene_path(cfg: StudyConfig) -> Path:
    """The stack named by ``mapping.scene`` ('stack': the study's own prepared stack).

    Raises:
        ConfigError: no scene configured.
    """
    scene = cfg.mapping.scene
    if scene is None:
        raise ConfigError("mapping.scene is not set; name a fused stack or 'stack'")
    return cfg.stack_path if scene == "stack" else cfg.resolve(scene)


def heldout_polygons(cfg: StudyConfig, study_dir: Path, out_dir: Path) -> Path | None:
    """Write the label polygons of the study's test groups (``polygon:<id>``) to a
    GeoPackage with a ``class`` field (of a regression study, ``value``: the polygon's number),
    or its label points (:func:`heldout_points`); None when the study held none out."""
    import geopandas as gpd

    from geofuse.labels.polygons import read_label_polygons
    from geofuse.raster.io import read_stack_header

    folds = json.loads((study_dir / "folds.json").read_text())
    test_groups = folds.get("test_groups") or []
    if any(g.startswith("point:") for g in test_groups):
        own = sorted((study_dir / "folds").glob("fold*.h5"))  # the study's very patches
        return heldout_points(own[0] if own else cfg.patches_path, set(test_groups), out_dir)
    ids = {g.split(":", 1)[1] for g in test_groups if g.startswith("polygon:")}
    lab = cfg.labels
    if not ids or lab is None or lab.path is None:
        return None
    polygons = read_label_polygons(
        cfg.resolve(lab.path), class_field=lab.class_field, classes=lab.classes,
        id_field=lab.id_field, crs=read_stack_header(cfg.stack_path).grid.crs_string(),
        value_field=lab.value_field, value_strata_count=lab.value_strata)
    keep = [i for i, pid in enumerate(polygons.ids) if pid in ids]
    if not keep:
        return None
    label = ({"value": [float(polygons.values[i]) for i in keep]} if polygons.values is not None
             else {"class": [polygons.class_names[int(polygons.y[i])] for i in keep]})
    frame = gpd.GeoDataFrame(
        {"id": [polygons.ids[i] for i in keep], **label},
        geometry=[polygons.geometries[i] for i in keep], crs=polygons.crs)
    path = out_dir / HELDOUT
    frame.to_file(path, driver="GPKG")
    return path


def heldout_points(patches_path: Path, test_groups: set[str], out_dir: Path) -> Path | None:
    """Write the label points of the study's test groups (``point:<id>``), as placed on the
    stack grid (the centre of the pixel each point falls in), to a GeoPackage with a ``class``
    field (of a regression study, ``value``); None when the PatchSet holds none of them."""
    import geopandas as gpd
    import h5py
    import numpy as np

    with h5py.File(patches_path, "r") as f:
        groups = np.char.decode(f["groups"][()], "utf-8").astype(str)
        held = np.isin(groups, sorted(test_groups))
        coords, y = f["coords"][()][held], f["y"][()][held]
        values = f["values"][()][held] if "values" in f else None
        class_names = json.loads(f.attrs["class_names"])
        provenance = json.loads(f.attrs.get("provenance", "{}"))
        crs = str(f.attrs["crs"])
    if not held.any():
        return None
    ids = np.asarray(provenance.get("point_ids") or [])
    if len(ids) != len(groups):  # not the PatchSet extract wrote: number the patches
        ids = np.array([f"patch{i}" for i in range(len(groups))])
    label = ({"value": values.astype(float).tolist()} if values is not None
             else {"class": [class_names[int(k)] for k in y.tolist()]})
    frame = gpd.GeoDataFrame({"id": ids[held].tolist(), **label},
                             geometry=gpd.points_from_xy(coords[:, 0], coords[:, 1]), crs=crs)
    path = out_dir / HELDOUT_POINTS
    frame.to_file(path, driver="GPKG")
    return path


def map_study(cfg: StudyConfig, study_dir: Path, progress: bool = True) -> Path:
    """Map ``mapping.scene`` with the study's best configuration, assess the map against the
    held-out polygons when there are any, publish it with ``mapping.mmu_ha`` and suggest
    ``mapping.suggest`` places to label next; returns the map folder. Each step is redone
    only when what it reads changed."""
    from geofuse.mapping.predict import PredictOptions, predict_map

    out = study_dir / MAP_DIR
    m = cfg.mapping
    cells = [p.stat().st_mtime for p in (study_dir / "cells").glob("*.json")]
    record = out / "predict.json"
    fresh = record.is_file() and bool(cells) and record.stat().st_mtime >= max(cells)
    src = _patch_source(study_dir) if m.aoa else None  # resolved once, for the map too
    aoa = src is not None
    if fresh and ("aoa" in json.loads(record.read_text())) != aoa:
        fresh = False  # mapping.aoa changed since
    if fresh:
        if progress:  # no cell changed since the map was made
            console.print(f"map up to date: {out}")
        mapped = json.loads(record.read_text())
    else:
        if progress:
            console.rule("[bold]map: the best configuration's fold models on the scene")
        mapped = predict_map(src or study_dir, scene_path(cfg), out,
                             PredictOptions(stride=m.stride, tile_size=m.tile_size, tta=m.tta,
                                            aoa=aoa),
                             progress=progress)
    if not fresh or not (out / "assessment.json").is_file():
        _assess(cfg, study_dir, out, mapped, progress)
    if not mapped.get("value_name"):
        _publish(out, m.mmu_ha, redo=not fresh, progress=progress)
    _suggest(cfg, out, mapped, redo=not fresh, progress=progress)
    return out


def _patch_source(study_dir: Path) -> Any:
    """The study's map source when its best configuration classifies patches (the area of
    applicability is measured for those only); None, warned, when not."""
    from geofuse.mapping.aoa_members import PATCH_KINDS
    from geofuse.mapping.members import resolve_source

    src = resolve_source(study_dir)
    if src.first.kind in PATCH_KINDS:
        return src
    warnings.warn(f"mapping.aoa: the best configuration maps pixel by pixel ({src.first.kind});"
                  " the area of applicability is measured for patch classifiers, so the map has"
                  " none", UserWarning, stacklevel=3)
    return None


def _suggest(cfg: StudyConfig, out: Path, mapped: dict[str, Any], redo: bool,
             progress: bool) -> None:
    """Places to label next (``mapping.suggest``), away from the study's labels, at least two
    per class when the number allows; redone when the map or the number changed. Only files
    this hook wrote (``origin: mapping.suggest``) are replaced or removed, never the places a
    user asked ``geofuse suggest`` for; a failure it can name is a warning."""
    from geofuse.mapping.suggest import STEM, SuggestOptions, suggest_labels, summary

    n = cfg.mapping.suggest
    map_file = out / ("values.tif" if mapped.get("value_name") else "classes.tif")
    record = out / f"{STEM}.json"
    previous = json.loads(record.read_text()) if record.is_file() else None
    if previous is not None and previous.get("origin") != ORIGIN:
        if n is not None:
            warnings.warn(f"mapping.suggest: {record.parent / STEM}.* were written by 'geofuse "
                          "suggest' and may hold your labels; the study leaves them (move them "
                          "away to have the study suggest places)", UserWarning, stacklevel=2)
        return
    if not redo and n is not None and previous is not None and previous.get("n_requested") == n:
        return
    for suffix in (".gpkg", ".png", ".json"):  # never stale ones
        (out / f"{STEM}{suffix}").unlink(missing_ok=True)
    if n is None:
        return
    lab = cfg.labels
    labels = cfg.resolve(lab.path) if lab is not None and lab.path else None
    if lab is not None and lab.path is None:
        warnings.warn("mapping.suggest: the study's labels are a raster, so places may fall on "
                      "labelled pixels", UserWarning, stacklevel=2)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            n_classes = 1 if mapped.get("value_name") else len(mapped.get("class_names") or [])
            opts = SuggestOptions(n=n, seed=cfg.seed,
                                  min_per_class=min(2, n // max(n_classes, 1)))
            result = suggest_labels(map_file, opts, labels=labels, out_dir=out, origin=ORIGIN)
    except (GeofuseError, OSError) as err:
        message = err.one_line() if isinstance(err, GeofuseError) else str(err)
        warnings.warn(f"mapping.suggest: no places to label were written: {message}",
                      UserWarning, stacklevel=2)
        return
    for w in caught:
        warnings.warn(f"mapping.suggest: {w.message} (lower mapping.suggest, or run 'geofuse "
                      f"suggest {map_file}' for the other options)", UserWarning, stacklevel=2)
    if progress:
        console.print(f"places to label next: {summary(result.record)}: {result.gpkg_path}",
                      soft_wrap=True)


def _assess(cfg: StudyConfig, study_dir: Path, out: Path, mapped: dict[str, Any],
            progress: bool) -> None:
    """Assess the map against the polygons (or label points) held out of every fold, when
    there are any."""
    from geofuse.mapping.assess import assess_map

    reference = heldout_polygons(cfg, study_dir, out)
    if reference is not None and mapped.get("value_name"):  # a regression map
        from geofuse.mapping.assess_values import assess_value_map

        assess_value_map(out / "values.tif", reference, "value", out_dir=out)
    elif reference is not None:
        assess_map(out / "classes.tif", polygons=reference, out_dir=out, class_field="class")
    if reference is not None:
        if progress:
            console.print(f"map assessed against {reference.name}: {out / 'assessment.md'}")
    elif progress:
        console.print("no held-out polygons (ablation.test_fraction: 0): the map is not "
                      "assessed; run 'geofuse assess' with independent reference data")


def _publish(out: Path, mmu_ha: float | None, redo: bool, progress: bool) -> None:
    """The class map with a minimum mapping unit (``classes_mmu.*``); a failure is a warning,
    so it never costs the map or its assessment."""
    from geofuse.mapping.vectorize import summary, vectorize_map

    record = out / "classes_vectorize.json"
    if not redo and mmu_ha is not None and record.is_file() and \
            json.loads(record.read_text()).get("mmu_ha_requested") == mmu_ha:
        return
    for name in ("classes_mmu.tif", "classes_mmu.gpkg", record.name):  # never stale ones
        (out / name).unlink(missing_ok=True)
    if mmu_ha is None:
        return
    try:
        result = vectorize_map(out / "classes.tif", out, mmu_ha=mmu_ha)
    except GeofuseError as err:
        warnings.warn(f"mapping.mmu_ha: the map was not published with a minimum mapping "
                      f"unit: {err.one_line()}", UserWarning, stacklevel=2)
        return
    if progress:
        console.print(f"{summary(result.record)}: {result.polygons_path}", highlight=False)
