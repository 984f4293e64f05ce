"""Dense regression: a value per pixel from labels.value_raster, U-Nets and a per-pixel
forest, a sensor ablation, a map of values and its assessment."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from rasterio.transform import Affine
from rasterio.warp import Resampling, reproject
from typer.testing import CliRunner

from geofuse.cli import app
from geofuse.config import load_config
from geofuse.data.patchset import PatchSet
from geofuse.data.synthetic import generate_scene
from geofuse.evaluation.dense_evaluate import dense_values
from geofuse.labels.value_tiles import span_strata
from geofuse.training._regression import RegressionLoss, TargetScaler, regression_epoch_scores

P, CAP, BLOCK = 32, 10, 64
TINY = {"decoder_channels": [16, 8, 8, 8, 8]}
NODATA = -9999.0


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def _write_cover(folder: Path, name: str = "cover20.tif", constant: float | None = None
                 ) -> Path:
    """Vegetation cover (%) from the scene's own red and NIR bands at 20 m, offset by 5 m
    from the stack's grid, with a strip of nodata: a quantity a model can learn."""
    with rasterio.open(folder / "s2.tif") as src:
        red, nir = src.read(3).astype(float) * 1e-4, src.read(4).astype(float) * 1e-4
        left, top, crs = src.bounds.left, src.bounds.top, src.crs
    ndvi = (nir - red) / np.maximum(nir + red, 1e-6)
    cover = np.clip((ndvi - 0.1) / 0.7, 0, 1) * 100
    h, w = cover.shape
    cover = cover.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    if constant is not None:
        cover[:] = constant
    cover[:, :20] = NODATA  # a strip without measurements
    path = folder / name
    with rasterio.open(path, "w", driver="GTiff", width=w // 2, height=h // 2, count=1,
                       dtype="float32", crs=crs, nodata=NODATA,
                       transform=Affine(20, 0, left + 5, 0, -20, top - 5)) as dst:
        dst.write(cover.astype("float32"), 1)
    return path


def _config(folder: Path, name: str, labels: dict, **extract: object) -> Path:
    data = yaml.safe_load((folder / "study.yaml").read_text())
    data["labels"] = labels
    data["extract"] = {"patch_size": P, "target": "mask", "per_class": CAP,
                       "block_size": BLOCK, "output": f"{Path(name).stem}.h5", **extract}
    data["splits"] = {"val_fraction": 0.25, "test_fraction": 0.0}
    data["train"] = {"model": {"name": "unet_late", **TINY}, "epochs": 1, "batch_size": 8,
                     "baseline": {"n_estimators": 20, "max_pixels": 4000}}
    data["ablation"] = {
        "folds": 2, "epochs": 1, "sensors": [["s2", "dem"]], "importance": True,
        "importance_repeats": 1,
        "models": [{"name": "unet_late", "options": TINY, "label": "unet_late"},
                   "random_forest"]}
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("dense")
    generate_scene(folder, seed=7, size_m=4000.0, n_polygons=30)
    cover = _write_cover(folder)
    cfg = _config(folder, "cover.yaml", {"value_raster": "cover20.tif"})
    code, out = _invoke("prepare", "-c", str(cfg))
    assert code == 0, out
    code, out = _invoke("extract", "-c", str(cfg))
    assert code == 0 and "tiles written" in out, out
    return {"folder": folder, "cfg": cfg, "cover": cover, "patches": folder / "work" / "cover.h5"}


def test_tiles_hold_the_value_raster_averaged_onto_the_stack_grid(scene: dict[str, Path]
                                                                  ) -> None:
    ps = PatchSet.load(scene["patches"])
    assert ps.dense_values and not ps.segmentation and ps.regression
    assert ps.values.shape == (len(ps), P, P) and ps.value_name == "cover20"
    assert ps.provenance["target"] == "values"
    with rasterio.open(scene["folder"] / "work" / "stack.tif") as stack, \
            rasterio.open(scene["cover"]) as src:
        expected = np.full(stack.shape, np.nan, dtype=np.float32)
        reproject(src.read(1), expected, src_transform=src.transform, src_crs=src.crs,
                  src_nodata=NODATA, dst_transform=stack.transform, dst_crs=stack.crs,
                  dst_nodata=np.nan, resampling=Resampling.average)
        rows, cols = rasterio.transform.rowcol(stack.transform, ps.coords[:, 0], ps.coords[:, 1])
    rows, cols = np.asarray(rows) - P // 2, np.asarray(cols) - P // 2
    assert (rows % P == 0).all() and (cols % P == 0).all()
    for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
        want = expected[r:r + P, c:c + P].copy()
        want[np.isnan(ps.x[i]).any(axis=0)] = np.nan  # stack nodata: unlabelled
        np.testing.assert_allclose(ps.values[i], want, rtol=1e-5, atol=1e-3)
    assert np.isnan(ps.values).any() and np.isfinite(ps.values).mean() > 0.5
    # strata: ranges of the tiles' mean value, every one in every split; groups whole blocks
    means = np.nanmean(ps.values.reshape(len(ps), -1), axis=1)
    for k in range(ps.num_classes):
        lo, hi = (float(v) for v in ps.class_names[k].split("-"))
        tol = 1e-3 * max(abs(lo), abs(hi), 1.0)  # names round to 4 significant digits
        assert lo - tol <= means[ps.y == k].min() and means[ps.y == k].max() <= hi + tol
        assert set(np.unique(ps.split[ps.y == k]).tolist()) == {0, 1}
    assert np.bincount(ps.y).max() <= CAP
    for g in np.unique(ps.groups):
        assert len(np.unique(ps.split[ps.groups == g])) == 1


