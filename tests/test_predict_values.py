"""``geofuse predict`` with regression runs: a value map (and the members' spread) equal to
the run's own per-patch estimates; the scene and helpers are those of ``test_predict``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import rasterio
import torch

from geofuse.data.normalize import BandStats, normalize
from geofuse.data.patchset import PatchSet
from geofuse.data.stack_reader import StackPatchReader
from geofuse.errors import ConfigError
from geofuse.evaluation.evaluate import load_task
from geofuse.mapping.predict import PredictOptions, predict_map
from geofuse.models.forest import patch_features
from geofuse.training._regression import TargetScaler
from geofuse.training.train import train_model
from test_predict import CLOUD, PATCH, patchset, read, study_config, write_stack


def _regression_runs(root: Path, stack: Path) -> dict[str, Path]:
    """A SimpleCNN and a forest estimating each patch's mean NIR (a skewed count-like value)."""
    torch.set_num_threads(1)
    ps = patchset(stack)
    values = np.nanmean(ps.x[:, 3], axis=(1, 2)) / 10
    ps = ps._replace(values=values, value_name="biomass")
    return _train_runs(root, stack, ps, ("simple_cnn", "random_forest"), epochs=2,
                       target_transform="log1p")


def _train_runs(root: Path, stack: Path, ps: PatchSet, models: tuple[str, ...], epochs: int,
                **train: Any) -> dict[str, Path]:
    """One run per model on ``ps`` (networks with 16 hidden units), by model name."""
    runs = {}
    for model in models:
        options = {"name": model, "hidden": 16} if model != "random_forest" else {"name": model}
        cfg = study_config(root, stack, model=options, **train)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runs[model] = train_model(cfg, progress=False, patchset=ps, epochs=epochs,
                                      run_name=model, overwrite=True)
    return runs


