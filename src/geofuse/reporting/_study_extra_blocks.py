"""Study report blocks of segmentation studies (example masks) and of a study's map."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from matplotlib.figure import Figure as MplFigure

from geofuse.experiments.study_map import HELDOUT_POINTS
from geofuse.reporting import html as doc
from geofuse.reporting._seg_report import study_mask_comparison
from geofuse.reporting._study_load import Study
from geofuse.reporting._study_test_blocks import _f

#: (figure, study, file name, title) -> a report figure (study_report._figure).
FigureFn = Callable[[MplFigure, Study, str, str], doc.Figure]


def mask_blocks(s: dict[str, Any], study: Study, figure: FigureFn) -> list[doc.Block]:
    """Input dates, true and predicted masks of a few validation tiles, every configuration
    side by side (segmentation studies)."""
    fig = study_mask_comparison(study.path, study.cells, list(s["configs"]))
    if fig is None:
        return []
    return [doc.Heading("Masks of a few validation tiles"),
            doc.Para("The first validation fold's most changed tiles: the first and last date, "
                     "the true mask and each configuration's predicted mask (grey: "
                     "unlabelled)."),
            figure(fig, study, "masks", "Input dates, true and predicted masks")]


def map_blocks(study: Study) -> list[doc.Block]:
    """The map of the best configuration (``mapping.scene``) and its assessment, when the
    study made one (``<study>/map/``)."""
    folder = study.path / "map"
    record = folder / "predict.json"
    if not record.is_file():
        return []
    meta = json.loads(record.read_text())
    values = bool(meta.get("value_name"))
    products = "`map/values.tif`" if values else "`map/classes.tif`, `map/uncertainty.tif`"
    blocks: list[doc.Block] = [doc.Heading("Map of the scene (best configuration)"), doc.Para(
        f"`{meta.get('stack', '?')}` mapped by the fold models of the best configuration "
        f"(stride {meta.get('stride', 1)}): {products}.")]
    quicklook = folder / "quicklook.png"
    if quicklook.is_file():
        blocks.append(doc.Figure(title="Value map" if values else "Class map",
                                 png=quicklook.read_bytes(), path="map/quicklook.png"))
    blocks += _aoa_blocks(meta, folder) + _mmu_blocks(folder) + _suggest_blocks(folder)
    assessment = folder / "assessment.json"
    if not assessment.is_file():
        return [*blocks, doc.Para("Not assessed: the study held no polygons or points out.")]
    a = json.loads(assessment.read_text())
    reference = a.get("reference")  # a value map's assessment names the file only
    points = (reference.get("kind") == "points" if isinstance(reference, dict)
              else str(reference).endswith(HELDOUT_POINTS))
    if a.get("kind") == "values":
        m = a["metrics"]
        return [*blocks, doc.Para(
            f"Assessed against the {m['n']} held-out {'points' if points else 'polygons'}, "
            "which no fold model trained on (" + ("the map's pixel under each" if points else
                                                 "the mean of the map's pixels in each")
            + " against its number): `map/assessment.md`."),
            doc.Table(["RMSE", "MAE", "bias", "R2", "Spearman r"],
                      [[f"{m['rmse']:.4g}", f"{m['mae']:.4g}", f"{m['bias']:+.4g}",
                        _f(m["r2"]), _f(m["spearman_r"])]])]
    rows = [[c["name"], _f(c["mapped_area_ha"], 1), _area(c), _f(c["users_accuracy"]),
             _f(c["producers_accuracy"])] for c in a["per_class"]]
    aoa = a.get("aoa") or {}
    if aoa.get("outside", {}).get("n_reference_pixels"):
        i, o = aoa["inside"], aoa["outside"]
        blocks.append(doc.Para(
            f"Held-out pixels inside the area of applicability: {_f(i['overall_accuracy'])} "
            f"mapped right ({i['n_reference_pixels']:,}); outside: "
            f"{_f(o['overall_accuracy'])} ({o['n_reference_pixels']:,})."))
    return [
        *blocks,
        doc.Para(f"Assessed against the {a['reference'].get('n_reference_pixels', '?')} pixels "
                 f"of the held-out {'label points' if points else 'polygons'}, which no fold "
                 f"model trained on: overall accuracy {_f(a['overall_accuracy'])} +- "
                 f"{_f(a['overall_accuracy_se'])} (SE); error-adjusted areas with 95% intervals "
                 "(Olofsson et al. 2014). " + (
                     "The intervals hold only as far as the points are a random sample of "
                     "each mapped class" if points else
                     "Polygon pixels are clustered, so the intervals are too narrow")
                 + ": `map/assessment.md`."),
        doc.Table(["class", "mapped area (ha)", "adjusted area (ha, 95% CI)", "user's acc.",
                   "producer's acc."], rows)]


def _aoa_blocks(meta: dict[str, Any], folder: Any) -> list[doc.Block]:
    """The area of applicability (``mapping.aoa``), when the map measured it."""
    aoa = meta.get("aoa")
    if not aoa or aoa.get("outside_share") is None:
        return []
    what = "estimates" if meta.get("value_name") else "classes"
    by_class = aoa.get("outside_share_by_class") or {}
    worst = sorted(((v, k) for k, v in by_class.items() if v is not None), reverse=True)[:3]
    blocks: list[doc.Block] = [doc.Para(
        f"Area of applicability (Meyer & Pebesma 2021): {aoa['outside_share']:.1%} of the "
        "mapped pixels lie farther from every training patch, in the fold models' feature "
        f"space, than cross-validation ever tested; their {what} are extrapolations "
        "(`map/aoa.tif`: dissimilarity / threshold, above 1 = outside)"
        + ("; most outside among " + ", ".join(f"{k} ({v:.0%})" for v, k in worst)
           if worst else "") + ".")]
    png = folder / "aoa.png"
    if png.is_file():
        blocks.append(doc.Figure(title="Area of applicability", png=png.read_bytes(),
                                 path="map/aoa.png"))
    return blocks


def _suggest_blocks(folder: Any) -> list[doc.Block]:
    """The places to label next (``mapping.suggest``), when written."""
    path = folder / "label_suggestions.json"
    if not path.is_file():
        return []
    r = json.loads(path.read_text())
    uncertain = sum(c["uncertain"] for c in r["classes"])
    blocks: list[doc.Block] = [doc.Para(
        f"Where to label next: {r['n']} places (`map/label_suggestions.gpkg`), {uncertain} "
        f"where the {r['window']} x {r['window']} px neighbourhood is mapped as one class and "
        f"most uncertain ({r['band']}), {r['n'] - uncertain} at random, at least "
        f"{r['min_distance']:.4g} apart"
        + (f" and {r['label_distance']:.4g} from the study's labels" if r.get("labels") else "")
        + ". Fill their `class` column, add them to the label points and run the study again.")]
    png = path.with_suffix(".png")
    if png.is_file():
        blocks.append(doc.Figure(title="Places to label next", png=png.read_bytes(),
                                 path="map/label_suggestions.png"))
    rows = [[c["class"], str(c["allocated"]), str(c["uncertain"]), str(c["random"]),
             _f(c["mean_score"])] for c in r["classes"] if c["allocated"] or c["uncertain"]
            or c["random"]]
    return [*blocks, doc.Table(["class", "allocated", "uncertain", "random", "mean score"],
                               rows)]


def _mmu_blocks(folder: Any) -> list[doc.Block]:
    """The map published with a minimum mapping unit (``mapping.mmu_ha``), when made."""
    path = folder / "classes_vectorize.json"
    if not path.is_file():
        return []
    v = json.loads(path.read_text())
    rows = [[c["class"], _f(c["area_ha_before"], 1), _f(c["area_ha_after"], 1),
             str(c["polygons"])] for c in v["classes"]]
    return [doc.Para(
        f"Published with a minimum mapping unit of {v['mmu_ha']:.4g} ha ({v['mmu_pixels']} px, "
        f"{v['connectivity']}-connected): {v['changed_fraction']:.1%} of the pixels joined a "
        f"larger neighbour; `map/classes_mmu.tif` and `map/classes_mmu.gpkg` "
        f"({v['polygons']} polygons with class, area and mean uncertainty"
        + (f"; {v['below_mmu']} islands in nodata stay below the unit" if v.get("below_mmu")
           else "") + "). The assessment below is of the map before the unit."),
        doc.Table(["class", "area (ha)", "area with the unit (ha)", "polygons"], rows)]


def _area(c: dict[str, Any]) -> str:
    if c.get("area_ha") is None:
        return "n/a"
    half = 1.96 * (c.get("area_ha_se") or 0.0)
    return f"{c['area_ha']:.1f} [{c['area_ha'] - half:.1f}, {c['area_ha'] + half:.1f}]"
