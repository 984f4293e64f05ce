"""A regression run's map: ``values.tif`` and the members' spread (``uncertainty.tif``).

``values.tif`` is float32, the estimate per pixel in the target's unit (the band description
and the ``value_name`` tag name it), NaN nodata, overviews by average. With several members (a
study's fold models, MC dropout) ``uncertainty.tif`` holds their standard deviation
(``member_std``, same unit); one member gives none. Partial files, resume and COG publication
are those of :mod:`geofuse.mapping.outputs`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from matplotlib.figure import Figure
from rasterio.enums import Resampling
from rasterio.windows import Window

from geofuse.mapping import outputs
from geofuse.mapping.outputs import QUICKLOOK_SIDE, STRIP_ROWS, Product


def summarise_values(member_values: list[np.ndarray], nodata: np.ndarray
                     ) -> dict[str, np.ndarray]:
    """Values (1, h, w) float32 (NaN = nodata): the mean of the members' estimates, and with
    several members their standard deviation (``uncertainty``, in the value's unit)."""
    stack = np.stack(member_values).astype(np.float32)[:, 0]  # (M, h, w)
    invalid = nodata | ~np.isfinite(stack).all(axis=0)
    values = np.where(invalid, np.nan, stack.mean(axis=0)).astype(np.float32)
    out = {"values": values[None]}
    if len(member_values) > 1:
        out["uncertainty"] = np.where(invalid, np.nan, stack.std(axis=0)).astype(
            np.float32)[None]
    return out


def build_value_products(value_name: str, uncertainty: list[str]) -> dict[str, Product]:
    """The products of a regression map: values, and the members' spread when there is one."""
    tags = {"value_name": value_name}
    products = {"values": Product("values", [value_name], "float32", float("nan"), "average",
                                  tags)}
    if uncertainty:
        products["uncertainty"] = Product(
            "uncertainty", list(uncertainty), "float32", float("nan"), "average",
            {**tags, "member_std": f"standard deviation of the members' {value_name}"})
    return products


def value_stats(path: Path) -> dict[str, Any]:
    """Valid pixels, minimum, mean and maximum of a value map, read block row by block row."""
    n, total, lo, hi = 0, 0.0, np.inf, -np.inf
    with rasterio.open(path) as src:
        for row in range(0, src.height, STRIP_ROWS):
            h = min(STRIP_ROWS, src.height - row)
            block = src.read(1, window=Window(0, row, src.width, h))
            valid = block[np.isfinite(block)]
            if valid.size:
                n += valid.size
                total += float(valid.sum(dtype=np.float64))
                lo, hi = min(lo, float(valid.min())), max(hi, float(valid.max()))
    return {"valid_pixels": n, "min": lo if n else None, "mean": total / n if n else None,
            "max": hi if n else None}


def value_quicklook_figure(path: Path, value_name: str, title: str) -> Figure:
    """The value map (decimated as :func:`quicklook_figure`, nodata white) with a colour bar."""
    with rasterio.open(path) as src:
        factor = max(1, int(np.ceil(max(src.height, src.width) / QUICKLOOK_SIDE)))
        shape = (max(1, src.height // factor), max(1, src.width // factor))
        values = src.read(1, out_shape=shape, resampling=Resampling.nearest)
    fig = Figure(figsize=(8, 8 * shape[0] / max(shape[1], 1)))
    ax = fig.add_subplot()
    finite = values[np.isfinite(values)]
    vmin, vmax = (np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=vmin, vmax=vmax,
                      interpolation="nearest")
    fig.colorbar(image, ax=ax, label=f"{value_name} (2-98 percentile stretch)",
                 orientation="horizontal", fraction=0.05, pad=0.02)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    return fig


def publish_values(products: dict[str, Product], partial_path: Callable[[str], Path],
                   out: Path, value_name: str, title: str) -> dict[str, str]:
    """Publish the value products as COGs with a quicklook; the class products of an earlier
    map in ``out`` (and its spread, when this map has none) are removed."""
    written = {name: outputs.publish(partial_path(name), out / product.filename, product).name
               for name, product in products.items()}
    stale = ("classes", "probabilities") + (() if "uncertainty" in written else
                                             ("uncertainty",))
    for name in stale:
        (out / f"{name}.tif").unlink(missing_ok=True)
    fig = value_quicklook_figure(out / "values.tif", value_name, title)
    written["quicklook"] = outputs.save_figure(fig, out / "quicklook.png").name
    return written