def test_a_tiled_reference_given_as_a_pattern_is_mosaicked_on_the_fly(
    scene: dict[str, Path],
) -> None:
    folder = scene["folder"]
    (folder / "tiles").mkdir()
    with rasterio.open(scene["cover"]) as src:  # four tiles of the same raster
        profile, half = src.profile, src.width // 2
        for i, (r, c) in enumerate([(0, 0), (0, half), (half, 0), (half, half)]):
            win = rasterio.windows.Window(c, r, half, half)
            profile.update(width=half, height=half, transform=src.window_transform(win))
            with rasterio.open(folder / "tiles" / f"t{i}.tif", "w", **profile) as dst:
                dst.write(src.read(1, window=win), 1)
    cfg = _config(folder, "tiled.yaml", {"value_raster": "tiles/*.tif"})
    code, out = _invoke("extract", "-c", str(cfg))
    assert code == 0, out
    tiled, whole = PatchSet.load(folder / "work" / "tiled.h5"), PatchSet.load(scene["patches"])
    assert tiled.value_name == "tiles"
    np.testing.assert_array_equal(tiled.coords, whole.coords)
    np.testing.assert_allclose(tiled.values, whole.values, rtol=1e-6, atol=1e-4)
    cfg = _config(folder, "none.yaml", {"value_raster": "tiles/*.vrt"})
    code, out = _invoke("extract", "-c", str(cfg))
    assert code == 2 and "matches no file" in out, out


def test_a_value_range_in_too_few_blocks_joins_its_neighbour() -> None:
    groups = np.array(["a", "b", "c", "c", "d", "e"])
    means = np.array([1.0, 2.0, 3.0, 3.5, 8.0, 9.0])
    y, names, merged = span_strata(np.array([0, 0, 1, 1, 2, 2]), groups, means, 2)
    # range 1 (3-3.5) lies in block c only: it joins the smaller neighbour (range 0)
    assert y.tolist() == [0, 0, 0, 0, 1, 1] and names == ["1-3.5", "8-9"] and merged == 1


def test_losses_and_scores_count_labelled_pixels_only() -> None:
    out = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], requires_grad=True)  # (1, 1, 2, 2)
    target = torch.tensor([[[0.0, float("nan")], [3.0, float("nan")]]])
    loss = RegressionLoss("mse")(out, target)
    assert loss.item() == pytest.approx((1.0 + 0.0) / 2)
    empty = RegressionLoss("mse")(out, torch.full((1, 2, 2), float("nan")))
    empty.backward()  # a batch without labels trains nothing but keeps the graph
    assert empty.item() == 0.0 and out.grad is not None and out.grad.abs().sum() == 0
    scores = regression_epoch_scores(out.detach()[:, 0], target)
    assert scores["rmse"].item() == pytest.approx(np.sqrt(0.5))
    scaler = TargetScaler.fit(np.array([[1.0, np.nan], [3.0, np.nan]]), "none")
    assert (scaler.mean, scaler.std) == (2.0, 1.0)


def test_test_time_augmentation_maps_every_view_back() -> None:
    class FirstBand(torch.nn.Module):  # value = the first band: each view maps back exactly
        scaler = TargetScaler()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :1]

    x = torch.randn(2, 3, 8, 8)
    np.testing.assert_allclose(dense_values(FirstBand(), x, tta=True), x[:, 0], atol=1e-6)


