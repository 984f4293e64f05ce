"""labels.raster: class-balanced, spaced patch centres from a label raster (prepare + extract)."""

from __future__ import annotations

import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine
from rasterio.features import rasterize
from rasterio.warp import transform as transform_xy
from typer.testing import CliRunner

from geofuse.cli import app
from geofuse.config import load_config
from geofuse.data.extract import extract_patches
from geofuse.data.patchset import PatchSet
from geofuse.data.synthetic import generate_scene

runner = CliRunner()
CAP, MIN_DIST, BLOCK = 30, 5.0, 32
CLASSES = ["Agriculture", "Forest", "Parcels", "Urban", "Water"]


def _invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def _write_labels(folder: Path, name: str, crs: str, res: float, offset: float = 0.0,
                  codes: bool = True) -> Path:
    """Rasterize the scene's polygons (codes 1..K, 0 elsewhere) onto a grid of ``res`` m."""
    with rasterio.open(folder / "s2.tif") as src:
        left, bottom, right, top = src.bounds
        s2_crs = src.crs
    gdf = gpd.read_file(folder / "labels.geojson").to_crs(s2_crs)
    gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty & gdf["class"].isin(CLASSES)]
    shapes = [(geom.buffer(0), CLASSES.index(c) + 1) for geom, c in
              zip(gdf.geometry, gdf["class"], strict=True)]
    transform = Affine(res, 0, left + offset, 0, -res, top - offset)
    width, height = int((right - left) // res), int((top - bottom) // res)
    data = rasterize(shapes, out_shape=(height, width), transform=transform, fill=0,
                     dtype="uint8") if codes else np.zeros((height, width), "uint8")
    path = folder / name
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=1,
                       dtype="uint8", crs=crs, transform=transform) as dst:
        dst.write(data, 1)
    return path


def _config(folder: Path, name: str, labels: dict, **extract: object) -> Path:
    data = yaml.safe_load((folder / "study.yaml").read_text())
    data["labels"] = labels
    data["extract"] = {"patch_size": 8, "per_class": CAP, "min_distance": MIN_DIST,
                       "block_size": BLOCK, "output": f"{Path(name).stem}.h5", **extract}
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("rasterlab")
    generate_scene(folder, seed=7, size_m=4000.0, n_polygons=30)
    # 20 m, offset by 5 m: the labels must be warped onto the 10 m stack grid
    _write_labels(folder, "labels20.tif", "EPSG:32718", 20.0, offset=5.0)
    cfg = _config(folder, "raster.yaml", {"raster": "labels20.tif"})
    code, out = _invoke("prepare", "-c", str(cfg))
    assert code == 0, out
    code, out = _invoke("extract", "-c", str(cfg))
    assert code == 0, out
    return {"folder": folder, "cfg": cfg, "labels": folder / "labels20.tif",
            "patches": folder / "work" / "raster.h5"}


def test_labels_equal_raster_code_at_centre(scene: dict[str, Path]) -> None:
    ps = PatchSet.load(scene["patches"])
    assert ps.provenance["labels_raster"].endswith("labels20.tif")
    codes = ps.provenance["sampling"]["class_codes"]
    assert ps.class_names == list(codes)
    with rasterio.open(scene["labels"]) as src:
        data = src.read(1)
        rows, cols = rasterio.transform.rowcol(src.transform, ps.coords[:, 0], ps.coords[:, 1])
    at_centre = data[np.asarray(rows), np.asarray(cols)]
    expected = np.array([codes[ps.class_names[k]] for k in ps.y])
    assert (at_centre == expected).all()
    assert (at_centre != 0).all()


