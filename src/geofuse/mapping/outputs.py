"""The map's files: partial tiled GeoTIFFs written window by window, then COGs and a quicklook.

Products (all on the stack's grid: same CRS, transform and size):

- ``classes.tif``: uint8 class indices, nodata 255, an embedded colour table, class names in
  the band description and in the ``class_names`` tag (a JSON list, dataset and band 1) plus
  ``class_<i>`` tags; overviews by mode;
- ``probabilities.tif`` (``--probabilities``): one uint8 band per class named after it, the
  probability in percent (0-100, GDAL scale 0.01), nodata 255;
- ``uncertainty.tif``: float32 bands (see :func:`geofuse.mapping.infer.summarise`), NaN
  nodata.

A regression run's map is ``values.tif`` instead, with the members' spread as its
uncertainty (:mod:`geofuse.mapping.values`).

While a map is computed they live as plain tiled GeoTIFFs in a partial folder; each window
is written by opening the file, writing and closing it, so that what the resume record says
is done is on disk. At the end each is copied to a Cloud-Optimised GeoTIFF beside its final
name and renamed onto it, so a product is never half-written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from matplotlib.figure import Figure
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from geofuse.errors import write_failure
from geofuse.io_utils import atomic_path
from geofuse.raster.io import Grid, write_cog

CLASS_NODATA = 255
STRIP_ROWS = 256  #: rows read at once when a class map is counted
QUICKLOOK_SIDE = 1024
#: Colours (RGB) of classes whose name holds a keyword, first match wins; others get tab20.
KEYWORD_COLOURS: tuple[tuple[tuple[str, ...], tuple[int, int, int]], ...] = (
    (("no_change", "nochange", "unchanged", "background"), (200, 200, 200)),
    (("water", "river", "lake", "sea", "ocean"), (31, 120, 180)),
    (("wetland", "marsh", "swamp"), (106, 61, 154)),
    (("forest", "tree", "wood"), (34, 120, 40)),
    (("shrub", "scrub", "bush"), (166, 200, 90)),
    (("grass", "pasture", "meadow", "parcel", "herb"), (178, 223, 138)),
    (("agri", "crop", "farm", "cultiv", "arable"), (255, 217, 47)),
    (("urban", "built", "city", "settle", "building", "artificial", "land_take", "change"),
     (227, 26, 28)),
    (("bare", "soil", "sand", "rock", "desert"), (191, 129, 45)),
    (("snow", "ice", "glacier"), (235, 245, 255)),
    (("cloud",), (250, 250, 250)),
)
_TAB20 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896",
          "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5")


def class_colours(names: Sequence[str]) -> list[tuple[int, int, int]]:
    """An RGB colour per class: by keyword of its name (water blue, forest green, ...),
    else the next unused tab20 colour."""
    out: list[tuple[int, int, int]] = []
    spare = iter([tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in _TAB20] * 13)
    for name in names:
        low = name.lower()
        colour = next((rgb for keys, rgb in KEYWORD_COLOURS if any(k in low for k in keys)),
                      None)
        while colour is None or colour in out:
            colour = next(spare)  # type: ignore[assignment]
        out.append(colour)
    return out


@dataclass(frozen=True)
class Product:
    """One output raster: name, bands, data type, nodata and metadata."""

    name: str
    descriptions: list[str]
    dtype: str
    nodata: float
    overview_resampling: str
    tags: dict[str, str] = field(default_factory=dict)
    colormap: dict[int, tuple[int, int, int, int]] | None = None
    scale: float | None = None

    @property
    def filename(self) -> str:
        return f"{self.name}.tif"


def build_products(
    class_names: list[str], uncertainty: list[str], label_codes: dict[str, int] | None = None,
    label_unlabelled: int | None = None,
) -> dict[str, Product]:
    """The class, probability and uncertainty products of a map.

    ``label_codes`` (class name -> code of the training label raster) and its unlabelled code
    are tagged on the class map, so that ``geofuse assess --labels`` reads such a raster as is.
    """
    colours = class_colours(class_names)
    cmap = {i: (*rgb, 255) for i, rgb in enumerate(colours)}
    cmap[CLASS_NODATA] = (0, 0, 0, 0)
    tags = {"class_names": json.dumps(class_names),
            **{f"class_{i}": n for i, n in enumerate(class_names)}}
    codes = ({"label_codes": json.dumps(label_codes), "label_unlabelled": str(label_unlabelled)}
             if label_codes else {})
    return {
        "classes": Product("classes", ["class"], "uint8", CLASS_NODATA, "mode",
                           {**tags, **codes}, cmap),
        "probabilities": Product("probabilities", list(class_names), "uint8", CLASS_NODATA,
                                 "average", {"unit": "percent", **tags}, scale=0.01),
        "uncertainty": Product("uncertainty", list(uncertainty), "float32", float("nan"),
                               "average", {"entropy": "normalised by ln(number of classes)"}),
    }


def create_partial(path: Path, grid: Grid, product: Product, block: int) -> None:
    """An empty tiled (``block`` px), compressed GeoTIFF for ``product`` (nodata everywhere)."""
    try:
        with rasterio.open(
            path, "w", driver="GTiff", width=grid.width, height=grid.height,
            count=len(product.descriptions), dtype=product.dtype, crs=grid.crs,
            transform=grid.transform, nodata=product.nodata, tiled=True,
            blockxsize=block, blockysize=block, compress="deflate", zlevel=1,
            bigtiff="IF_SAFER",
        ) as dst:
            _describe(dst, product)
    except RasterioError as err:
        raise write_failure(err, path) from None


def _describe(dst: Any, product: Product) -> None:
    dst.descriptions = tuple(product.descriptions)
    dst.update_tags(**product.tags)
    if "class_names" in product.tags:
        dst.update_tags(1, class_names=product.tags["class_names"])
    if product.colormap is not None:
        dst.write_colormap(1, product.colormap)
    if product.scale is not None:
        dst.scales = (product.scale,) * len(product.descriptions)


def write_window(path: Path, row: int, col: int, data: np.ndarray) -> None:
    """Write ``data`` ((bands, h, w) or (h, w)) at pixel ``(row, col)`` of a partial file,
    then close it (the window is on disk when this returns)."""
    data = data[None] if data.ndim == 2 else data
    window = Window(col, row, data.shape[2], data.shape[1])
    try:
        with rasterio.open(path, "r+") as dst:
            dst.write(data, window=window)
    except RasterioError as err:
        raise write_failure(err, path) from None


def readable(path: Path) -> bool:
    """Whether a partial file opens (a kill while it was written may have broken it)."""
    try:
        with rasterio.open(path):
            return True
    except RasterioError:
        return False


def publish(partial: Path, target: Path, product: Product) -> Path:
    """Copy ``partial`` to ``target`` as a COG with overviews, atomically; metadata kept."""
    try:
        with atomic_path(target) as tmp:
            write_cog(partial, tmp, overview_resampling=product.overview_resampling)
    except RasterioError as err:
        raise write_failure(err, target) from None
    return target


def class_counts(path: Path, num_classes: int) -> tuple[np.ndarray, int]:
    """Pixels per class of a class map and its nodata pixels, read block row by block row."""
    counts = np.zeros(256, dtype=np.int64)
    with rasterio.open(path) as src:
        for row in range(0, src.height, STRIP_ROWS):
            h = min(STRIP_ROWS, src.height - row)
            block = src.read(1, window=Window(0, row, src.width, h))
            counts += np.bincount(block.ravel(), minlength=256)
    return counts[:num_classes], int(counts[CLASS_NODATA])


def quicklook_figure(path: Path, class_names: list[str], title: str,
                     colours_rgb: Sequence[tuple[int, int, int]] | None = None) -> Figure:
    """The class map (decimated to at most :data:`QUICKLOOK_SIDE` pixels a side, nodata
    white) with a legend of class colours (``colours_rgb``, default :func:`class_colours`)
    and names."""
    from matplotlib.patches import Patch

    with rasterio.open(path) as src:
        factor = max(1, int(np.ceil(max(src.height, src.width) / QUICKLOOK_SIDE)))
        shape = (max(1, src.height // factor), max(1, src.width // factor))
        classes = src.read(1, out_shape=shape, resampling=Resampling.nearest)
    colours = np.array(colours_rgb or class_colours(class_names), dtype=np.uint8)
    palette = np.full((256, 3), 255, dtype=np.uint8)
    palette[:len(colours)] = colours
    fig = Figure(figsize=(8, 8 * shape[0] / max(shape[1], 1)))
    ax = fig.add_subplot()
    ax.imshow(palette[classes], interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    handles = [Patch(facecolor=np.asarray(c) / 255, edgecolor="black", label=n)
               for n, c in zip(class_names, colours, strict=True)]
    handles.append(Patch(facecolor="white", edgecolor="black", label="nodata"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01),
              ncol=min(len(handles), 6), fontsize=8, frameon=False)
    return fig


def save_figure(fig: Figure, target: Path) -> Path:
    """Save a figure as PNG, atomically."""
    with atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png", bbox_inches="tight")
    return target


def remove_tree(folder: Path) -> None:
    """Delete the partial folder (its files, then itself)."""
    if not folder.is_dir():
        return
    for f in folder.iterdir():
        f.unlink()
    os.rmdir(folder)