def test_bad_value_rasters_are_one_line_errors(scene: dict[str, Path]) -> None:
    folder = scene["folder"]
    _write_cover(folder, "flat.tif", constant=42.0)
    cfg = _config(folder, "flat.yaml", {"value_raster": "flat.tif"})
    code, out = _invoke("extract", "-c", str(cfg))
    assert code == 2 and "holds 42" in out and "flat.tif" in out, out
    assert len([ln for ln in out.splitlines() if ln.strip()]) == 1
    cfg = _config(folder, "strict.yaml", {"value_raster": "cover20.tif"}, min_labelled=1.0,
                  patch_size=400)
    code, out = _invoke("extract", "-c", str(cfg))
    assert code == 2 and "extract.min_labelled" in out, out
    cfg = _config(folder, "gone.yaml", {"value_raster": "missing.tif"})
    code, out = _invoke("config", "--check", str(cfg))
    assert code == 2 and "labels.value_raster" in out and "missing.tif" in out, out
    data = yaml.safe_load(scene["cfg"].read_text())
    data["extract"]["target"] = "class"
    with pytest.raises(Exception, match=r"extract\.target: mask"):
        load_config_text(folder, data)
    # a patch classifier cannot learn a value per pixel; preflight says so before training
    data = yaml.safe_load(scene["cfg"].read_text())
    data["train"]["model"] = {"name": "simple_cnn"}
    path = folder / "cnn.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    code, out = _invoke("config", "--check", str(path))
    assert code == 2 and "simple_cnn" in out and "per pixel" in out, out


def load_config_text(folder: Path, data: dict) -> object:
    path = folder / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_config(path)


def test_dense_study_trains_maps_and_assesses_end_to_end(scene: dict[str, Path]) -> None:
    torch.set_num_threads(1)
    folder = scene["folder"]
    data = yaml.safe_load(scene["cfg"].read_text())
    data["ablation"]["keep_checkpoints"] = True  # a fold's U-Net is mapped on its own below
    cfg = folder / "kept.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    code, out = _invoke("ablate", "-c", str(cfg))
    assert code == 0, out
    study = folder / "work" / "studies" / load_config(cfg).name
    cells = [json.loads(p.read_text()) for p in sorted((study / "cells").glob("*.json"))]
    assert len(cells) == 4
    by = {}
    for cell in cells:
        val = cell["val"]
        assert val["dense"] and val["regression"] and val["n_tiles"] > 0
        assert val["n"] == val["n_pixels"] > val["n_tiles"]
        by.setdefault(cell["config_id"], []).append(val["r2"])
        run = study / cell["run_dir"]
        assert (run / "val_values.npz").is_file()
    # the cover is a function of each pixel's red and NIR: the per-pixel forest learns it
    assert np.mean(by["s2+dem/random_forest"]) > 0.7, by
    assert all(np.isfinite(v).all() for v in by.values())
    net = next(c for c in cells if c["config_id"] == "s2+dem/unet_late")
    imp = net["importance"]
    assert imp["metric"] == "r2" and set(imp["modality"]) == {"s2", "dem"}
    run = study / net["run_dir"]
    report = (run / "report.md").read_text()
    assert "One value per pixel" in report and "Not drawn for a study's cell" in report
    code, out = _invoke("report", str(run))  # a cell's figures are drawn on demand
    assert code == 0, out
    report = (run / "report.md").read_text()
    assert "plots/value_tiles_val.png" in report and (run / "plots/value_tiles_val.png").is_file()
    study_md = (study / "report.md").read_text()
    assert "Main metric: **r2**" in study_md
    assert "grouped by spatial block of whole tiles" in study_md  # not "polygon"
    # the study maps the scene with its best configuration's fold models, then assess
    code, out = _invoke("predict", str(study), "--stack", str(folder / "work" / "stack.tif"),
                        "-o", str(folder / "map"))
    assert code == 0, out
    with rasterio.open(folder / "map" / "values.tif") as src:
        values = src.read(1)
        assert src.descriptions == ("cover20",)
    assert np.isfinite(values).mean() > 0.9 and np.nanmin(values) >= 0
    assert np.nanmax(values) <= 100 + 1e-3
    code, out = _invoke("assess", str(folder / "map" / "values.tif"), "--labels",
                        str(scene["cover"]), "-o", str(folder / "assess"))
    assert code == 0, out
    record = json.loads((folder / "assess" / "assessment.json").read_text())
    assert record["metrics"]["r2"] > 0.5, record["metrics"]
    # a U-Net fold run of the study maps with blended tiles and test-time augmentation, in
    # the target's unit
    unet_run = study / net["run_dir"]
    code, out = _invoke("evaluate", str(unet_run))
    assert code == 0 and "labelled pixels of" in out, out
    code, out = _invoke("predict", str(unet_run), "--stack", str(folder / "work" / "stack.tif"),
                        "-o", str(folder / "unet_map"), "--tta", "--tile-size", "64")
    assert code == 0, out
    with rasterio.open(folder / "unet_map" / "values.tif") as src:
        unet = src.read(1)
    run_info = json.loads((unet_run / "run.json").read_text())
    low, high = run_info["target_scaler"]["low"], run_info["target_scaler"]["high"]
    assert np.isfinite(unet).mean() > 0.9 and np.nanstd(unet) > 0
    assert low - 1e-3 <= np.nanmin(unet) and np.nanmax(unet) <= high + 1e-3