def test_balanced_capped_and_spaced(scene: dict[str, Path]) -> None:
    ps = PatchSet.load(scene["patches"])
    counts = np.bincount(ps.y, minlength=len(ps.class_names))
    assert counts.max() <= CAP
    assert (counts == CAP).sum() >= len(counts) - 1  # balanced (a tiny class may fall short)
    with rasterio.open(scene["folder"] / "work" / "stack.tif") as src:
        inv = ~src.transform
    px = np.column_stack(inv * (ps.coords[:, 0], ps.coords[:, 1]))
    d = np.sqrt(((px[:, None, :] - px[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    assert d.min() >= MIN_DIST - 1e-6
    # whole patches inside the stack, and groups are the blocks of the centres
    assert ps.x.shape[2:] == (8, 8)
    c, r = np.floor(px[:, 0]).astype(int), np.floor(px[:, 1]).astype(int)
    assert (c >= 4).all() and (r >= 4).all()
    want = [f"block:{x // BLOCK}_{y // BLOCK}" for x, y in zip(c, r, strict=True)]
    assert list(ps.groups) == want


def test_splits_grouped_and_stratified(scene: dict[str, Path]) -> None:
    ps = PatchSet.load(scene["patches"])
    for g in np.unique(ps.groups):
        assert len(np.unique(ps.split[ps.groups == g])) == 1
    for k in range(len(ps.class_names)):
        assert set(np.unique(ps.split[ps.y == k]).tolist()) >= {0, 1}


def test_other_crs_and_class_codes(scene: dict[str, Path]) -> None:
    folder = scene["folder"]
    _write_labels(folder, "labels_ll.tif", "EPSG:32718", 10.0)
    path = folder / "labels_ll.tif"
    # reproject the 10 m labels to lon/lat to exercise a CRS change
    with rasterio.open(path) as src:
        from rasterio.warp import calculate_default_transform, reproject
        t, w, h = calculate_default_transform(src.crs, "EPSG:4326", src.width, src.height,
                                              *src.bounds)
        out = np.zeros((h, w), "uint8")
        reproject(src.read(1), out, src_transform=src.transform, src_crs=src.crs,
                  dst_transform=t, dst_crs="EPSG:4326", resampling=0)
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=1, dtype="uint8",
                       crs="EPSG:4326", transform=t) as dst:
        dst.write(out, 1)
    cfg = _config(folder, "ll.yaml", {"raster": "labels_ll.tif",
                                      "class_codes": {"forest": 2, "water": 5, "ghost": 9}})
    with pytest.warns(UserWarning, match="ghost"):
        ps = extract_patches(load_config(cfg), progress=False)
    assert ps.class_names == ["forest", "water"]
    xs, ys = transform_xy(ps.crs, "EPSG:4326", ps.coords[:, 0].tolist(), ps.coords[:, 1].tolist())
    rows, cols = rasterio.transform.rowcol(t, xs, ys)
    codes = out[np.asarray(rows), np.asarray(cols)]
    expected = np.array([2, 5])[ps.y]
    assert (codes == expected).mean() > 0.95  # pixel edges may round either way


@pytest.mark.parametrize("case", ["missing", "no_crs", "outside", "unlabelled", "both"])
def test_bad_inputs_exit_2_with_one_line(scene: dict[str, Path], case: str) -> None:
    folder = scene["folder"]
    labels: dict = {"raster": f"{case}.tif"}
    if case == "no_crs":
        with rasterio.open(folder / f"{case}.tif", "w", driver="GTiff", width=10, height=10,
                           count=1, dtype="uint8", transform=Affine(1, 0, 0, 0, -1, 10)) as d:
            d.write(np.ones((10, 10), "uint8"), 1)
    elif case == "outside":
        with rasterio.open(folder / f"{case}.tif", "w", driver="GTiff", width=10, height=10,
                           count=1, dtype="uint8", crs="EPSG:32718",
                           transform=Affine(10, 0, 100.0, 0, -10, 1000.0)) as d:
            d.write(np.ones((10, 10), "uint8"), 1)
    elif case == "unlabelled":
        _write_labels(folder, f"{case}.tif", "EPSG:32718", 20.0, codes=False)
    elif case == "both":
        labels = {"raster": "labels20.tif", "path": "labels.geojson"}
    cfg = _config(folder, f"bad_{case}.yaml", labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, out = _invoke("extract", "-c", str(cfg))
    assert code == 2, out
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, out
    assert "labels" in lines[0] or case in lines[0], out
