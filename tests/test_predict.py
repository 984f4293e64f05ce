"""``geofuse predict`` with patch classifiers: products, the sliding-window engine against a
naive per-pixel loop, stride cells, the forest baseline, and one-line errors on bad stacks.

The scene is a small synthetic stack (64 x 80 px, 4 bands, 10 m, EPSG:32718) with three
classes in blocks, a cloud hole and one pixel where a single band is missing; the run is a
SimpleCNN trained for one epoch on patches cut from it (helpers reused by the other
``test_predict_*`` files).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from typer.testing import CliRunner

from geofuse.cli import app
from geofuse.config import StudyConfig, parse_config
from geofuse.data.normalize import BandStats, normalize
from geofuse.data.patchset import PatchSet
from geofuse.data.stack_reader import StackPatchReader
from geofuse.evaluation.evaluate import load_task
from geofuse.mapping.predict import PredictOptions, predict_map
from geofuse.raster.manifest import StackManifest, manifest_path
from geofuse.training.train import train_model

BANDS = ["s2_b", "s2_g", "s2_r", "s2_nir"]
CLASSES = ["water", "forest", "urban"]
HEIGHT, WIDTH, PATCH = 64, 80, 8
CRS = "EPSG:32718"
TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_000_000.0)
CLOUD = (slice(40, 48), slice(10, 20))
HOLE = (20, 50)  # one pixel where only band 0 is missing

runner = CliRunner()


def truth() -> np.ndarray:
    """(H, W) class layout: three blocks with a wavy border."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    out = np.where(cols + 6 * np.sin(rows / 6) < 30, 0, 1)
    return np.where(rows + 4 * np.cos(cols / 7) > 40, 2, out).astype(np.int64)


def scene(seed: int = 0) -> np.ndarray:
    """(4, H, W) float32 bands: class means plus noise, NaN in the cloud and the hole."""
    rng = np.random.default_rng(seed)
    means = np.array([[300, 500, 400, 200], [400, 700, 300, 2500], [1500, 1400, 1600, 1800]])
    x = means[truth()].transpose(2, 0, 1) + rng.normal(0, 120, (4, HEIGHT, WIDTH))
    x = x.astype(np.float32)
    x[:, CLOUD[0], CLOUD[1]] = np.nan
    x[0, HOLE[0], HOLE[1]] = np.nan
    return x


def write_stack(path: Path, data: np.ndarray | None = None, bands: list[str] | None = None,
                crs: str = CRS, transform: Affine = TRANSFORM, manifest: bool = True) -> Path:
    """The scene as a fused-stack-like GeoTIFF (float32, NaN nodata, named bands)."""
    data = scene() if data is None else data
    bands = bands or BANDS
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                       count=len(bands), dtype="float32", crs=crs, transform=transform,
                       nodata=np.nan) as dst:
        dst.write(data[: len(bands)])
        dst.descriptions = tuple(bands)
    if manifest:
        StackManifest(bands=bands, modalities={"s2": bands}, crs=crs,
                      transform=list(transform)[:6], width=data.shape[2],
                      height=data.shape[1]).save(manifest_path(path))
    return path


def patchset(stack: Path, n: int = 240, seed: int = 0) -> PatchSet:
    """Patches at random valid centres of the stack, labelled by the class at the centre."""
    rng = np.random.default_rng(seed)
    lo, hi_r, hi_c = PATCH // 2, HEIGHT - PATCH + PATCH // 2, WIDTH - PATCH + PATCH // 2
    rows, cols = rng.integers(lo, hi_r + 1, 4 * n), rng.integers(lo, hi_c + 1, 4 * n)
    with StackPatchReader(stack) as reader:
        x = reader.read_patches(rows, cols, PATCH)
    keep = np.flatnonzero(~np.isnan(x).any(axis=(1, 2, 3)))[:n]
    y = truth()[rows[keep], cols[keep]]
    split = np.zeros(len(keep), dtype=np.uint8)
    split[np.arange(len(keep)) % 10 >= 7] = 1
    split[np.arange(len(keep)) % 10 == 9] = 2
    return PatchSet(x=x[keep], y=y, band_names=BANDS, modalities={"s2": BANDS},
                    class_names=CLASSES, groups=[f"polygon:{i}" for i in range(len(keep))],
                    coords=np.zeros((len(keep), 2)), split=split, crs=CRS)


def study_config(root: Path, stack: Path, **train: Any) -> StudyConfig:
    """A study config whose fused stack is ``stack`` (its grid is the runs' reference)."""
    data = {
        "name": "map", "workdir": str(root / "work"), "seed": 3,
        "modalities": [{"name": "s2", "files": ["s2.tif"], "bands": BANDS}],
        "prepare": {"output": str(stack)}, "extract": {"patch_size": PATCH},
        "train": {"epochs": 1, "batch_size": 32, "model": {"name": "simple_cnn", "hidden": 16},
                  **train},
    }
    return parse_config(data, root)


