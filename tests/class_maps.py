"""Class maps written as ``geofuse predict`` writes them, for the map post-processing tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rasterio.transform import from_origin

from geofuse.mapping.outputs import build_products, create_partial, publish, write_window
from geofuse.raster.io import Grid, parse_crs

ORIGIN = (500_000.0, 5_100_000.0)


def write_class_map(folder: Path, name: str, data: np.ndarray, names: list[str],
                    x0: float = ORIGIN[0], pixel: float = 10.0, y0: float = ORIGIN[1],
                    crs: str = "EPSG:32633") -> Path:
    """``folder/name.tif``: uint8 classes with a colour table and class-name tags, a COG in
    ``crs`` at ``pixel`` metres."""
    grid = Grid(parse_crs(crs, "crs"), from_origin(x0, y0, pixel, pixel),
                data.shape[1], data.shape[0])
    product = build_products(names, ["entropy"])["classes"]
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"{name}.partial.tif"
    create_partial(partial, grid, product, block=32)
    write_window(partial, 0, 0, data)
    target = publish(partial, folder / f"{name}.tif", product)
    partial.unlink()
    return target
