"""The assessment report: ``assessment.json``, ``assessment.md`` and ``assessment.html``.

Built from the assessment dict alone (:func:`geofuse.mapping.assess.assessment_dict`) with the
project's document blocks (:mod:`geofuse.reporting.html`): the map's quicklook when a
``quicklook.png`` lies beside the map, the legend, class areas with 95 % intervals (ha and
km^2), the uncertainty histogram when an ``uncertainty.tif`` lies beside the map, the accuracy
table and the error matrices (rows map class, columns reference class). Figures are saved as
``assessment_*.png`` beside the report and embedded in the HTML.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from matplotlib.patches import Patch

from geofuse.io_utils import atomic_path, atomic_write_json, atomic_write_text
from geofuse.reporting import html as doc

JSON_NAME, MD_NAME, HTML_NAME = "assessment.json", "assessment.md", "assessment.html"


def _new_figure(width: float, height: float) -> MplFigure:
    fig = MplFigure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _f(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _area(x: float | None) -> str:
    """An area with digits that suit its size (thousands separated)."""
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.2f}" if abs(x) >= 1 else f"{x:.4f}"


def _pm(est: float | None, ci: list[float | None]) -> str:
    """``estimate ± half-width``, both with the decimals that the half-width warrants."""
    if est is None:
        return "n/a (no reference sample)"
    if ci[0] is None or ci[1] is None:
        return f"{_area(est)} ± n/a"
    half = (ci[1] - ci[0]) / 2
    if half == 0:
        return f"{_area(est)} ± 0"
    digits = next((d for d, lim in enumerate((10, 1, 0.1, 0.01)) if half >= lim), 4)
    return f"{est:,.{digits}f} ± {half:,.{digits}f}"


def plot_legend(rows: list[dict[str, Any]]) -> MplFigure:
    """Colour patches with class names and mapped shares."""
    fig = _new_figure(4.2, 0.4 + 0.32 * len(rows))
    ax = fig.add_subplot()
    ax.axis("off")
    handles = [Patch(facecolor=r["colour"], edgecolor="#333333",
                     label=f"{r['index']}: {r['name']} ({100 * (r['mapped_share'] or 0):.1f} %)")
               for r in rows]
    ax.legend(handles=handles, loc="center left", frameon=False)
    return fig


def plot_areas(rows: list[dict[str, Any]], unit: str) -> MplFigure:
    """Mapped vs error-adjusted area per class, with the adjusted areas' 95 % intervals."""
    key = "km2" if unit == "km²" else "ha"
    fig = _new_figure(7.5, 0.9 + 0.45 * len(rows))
    ax = fig.add_subplot()
    y = np.arange(len(rows))
    mapped = [r[f"mapped_area_{key}"] for r in rows]
    adj = [r[f"area_{key}"] if r[f"area_{key}"] is not None else np.nan for r in rows]
    err = [((r[f"area_{key}_ci95"][1] - r[f"area_{key}_ci95"][0]) / 2)
           if r[f"area_{key}_ci95"][0] is not None else 0.0 for r in rows]
    ax.barh(y - 0.2, mapped, height=0.38, color="#b9c4d0", label="mapped (pixel count)")
    ax.barh(y + 0.2, adj, height=0.38, xerr=err, capsize=3,
            color=[r["colour"] for r in rows], label="error-adjusted, 95 % CI")
    ax.set_yticks(y, [r["name"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel(f"area ({unit})")
    fig.legend(loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    return fig


def plot_uncertainty(unc: dict[str, Any]) -> MplFigure:
    """Histogram of the uncertainty raster (band 1, predictive entropy)."""
    fig = _new_figure(6.5, 3.2)
    ax = fig.add_subplot()
    edges = np.asarray(unc["bin_edges"])
    ax.bar(edges[:-1], unc["counts"], width=np.diff(edges), align="edge", color="#2a6ebb")
    ax.axvline(unc["mean"], color="#c62828", lw=1.5, label=f"mean {unc['mean']:.3f}")
    ax.set_xlabel("predictive entropy (band 1 of uncertainty.tif)")
    ax.set_ylabel("pixels")
    ax.legend()
    return fig


def _save(fig: MplFigure, out: Path, name: str, title: str) -> doc.Figure:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    png = buf.getvalue()
    with atomic_path(out / f"{name}.png", suffix=".png") as tmp:
        tmp.write_bytes(png)
    return doc.Figure(title=title, png=png, path=f"{name}.png")


def _matrix_table(r: dict[str, Any], key: str, caption: str, fmt: Any) -> doc.Table:
    names = r["classes"]
    m = np.asarray(r[key], dtype=float)
    rows = [[f"**{n}**", *(fmt(v) for v in m[i]), fmt(m[i].sum())] for i, n in enumerate(names)]
    rows.append(["**total**", *(fmt(v) for v in m.sum(axis=0)), fmt(m.sum())])
    return doc.Table(["map \\ reference", *names, "total"], rows, caption)


def _summary_blocks(r: dict[str, Any], map_dir: Path, out: Path) -> list[doc.Block]:
    ref = r["reference"]
    blocks: list[doc.Block] = [
        doc.Heading(f"Map assessment: {Path(r['map']).name}", 1),
        doc.BulletList([
            f"map: `{r['map']}` ({r['shape'][1]} x {r['shape'][0]} px, {r['crs']}, pixel "
            f"{r['pixel_size'][0]:g} x {r['pixel_size'][1]:g}, mapped area "
            f"{_area(r['mapped_area_ha'])} ha = {_area(r['mapped_area_km2'])} km²)",
            f"reference: `{ref['path']}` ({ref['kind']}; {ref['n_reference_pixels']:,} reference "
            f"pixels" + (f", class field `{ref['class_field']}`" if ref["class_field"] else "")
            + ")",
            f"overall accuracy **{_f(r['overall_accuracy'])}** ± "
            f"{_f(r['overall_accuracy_se'])} (SE)",
        ]),
    ]
    if r["caveats"]:
        blocks.append(doc.Alert("caution", "Read before quoting these figures", r["caveats"]))
    quicklook = map_dir / "quicklook.png"
    if quicklook.is_file():
        blocks += [doc.Heading("Map"), doc.Figure(
            "quicklook of the map", quicklook.read_bytes(),
            Path(os.path.relpath(quicklook, out)).as_posix())]
    return blocks


def _area_blocks(r: dict[str, Any], out: Path) -> list[doc.Block]:
    rows = r["per_class"]
    unit = "km²" if r["mapped_area_ha"] >= 1e4 else "ha"
    table = [[f"**{c['name']}**", f"{c['mapped_pixels']:,}", _area(c["mapped_area_ha"]),
              _pm(c["area_ha"], c["area_ha_ci95"]), _area(c["mapped_area_km2"]),
              _pm(c["area_km2"], c["area_km2_ci95"])] for c in rows]
    return [
        doc.Heading("Legend"),
        _save(plot_legend(rows), out, "assessment_legend", "legend (mapped share of area)"),
        doc.Table(["index", "class", "colour"],
                  [[c["index"], c["name"], f"`{c['colour']}`"] for c in rows]),
        doc.Heading("Class areas"),
        doc.Para("Mapped area counts pixels; the error-adjusted area is the stratified "
                 "estimate from the reference data, ± the half-width of its 95 % confidence "
                 "interval (1.96 SE)."),
        doc.Table(["class", "mapped px", "mapped ha", "adjusted ha ± 95 % CI", "mapped km²",
                   "adjusted km² ± 95 % CI"], table),
        _save(plot_areas(rows, unit), out, "assessment_areas",
              "mapped and error-adjusted class areas"),
    ]


def _accuracy_blocks(r: dict[str, Any]) -> list[doc.Block]:
    rows = [[f"**{c['name']}**", f"{c['samples_in_stratum']:,}",
             f"{c['samples_of_reference_class']:,}",
             f"{_f(c['users_accuracy'])} ± {_f(c['users_accuracy_se'])}",
             f"{_f(c['producers_accuracy'])} ± {_f(c['producers_accuracy_se'])}"]
            for c in r["per_class"]]
    rows.append(["**overall**", f"{sum(c['samples_in_stratum'] for c in r['per_class']):,}", "",
                 f"{_f(r['overall_accuracy'])} ± {_f(r['overall_accuracy_se'])}", ""])
    return [
        doc.Heading("Accuracy"),
        doc.Table(["class", "samples mapped as class", "samples of reference class",
                   "user's accuracy ± SE", "producer's accuracy ± SE"], rows,
                  "Estimates ± one standard error; the strata are the map classes."),
        doc.Heading("Error matrix"),
        _matrix_table(r, "confusion_matrix", "Sample counts (rows: map class, columns: "
                      "reference class).", lambda v: f"{int(v):,}"),
        _matrix_table(r, "area_proportion_matrix", "Estimated area proportions p_ij = W_i "
                      "n_ij / n_i. (rows: map class, columns: reference class).",
                      lambda v: f"{v:.4f}"),
    ]


def _aoa_blocks(r: dict[str, Any]) -> list[doc.Block]:
    """Accuracy inside and outside the area of applicability (``aoa.tif`` beside the map)."""
    aoa = r.get("aoa")
    if not aoa:
        return []
    rows = [[where, f"{d['n_reference_pixels']:,}", _f(d["overall_accuracy"])]
            for where, d in aoa.items()]
    return [doc.Heading("Inside and outside the area of applicability"),
            doc.Table(["reference pixels", "n", "share mapped right"], rows,
                      "Pixel counts, not area-weighted: where the map extrapolates (outside, "
                      "aoa.tif), its accuracy is expected to drop.")]


def _method_blocks() -> list[doc.Block]:
    return [doc.Heading("Method"), doc.BulletList([
        "Stratified estimation (Olofsson et al. 2014, Remote Sensing of Environment 148, "
        "42-57): the strata are the map classes, `W_i` the mapped share of class i, `n_ij` "
        "the reference samples mapped as i with reference class j.",
        "Area proportions `p_ij = W_i n_ij / n_i.`; class area `A p_.k` with standard error "
        "`A sqrt(sum_i W_i^2 (n_ik/n_i.)(1 - n_ik/n_i.)/(n_i. - 1))` and 95 % CI ± 1.96 SE.",
        "Overall accuracy `sum_j p_jj`, user's `n_ii / n_i.`, producer's `p_jj / p_.j`, with "
        "the variances of the paper's equations 5-7.",
    ])]


def write_assessment(result: dict[str, Any], out: Path, map_dir: Path) -> tuple[Path, Path, Path]:
    """Write ``assessment.json``, ``.md`` and ``.html`` (and the PNGs) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / JSON_NAME
    atomic_write_json(json_path, result)
    blocks = _summary_blocks(result, Path(map_dir), out) + _area_blocks(result, out)
    unc = result.get("uncertainty")
    if unc:
        blocks += [doc.Heading("Uncertainty"), _save(
            plot_uncertainty(unc), out, "assessment_uncertainty",
            f"uncertainty histogram ({unc['n_pixels']:,} px, mean {unc['mean']:.3f})")]
    blocks += _accuracy_blocks(result) + _aoa_blocks(result) + _method_blocks()
    md_path, html_path = out / MD_NAME, out / HTML_NAME
    atomic_write_text(md_path, doc.to_markdown(blocks))
    atomic_write_text(html_path, doc.to_html(f"Map assessment: {Path(result['map']).name}",
                                             blocks))
    return json_path, md_path, html_path