def train_run(root: Path, stack: Path, name: str = "cnn", **train: Any) -> Path:
    """A run trained for one epoch on patches of ``stack``."""
    torch.set_num_threads(1)
    cfg = study_config(root, stack, **train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train_model(cfg, progress=False, patchset=patchset(stack), epochs=1,
                           run_name=name, overwrite=True)


def read(path: Path, band: int | None = None) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(band) if band else src.read()


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scene_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("predict")
    stack = write_stack(root / "stack" / "stack.tif")
    return stack, train_run(root, stack)


@pytest.fixture(scope="module")
def mapped(scene_run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[Path, dict[str, Any]]:
    stack, run = scene_run
    out = tmp_path_factory.mktemp("map")
    result = runner.invoke(app, ["predict", str(run), "--stack", str(stack), "-o", str(out),
                                 "--probabilities", "--tile-size", "32"])
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "predict.json").read_text())


# -- products ---------------------------------------------------------------------------------
def test_products_are_cogs_on_the_stack_grid_with_colours_names_and_nodata(
    mapped: tuple[Path, dict[str, Any]], scene_run: tuple[Path, Path]
) -> None:
    out, record = mapped
    stack, run = scene_run
    assert sorted(p.name for p in out.iterdir()) == [
        "classes.tif", "predict.json", "probabilities.tif", "quicklook.png", "uncertainty.tif"]
    with rasterio.open(stack) as src:
        crs, transform = src.crs, src.transform
    for name in ("classes", "probabilities", "uncertainty"):
        with rasterio.open(out / f"{name}.tif") as src:
            assert src.crs == crs and src.transform == transform
            assert (src.height, src.width) == (HEIGHT, WIDTH)
            assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            assert src.profile["compress"] == "deflate" and src.profile["tiled"]
    with rasterio.open(out / "classes.tif") as src:
        assert src.dtypes[0] == "uint8" and src.nodata == 255
        assert json.loads(src.tags()["class_names"]) == CLASSES
        cmap = src.colormap(1)
        assert cmap[0][:3] == (31, 120, 180) and cmap[1][:3] == (34, 120, 40)  # water, forest
        classes = src.read(1)
    with rasterio.open(out / "probabilities.tif") as src:
        assert list(src.descriptions) == CLASSES and src.scales[0] == pytest.approx(0.01)
        probs = src.read()
    with rasterio.open(out / "uncertainty.tif") as src:
        assert list(src.descriptions) == ["entropy", "one_minus_max_probability"]
        unc = src.read()
    nodata = np.isnan(scene()).any(axis=0)
    border = np.zeros_like(nodata)
    border[: PATCH // 2] = border[HEIGHT - PATCH // 2 + 1:] = True
    border[:, : PATCH // 2] = border[:, WIDTH - PATCH // 2 + 1:] = True
    assert (classes[nodata] == 255).all() and (classes[border] == 255).all()
    assert classes[HOLE] == 255  # a single missing band is nodata
    valid = classes != 255
    assert set(np.unique(classes[valid])) <= {0, 1, 2} and valid.mean() > 0.5
    assert (probs[:, ~valid] == 255).all()
    assert np.abs(probs[:, valid].astype(int).sum(axis=0) - 100).max() <= 2
    assert np.isnan(unc[:, ~valid]).all() and np.isfinite(unc[:, valid]).all()
    assert ((unc[:, valid] >= -1e-6) & (unc[:, valid] <= 1 + 1e-6)).all()
    # predict.json: what was mapped, with what, and the class areas
    assert record["source"] == {"kind": "run", "path": str(run), "config_id": None,
                                "members": [str(run)]}
    assert record["class_names"] == CLASSES and record["stride"] == 1
    assert sum(record["counts"].values()) + record["nodata_pixels"] == HEIGHT * WIDTH
    assert record["counts"]["water"] == int((classes == 0).sum())
    assert record["areas"]["water"]["area_ha"] == pytest.approx((classes == 0).sum() * 0.01)
    assert record["windows"]["total"] == 6 and record["timings_s"]["total"] > 0


def test_stride_1_map_equals_classifying_patches_one_by_one(
    mapped: tuple[Path, dict[str, Any]], scene_run: tuple[Path, Path]
) -> None:
    out, _ = mapped
    stack, run = scene_run
    classes = read(out / "classes.tif", 1)
    probs = read(out / "probabilities.tif")
    rng = np.random.default_rng(1)
    rows, cols = np.nonzero(classes != 255)
    pick = rng.choice(len(rows), 60, replace=False)
    rows, cols = rows[pick], cols[pick]
    with StackPatchReader(stack) as reader:
        x = reader.read_patches(rows, cols, PATCH)
    task, _ = load_task(run / "checkpoints" / "best.ckpt")
    stats = BandStats.load(run / "normalization.json")
    with torch.inference_mode():
        naive = [task(torch.from_numpy(normalize(x[i:i + 1], stats))).softmax(1)[0].numpy()
                 for i in range(len(x))]  # one patch at a time
    naive = np.array(naive)
    assert (classes[rows, cols] == naive.argmax(axis=1)).all()
    assert np.abs(probs[:, rows, cols].T - naive * 100).max() <= 0.51


def test_stride_fills_cells_with_the_class_of_their_centre_patch(
    scene_run: tuple[Path, Path], tmp_path: Path
) -> None:
    stack, run = scene_run
    record = predict_map(run, stack, tmp_path, PredictOptions(stride=3, tile_size=20),
                         progress=False)
    assert record["stride"] == 3 and record["window_size"] == 48  # whole cells and blocks
    classes = read(tmp_path / "classes.tif", 1)
    task, _ = load_task(run / "checkpoints" / "best.ckpt")
    stats = BandStats.load(run / "normalization.json")
    data = scene()
    checked = 0
    for i in range(2, 20):
        for j in range(2, 25):
            r, c = 3 * i + 1, 3 * j + 1  # centre of cell (i, j)
            patch = data[:, r - 4:r + 4, c - 4:c + 4]
            if np.isnan(patch).any():
                continue
            with torch.inference_mode():
                want = int(task(torch.from_numpy(normalize(patch[None], stats))).argmax())
            cell = classes[3 * i:3 * i + 3, 3 * j:3 * j + 3]
            cell_nodata = np.isnan(data[:, 3 * i:3 * i + 3, 3 * j:3 * j + 3]).any(axis=0)
            assert (cell[~cell_nodata] == want).all()
            checked += 1
    assert checked > 300


def test_random_forest_baseline_maps_like_its_own_features(
    scene_run: tuple[Path, Path], tmp_path: Path
) -> None:
    import joblib

    from geofuse.models.forest import patch_features

    stack, _ = scene_run
    run = train_run(tmp_path, stack, name="forest", model={"name": "random_forest"},
                    baseline={"n_estimators": 10})
    predict_map(run, stack, tmp_path / "map", PredictOptions(tile_size=40), progress=False)
    classes = read(tmp_path / "map" / "classes.tif", 1)
    rows, cols = np.nonzero(classes != 255)
    pick = np.random.default_rng(2).choice(len(rows), 40, replace=False)
    with StackPatchReader(stack) as reader:
        x = reader.read_patches(rows[pick], cols[pick], PATCH)
    model = joblib.load(run / "model.joblib")
    means = np.asarray(BandStats.load(run / "normalization.json").mean)
    want = model.predict(patch_features(x, "stats", means))
    assert (classes[rows[pick], cols[pick]] == want).all()


@pytest.mark.parametrize("mode", ["per_patch", "test_area"])
def test_the_run_s_normalisation_mode_is_applied_to_the_scene(
    scene_run: tuple[Path, Path], tmp_path: Path, mode: str
) -> None:
    from geofuse.data.normalize import compute_band_stats
    from geofuse.data.transforms import standardize_patches

    stack, _ = scene_run
    run = train_run(tmp_path, stack, name=mode, normalization=mode)
    record = predict_map(run, stack, tmp_path / "map", PredictOptions(tile_size=40),
                         progress=False)
    assert record["normalization"] == mode
    classes = read(tmp_path / "map" / "classes.tif", 1)
    rows, cols = np.nonzero(classes != 255)
    pick = np.random.default_rng(3).choice(len(rows), 40, replace=False)
    with StackPatchReader(stack) as reader:
        x = reader.read_patches(rows[pick], cols[pick], PATCH)
    stats = (BandStats.load(run / "normalization.json") if mode == "per_patch"
             else compute_band_stats(scene()[None], BANDS))  # the mapped area's own
    image = torch.from_numpy(normalize(x, stats))
    if mode == "per_patch":
        image = standardize_patches(image)
    task, _ = load_task(run / "checkpoints" / "best.ckpt")
    with torch.inference_mode():
        want = task(image).argmax(1).numpy()
    assert (classes[rows[pick], cols[pick]] == want).all()


# -- bad stacks: one-line errors, exit 2 -----------------------------------------------------
@pytest.mark.parametrize(("kind", "message"), [
    ("band", "lacks band(s) ['s2_nir']"),
    ("crs", "is in EPSG:4326"),
    ("pixel", "has 20 x 20 pixels"),
])
def test_a_stack_that_differs_from_the_run_is_a_one_line_error(
    scene_run: tuple[Path, Path], tmp_path: Path, kind: str, message: str
) -> None:
    _, run = scene_run
    if kind == "band":
        bad = write_stack(tmp_path / "bad.tif", bands=BANDS[:3], manifest=False)
    elif kind == "crs":
        bad = write_stack(tmp_path / "bad.tif", crs="EPSG:4326",
                          transform=Affine(1e-4, 0, -73.0, 0, -1e-4, -41.0), manifest=False)
    else:
        bad = write_stack(tmp_path / "bad.tif", transform=Affine(20.0, 0, 500_000.0, 0, -20.0,
                                                                 5_000_000.0), manifest=False)
    result = runner.invoke(app, ["predict", str(run), "--stack", str(bad), "-o",
                                 str(tmp_path / "out")], terminal_width=400)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "classes.tif").exists()