@pytest.fixture(scope="module")
def value_maps(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("values")
    stack = write_stack(root / "stack" / "stack.tif")
    runs = _regression_runs(root, stack)
    maps = {}
    for name, run in runs.items():
        out = root / f"map_{name}"
        predict_map(run, stack, out, PredictOptions(tile_size=32, device="cpu"),
                    progress=False)
        maps[name] = out
    return stack, {**runs, **{f"map_{k}": v for k, v in maps.items()}}


def _centres(values: np.ndarray, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.nonzero(np.isfinite(values))
    pick = np.random.default_rng(2).choice(len(rows), n, replace=False)
    return rows[pick], cols[pick]


def test_network_value_map_equals_its_patch_estimates(
    value_maps: tuple[Path, dict[str, Path]]
) -> None:
    stack, paths = value_maps
    out, run = paths["map_simple_cnn"], paths["simple_cnn"]
    assert (out / "values.tif").is_file() and not (out / "classes.tif").exists()
    assert not (out / "uncertainty.tif").exists()  # one member: no spread
    with rasterio.open(out / "values.tif") as src:
        assert src.dtypes[0] == "float32" and src.descriptions == ("biomass",)
        assert src.tags()["value_name"] == "biomass"
    values = read(out / "values.tif", 1)
    assert np.isnan(values[CLOUD]).all()  # nodata stays nodata
    rows, cols = _centres(values)
    with StackPatchReader(stack) as reader:
        x = reader.read_patches(rows, cols, PATCH)
    task, _ = load_task(run / "checkpoints" / "best.ckpt")
    stats = BandStats.load(run / "normalization.json")
    with torch.inference_mode():
        naive = task.scaler.decode(task(torch.from_numpy(normalize(x, stats)))[:, 0]).numpy()
    np.testing.assert_allclose(values[rows, cols], naive, rtol=1e-4)
    record = json.loads((out / "predict.json").read_text())
    assert record["value_name"] == "biomass" and "counts" not in record
    stats_ = record["value_stats"]
    assert stats_["min"] <= float(np.nanmean(values)) <= stats_["max"]
    assert (out / "quicklook.png").is_file()


def test_forest_value_map_equals_its_patch_estimates(
    value_maps: tuple[Path, dict[str, Path]]
) -> None:
    stack, paths = value_maps
    out, run = paths["map_random_forest"], paths["random_forest"]
    values = read(out / "values.tif", 1)
    rows, cols = _centres(values)
    with StackPatchReader(stack) as reader:
        x = reader.read_patches(rows, cols, PATCH)
    info = json.loads((run / "run.json").read_text())
    means = np.asarray(BandStats.load(run / "normalization.json").mean)
    model = joblib.load(run / "model.joblib")
    naive = TargetScaler(**info["target_scaler"]).decode_numpy(
        model.predict(patch_features(x, "stats", means)))
    np.testing.assert_allclose(values[rows, cols], naive, rtol=1e-4)


def test_mc_dropout_spread_and_refused_probabilities(
    value_maps: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    stack, paths = value_maps
    out = tmp_path / "mc"
    record = predict_map(paths["simple_cnn"], stack, out,
                         PredictOptions(tile_size=32, mc_dropout=3, stride=4, device="cpu"),
                         progress=False)
    assert record["uncertainty_bands"] == ["member_std"]
    spread = read(out / "uncertainty.tif", 1)
    assert np.nanmax(spread) > 0 and np.isnan(spread[CLOUD]).all()
    with pytest.raises(ConfigError, match="without --probabilities"):
        predict_map(paths["simple_cnn"], stack, tmp_path / "p",
                    PredictOptions(probabilities=True, device="cpu"), progress=False)


def test_assess_compares_the_value_map_with_reference_numbers(
    value_maps: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    import geopandas as gpd
    from shapely.geometry import Point, box
    from typer.testing import CliRunner

    from geofuse.cli import app
    from geofuse.errors import LabelError, RasterError
    from geofuse.mapping.assess_values import assess_value_map
    from test_predict import CRS, TRANSFORM

    _, paths = value_maps
    out = paths["map_simple_cnn"]
    values = read(out / "values.tif", 1)
    x0, y0, res = TRANSFORM.c, TRANSFORM.f, TRANSFORM.a

    def cells(r0: int, r1: int, c0: int, c1: int) -> box:
        return box(x0 + c0 * res, y0 - r1 * res, x0 + c1 * res, y0 - r0 * res)

    blocks = [(2, 10, 2, 12), (12, 30, 30, 50), (50, 60, 60, 78), (30, 44, 5, 25)]
    rows = [{"plot": float(np.nanmean(values[r0:r1, c0:c1])) - 5.0,
             "geometry": cells(r0, r1, c0, c1)} for r0, r1, c0, c1 in blocks]
    rows.append({"plot": float(values[5, 40]) + 5.0,  # a point: the pixel under it
                 "geometry": Point(x0 + 40.5 * res, y0 - 5.5 * res)})
    rows.append({"plot": 1.0, "geometry": cells(200, 210, 0, 10)})  # off the map
    rows.append({"plot": None, "geometry": cells(0, 4, 0, 4)})  # no number
    ref = tmp_path / "plots.gpkg"
    gpd.GeoDataFrame(rows, geometry="geometry", crs=CRS).to_crs("EPSG:4326").to_file(ref)
    res_ = assess_value_map(out / "values.tif", ref, "plot", out_dir=tmp_path / "a")
    m = res_.result["metrics"]
    assert m["n"] == 5 and m["rmse"] == pytest.approx(5.0, rel=1e-3)
    assert m["bias"] == pytest.approx(3.0, rel=1e-3)  # +5 on four polygons, -5 on the point
    assert res_.result["skipped_off_map"] == ["5"]
    assert res_.result["dropped_without_number"] == ["6"]
    assert "RMSE" in res_.markdown_path.read_text() and res_.html_path.is_file()
    result = CliRunner().invoke(app, ["assess", str(out / "values.tif"), "--polygons", str(ref),
                                      "--value-field", "plot", "-o", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert "5 reference features: RMSE 5" in result.output
    with pytest.raises(LabelError, match="set --value-field to one of them"):
        assess_value_map(out / "values.tif", ref, "biomass", out_dir=tmp_path / "b")
    with pytest.raises(RasterError, match="class indices, not values"):
        assess_value_map(paths["map_simple_cnn"] / "quicklook.png", ref, "plot")


def test_tabular_attributes_refuse_only_models_that_read_them(tmp_path: Path) -> None:
    from geofuse.mapping.members import read_member_spec

    stack = write_stack(tmp_path / "stack" / "stack.tif")
    ps = patchset(stack, n=60)
    ps = ps._replace(tabular=np.random.default_rng(0).random((len(ps), 2)),
                     tabular_names=["census_a", "census_b"])
    runs = _train_runs(tmp_path, stack, ps, ("simple_cnn", "tabular_fusion"), epochs=1)
    assert (runs["simple_cnn"] / "tabular_normalization.json").is_file()
    assert read_member_spec(runs["simple_cnn"]).model == "simple_cnn"  # maps: no table read
    with pytest.raises(ConfigError, match="uses tabular attributes per patch"):
        read_member_spec(runs["tabular_fusion"])


def test_assess_compares_the_value_map_with_a_reference_raster(
    value_maps: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    from affine import Affine
    from typer.testing import CliRunner

    from geofuse.cli import app
    from geofuse.errors import AlignmentError
    from geofuse.mapping.assess_value_raster import assess_value_raster
    from test_predict import CRS, TRANSFORM

    _, paths = value_maps
    out = paths["map_simple_cnn"]
    values = read(out / "values.tif", 1)
    reference = values + 2.0
    reference[:4] = np.nan  # reference nodata is left out

    def write(path: Path, data: np.ndarray, transform: Affine) -> Path:
        with rasterio.open(path, "w", driver="GTiff", width=data.shape[1],
                           height=data.shape[0], count=1, dtype="float32", crs=CRS,
                           transform=transform, nodata=np.nan) as dst:
            dst.write(data.astype(np.float32), 1)
        return path

    ref = write(tmp_path / "lidar.tif", reference, TRANSFORM)
    res = assess_value_raster(out / "values.tif", ref, out_dir=tmp_path / "a")
    m = res.result["metrics"]
    both = np.isfinite(values) & np.isfinite(reference)
    assert m["n"] == int(both.sum())
    assert m["rmse"] == pytest.approx(2.0, rel=1e-4) and m["bias"] == pytest.approx(-2.0)
    expected_r2 = 1 - 4.0 * both.sum() / ((reference[both] - reference[both].mean()) ** 2).sum()
    assert m["r2"] == pytest.approx(expected_r2, rel=1e-4)
    assert m["spearman_r"] == pytest.approx(1.0)
    assert "pixels where the reference raster `lidar.tif`" in res.markdown_path.read_text()
    cli = CliRunner().invoke(app, ["assess", str(out / "values.tif"), "--labels", str(ref),
                                   "-o", str(tmp_path / "c")])
    assert cli.exit_code == 0, cli.output
    assert f"{int(both.sum()):,} reference pixels: RMSE 2" in cli.output
    far = write(tmp_path / "far.tif", reference, TRANSFORM * Affine.translation(10_000, 0))
    with pytest.raises(AlignmentError, match="does not overlap the map"):
        assess_value_raster(out / "values.tif", far, out_dir=tmp_path / "b")
