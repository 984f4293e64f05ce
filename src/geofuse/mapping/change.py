"""``geofuse change``: land-cover change between two class maps of one grid (from-to).

Post-classification comparison of a map of year A and one of year B (``geofuse predict`` on
two stacks prepared on the same ``grid``): the transition matrix in pixels and hectares, the
gross gain, loss and net change of every class, and ``change.tif``, a class map whose classes
are the observed transitions (``forest -> urban``) and the stable classes (``forest (no
change)``, or one ``no change`` class with ``merge_stable``). ``change.tif`` carries class
names and a colour table like ``classes.tif``, so ``geofuse assess change.tif
--sample-design N`` draws the stratified sample that good practice asks for to estimate change
areas with confidence intervals (Olofsson et al. 2014), and ``geofuse vectorize`` publishes it.
Both maps are read in strips, so memory stays bounded whatever their size.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from geofuse.errors import RasterError
from geofuse.io_utils import atomic_write_json, atomic_write_text, scratch_dir
from geofuse.mapping.assess_io import ClassMap, open_class_map, strip_windows
from geofuse.mapping.outputs import (
    CLASS_NODATA,
    Product,
    class_colours,
    create_partial,
    publish,
    quicklook_figure,
    save_figure,
    write_window,
)

#: Classes of change.tif: codes 0..254 (255 is nodata).
MAX_CLASSES = 255
NO_CHANGE = "no change"


@dataclass
class ChangeResult:
    """The written files and the record of ``change.json``."""

    map_path: Path
    record_path: Path
    markdown_path: Path
    record: dict[str, Any]


def detect_change(
    map_a: str | Path, map_b: str | Path, out_dir: str | Path, merge_stable: bool = False,
    classes: list[str] | None = None, labels: tuple[str, str] = ("A", "B"),
) -> ChangeResult:
    """Compare two class maps pixel by pixel and write ``change.tif``, ``change.json``,
    ``change.md`` and ``change_quicklook.png`` in ``out_dir``.

    Raises:
        DataNotFoundError, RasterError: as :func:`open_class_map`; maps on different grids;
            more transitions than a uint8 map holds.
    """
    a, b = open_class_map(map_a, classes), open_class_map(map_b, classes)
    _check_same_grid(a, b)
    _check_names(a, b)
    counts = _transitions(a, b)
    names, code_of = _change_classes(a, b, counts, merge_stable)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "change.tif"
    lookup = np.full(len(a.class_names) * len(b.class_names), CLASS_NODATA, np.uint8)
    for (i, j), code in code_of.items():
        lookup[i * len(b.class_names) + j] = code
    colours = _colours(names, code_of, a, b)
    _write_change_map(target, a, b, names, colours, lookup)
    record = _record(a, b, counts, names, labels, merge_stable)
    record_path = out / "change.json"
    atomic_write_json(record_path, record)
    md = out / "change.md"
    atomic_write_text(md, render_markdown(record))
    save_figure(quicklook_figure(target, names, f"Change {labels[0]} -> {labels[1]}", colours),
                out / "change_quicklook.png")
    return ChangeResult(target, record_path, md, record)


def _check_same_grid(a: ClassMap, b: ClassMap) -> None:
    """Same CRS and size, and transforms equal to a millionth of a pixel."""
    ta, tb = a.grid.transform, b.grid.transform
    tol = 1e-6 * max(abs(ta.a), abs(ta.e))
    parts = []
    if a.grid.crs != b.grid.crs:
        parts.append(f"CRS {a.grid.crs_string()} vs {b.grid.crs_string()}")
    if (a.grid.width, a.grid.height) != (b.grid.width, b.grid.height):
        parts.append(f"size {a.grid.width}x{a.grid.height} vs {b.grid.width}x{b.grid.height} px")
    if max(abs(ta.a - tb.a), abs(ta.e - tb.e)) > tol:
        parts.append(f"pixel size {ta.a!r} x {-ta.e!r} vs {tb.a!r} x {-tb.e!r}")
    if max(abs(ta.c - tb.c), abs(ta.f - tb.f), abs(ta.b - tb.b), abs(ta.d - tb.d)) > tol:
        parts.append(f"origin ({ta.c!r}, {ta.f!r}) vs ({tb.c!r}, {tb.f!r})")
    if parts:
        raise RasterError(
            f"class maps {str(a.path)!r} and {str(b.path)!r} are on different grids "
            f"({'; '.join(parts)}); map both dates on one reference grid (the same 'grid' "
            "section in both study configs), or warp one onto the other with nearest "
            "neighbour ('gdalwarp -r near -te ... -tr ...')"
        )


def _check_names(a: ClassMap, b: ClassMap) -> None:
    """Stable pixels are found by class name: maps with no common name are refused, maps
    whose names differ are warned about."""
    common = set(a.class_names) & set(b.class_names)
    if not common:
        raise RasterError(
            f"class maps {str(a.path)!r} ({a.names_from}: {a.class_names}) and {str(b.path)!r} "
            f"({b.names_from}: {b.class_names}) share no class name, so every pixel would "
            "count as change; give both the same names (--classes a,b,c for maps without a "
            "class_names tag)"
        )
    if set(a.class_names) != set(b.class_names):
        warnings.warn(
            f"the class maps name different classes ({sorted(set(a.class_names) - common)} "
            f"only in {a.path.name}, {sorted(set(b.class_names) - common)} only in "
            f"{b.path.name}); pixels of those classes always count as change",
            UserWarning, stacklevel=3)


def _transitions(a: ClassMap, b: ClassMap) -> np.ndarray:
    """Pixels per (class in A, class in B), over pixels mapped in both."""
    ka, kb = len(a.class_names), len(b.class_names)
    counts = np.zeros(ka * kb, np.int64)
    with rasterio.open(a.path) as sa, rasterio.open(b.path) as sb:
        for win in strip_windows(a.grid):
            va, vb = sa.read(1, window=win), sb.read(1, window=win)
            both = (va != a.nodata) & (vb != b.nodata)
            counts += np.bincount(va[both].astype(np.int64) * kb + vb[both], minlength=ka * kb)
    return counts.reshape(ka, kb)


def _change_classes(a: ClassMap, b: ClassMap, counts: np.ndarray, merge_stable: bool
                    ) -> tuple[list[str], dict[tuple[int, int], int]]:
    """Class names of change.tif and the code of every observed (from, to) pair: stable
    classes first (or one ``no change``), then transitions in from-to order."""
    names: list[str] = []
    code_of: dict[tuple[int, int], int] = {}
    pairs = [(i, j) for i in range(counts.shape[0]) for j in range(counts.shape[1])
             if counts[i, j] > 0]
    stable = [(i, j) for i, j in pairs if a.class_names[i] == b.class_names[j]]
    moved = [p for p in pairs if p not in stable]
    if merge_stable and stable:
        names.append(NO_CHANGE)
        code_of.update({p: 0 for p in stable})
    else:
        for i, j in stable:
            code_of[(i, j)] = len(names)
            names.append(f"{a.class_names[i]} ({NO_CHANGE})")
    for i, j in moved:
        code_of[(i, j)] = len(names)
        names.append(f"{a.class_names[i]} -> {b.class_names[j]}")
    if len(names) > MAX_CLASSES:
        raise RasterError(
            f"the maps {str(a.path)!r} and {str(b.path)!r} show {len(names)} different "
            f"transitions, more than a class map holds ({MAX_CLASSES}); merge classes "
            "before comparing, or use --merge-stable"
        )
    return names, code_of


def _write_change_map(target: Path, a: ClassMap, b: ClassMap, names: list[str],
                      colours: list[tuple[int, int, int]], lookup: np.ndarray) -> None:
    """``change.tif``: transition codes through ``lookup`` (nodata where either map is)."""
    cmap = {i: (*rgb, 255) for i, rgb in enumerate(colours)}
    cmap[CLASS_NODATA] = (0, 0, 0, 0)
    tags = {"class_names": json.dumps(names), **{f"class_{i}": n for i, n in enumerate(names)}}
    product = Product("change", ["change"], "uint8", CLASS_NODATA, "mode", tags, cmap)
    kb = len(b.class_names)
    with scratch_dir(target) as tmp, rasterio.open(a.path) as sa, rasterio.open(b.path) as sb:
        partial = tmp / "change.tif"
        create_partial(partial, a.grid, product, block=256)
        for win in strip_windows(a.grid):
            va = sa.read(1, window=win).astype(np.int64)
            vb = sb.read(1, window=win).astype(np.int64)
            both = (va != a.nodata) & (vb != b.nodata)
            codes = np.full(va.shape, CLASS_NODATA, np.uint8)
            codes[both] = lookup[va[both] * kb + vb[both]]
            write_window(partial, int(win.row_off), 0, codes)
        publish(partial, target, product)


def _colours(names: list[str], code_of: dict[tuple[int, int], int], a: ClassMap, b: ClassMap
             ) -> list[tuple[int, int, int]]:
    """Stable classes in a pale version of their colour, transitions in the colour of the
    class they became, no change in light grey; land-cover colours come from the maps'
    colour tables (map A first), else from :func:`class_colours` over all names."""
    land = list(dict.fromkeys([*a.class_names, *b.class_names]))
    fallback = dict(zip(land, class_colours(land), strict=True))
    own = {**dict(zip(b.class_names, b.colours, strict=True)),
           **dict(zip(a.class_names, a.colours, strict=True))}

    def colour(name: str) -> tuple[int, int, int]:
        if name in own:
            hexa = own[name].lstrip("#")
            return (int(hexa[0:2], 16), int(hexa[2:4], 16), int(hexa[4:6], 16))
        return fallback[name]

    pair = {code: p for p, code in code_of.items()}  # a (from, to) pair of every code
    out = []
    for code, name in enumerate(names):
        i, j = pair[code]
        if name == NO_CHANGE and a.class_names[i] == b.class_names[j]:
            out.append((215, 215, 215))
        elif a.class_names[i] == b.class_names[j]:
            rgb = colour(a.class_names[i])
            out.append((int(rgb[0] + (255 - rgb[0]) * 0.6), int(rgb[1] + (255 - rgb[1]) * 0.6),
                        int(rgb[2] + (255 - rgb[2]) * 0.6)))
        else:
            out.append(colour(b.class_names[j]))
    return out


def _record(a: ClassMap, b: ClassMap, counts: np.ndarray, names: list[str],
            labels: tuple[str, str], merge_stable: bool) -> dict[str, Any]:
    ha = a.pixel_area_m2 / 1e4
    both = int(counts.sum())
    stable = sum(int(counts[i, j]) for i in range(counts.shape[0])
                 for j in range(counts.shape[1]) if a.class_names[i] == b.class_names[j])
    per_class = []
    for name in dict.fromkeys([*a.class_names, *b.class_names]):
        ia = a.class_names.index(name) if name in a.class_names else None
        ib = b.class_names.index(name) if name in b.class_names else None
        area_a = int(counts[ia].sum()) if ia is not None else 0
        area_b = int(counts[:, ib].sum()) if ib is not None else 0
        kept = int(counts[ia, ib]) if ia is not None and ib is not None else 0
        per_class.append({
            "class": name, "area_ha_a": area_a * ha, "area_ha_b": area_b * ha,
            "loss_ha": (area_a - kept) * ha, "gain_ha": (area_b - kept) * ha,
            "net_ha": (area_b - area_a) * ha,
            "net_percent": 100.0 * (area_b - area_a) / area_a if area_a else None,
        })
    return {
        "map_a": str(a.path), "map_b": str(b.path), "labels": list(labels),
        "pixel_area_m2": a.pixel_area_m2, "compared_pixels": both,
        "compared_area_ha": both * ha,
        "changed_area_ha": (both - stable) * ha,
        "changed_fraction": (both - stable) / both if both else 0.0,
        "classes_a": a.class_names, "classes_b": b.class_names,
        "matrix_pixels": counts.tolist(),
        "matrix_ha": (counts * ha).tolist(),
        "per_class": per_class, "change_classes": names, "merge_stable": merge_stable,
    }


def render_markdown(record: dict[str, Any]) -> str:
    """The transition matrix (ha) and per-class gains and losses."""
    la, lb = record["labels"]
    head = ["from \\ to", *record["classes_b"], "total"]
    lines = [
        f"# Land-cover change {la} -> {lb}", "",
        f"`{record['map_a']}` ({la}) against `{record['map_b']}` ({lb}): "
        f"{record['compared_area_ha']:.1f} ha mapped in both, "
        f"{record['changed_area_ha']:.1f} ha ({record['changed_fraction']:.1%}) changed class.",
        "", "## Transitions (ha; rows: " + la + ", columns: " + lb + ")", "",
        "| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|",
    ]
    for name, row in zip(record["classes_a"], record["matrix_ha"], strict=True):
        cells = [f"{v:.2f}" for v in row]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {sum(row):.2f} |")
    lines += ["", "## Per class (ha)", "",
              f"| class | {la} | {lb} | loss | gain | net | net % |",
              "|---|---|---|---|---|---|---|"]
    for c in record["per_class"]:
        pct = "n/a" if c["net_percent"] is None else f"{c['net_percent']:+.1f}"
        lines.append(f"| {c['class']} | {c['area_ha_a']:.2f} | {c['area_ha_b']:.2f} | "
                     f"{c['loss_ha']:.2f} | {c['gain_ha']:.2f} | {c['net_ha']:+.2f} | {pct} |")
    lines += ["", "These are mapped areas: map errors in either year add up in the change, so "
              "a small true change can hide under them. For change areas with confidence "
              "intervals, draw a stratified sample of change.tif (`geofuse assess change.tif "
              "--sample-design N`), label it, and assess change.tif with it (Olofsson et al. "
              "2014).", ""]
    return "\n".join(lines)


def summary(record: dict[str, Any]) -> str:
    """One line for the console."""
    gains = sorted(record["per_class"], key=lambda c: -abs(c["net_ha"]))[:3]
    moves = ", ".join(f"{c['class']} {c['net_ha']:+.1f} ha" for c in gains)
    return (f"{record['changed_area_ha']:.1f} ha of {record['compared_area_ha']:.1f} ha "
            f"({record['changed_fraction']:.1%}) changed class; largest net changes: {moves}")
