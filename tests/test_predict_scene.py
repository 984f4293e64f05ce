"""``geofuse predict`` on the sensor rasters of a study config (aligned on the fly), with index
bands computed on the fly, Monte Carlo dropout and the device option.

The config has a Sentinel-2-like modality (uint16 file, scale 1e-4, nodata 0, NDVI as an
index) on the reference grid and a DEM at 20 m, resampled bilinearly onto the 10 m grid. The
run is a SimpleCNN trained for one epoch on the prepared stack plus NDVI; its map from the
config must equal its map from the prepared stack (NDVI derived) and from a stack holding NDVI
as a band.
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
from geofuse.config import parse_config
from geofuse.data.indices import add_index_modalities, compute_index
from geofuse.data.patchset import PatchSet
from geofuse.data.stack_reader import StackPatchReader
from geofuse.mapping.infer import load_member
from geofuse.mapping.members import read_member_spec
from geofuse.mapping.scene import DerivedBand, SceneSource, SceneSpec, resolve_db, scene_info
from geofuse.raster.prepare import prepare_stack
from geofuse.training.train import train_model
from test_predict import (
    CLASSES,
    CRS,
    HEIGHT,
    PATCH,
    TRANSFORM,
    WIDTH,
    read,
    scene,
    train_run,
    truth,
    write_stack,
)

S2 = ["B2", "B3", "B4", "B8"]
runner = CliRunner()


def _write(path: Path, data: np.ndarray, transform: Affine, dtype: str,
           nodata: float | None) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                       count=data.shape[0], dtype=dtype, crs=CRS, transform=transform,
                       nodata=nodata) as dst:
        dst.write(data.astype(dtype))


def _config_data(root: Path, **extra: Any) -> dict[str, Any]:
    return {
        "name": "scene", "workdir": str(root / "work"), "seed": 3,
        "modalities": [
            {"name": "s2", "files": ["s2.tif"], "bands": S2, "scale": 1e-4, "nodata": 0,
             "indices": ["NDVI"]},
            {"name": "dem", "files": ["dem.tif"], "bands": ["elevation"],
             "resampling": "bilinear"}],
        "prepare": {"output": str(root / "stack.tif")}, "extract": {"patch_size": PATCH},
        "train": {"epochs": 1, "batch_size": 32, "model": {"name": "simple_cnn", "hidden": 16}},
        **extra,
    }


def _sensor_files(root: Path) -> None:
    """s2.tif (uint16 DN, 0 = nodata) on the 10 m grid and dem.tif at 20 m."""
    dn = np.nan_to_num(scene(), nan=0.0)  # the cloud and the hole become nodata 0
    _write(root / "s2.tif", np.clip(dn, 1, None) * (dn > 0), TRANSFORM, "uint16", 0)
    rows, cols = np.mgrid[0:HEIGHT // 2, 0:WIDTH // 2]
    dem = (100 + 3.0 * rows + 2.0 * cols + 40 * (truth()[::2, ::2] == 1))[None]
    t20 = Affine(20.0, 0.0, TRANSFORM.c, 0.0, -20.0, TRANSFORM.f)
    _write(root / "dem.tif", dem, t20, "float32", None)


def _patches(stack: Path, n: int = 240) -> PatchSet:
    """Patches of every band of the prepared stack at valid centres, plus s2_NDVI."""
    rng = np.random.default_rng(0)
    lo = PATCH // 2
    rows = rng.integers(lo, HEIGHT - PATCH + lo + 1, 4 * n)
    cols = rng.integers(lo, WIDTH - PATCH + lo + 1, 4 * n)
    with StackPatchReader(stack) as reader:
        x = reader.read_patches(rows, cols, PATCH)
    keep = np.flatnonzero(~np.isnan(x).any(axis=(1, 2, 3)))[:n]
    split = (np.arange(len(keep)) % 10 >= 7).astype(np.uint8) + (np.arange(len(keep)) % 10 == 9)
    ps = PatchSet(x=x[keep], y=truth()[rows[keep], cols[keep]], band_names=[*S2, "elevation"],
                  modalities={"s2": S2, "dem": ["elevation"]}, class_names=CLASSES,
                  groups=[f"polygon:{i}" for i in range(len(keep))],
                  coords=np.zeros((len(keep), 2)), split=split.astype(np.uint8), crs=CRS)
    return add_index_modalities(ps, {"s2": ["NDVI"]})


@pytest.fixture(scope="module")
def config_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(config.yaml, prepared stack, run directory)."""
    root = tmp_path_factory.mktemp("scene")
    _sensor_files(root)
    data = _config_data(root)
    config = root / "study.yaml"
    config.write_text(json.dumps(data))
    cfg = parse_config(data, root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stack = prepare_stack(cfg, progress=False).stack_path
        torch.set_num_threads(1)
        run = train_model(cfg, progress=False, patchset=_patches(stack), epochs=1,
                          run_name="cnn", overwrite=True)
    return config, stack, run


def _predict(run: Path, out: Path, *scene_args: str) -> Any:
    return runner.invoke(app, ["predict", str(run), *scene_args, "-o", str(out),
                               "--probabilities", "--tile-size", "32"], terminal_width=400)


def test_a_config_maps_its_rasters_aligned_on_the_fly_like_the_prepared_stack(
    config_run: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    config, stack, run = config_run
    with rasterio.open(stack) as src:
        assert list(src.descriptions) == [*S2, "elevation"]  # no NDVI in the stack
        bands = src.read()
    ndvi = compute_index("NDVI", {"nir": bands[3], "red": bands[2]})
    with_ndvi = write_stack(tmp_path / "with_ndvi.tif", np.concatenate([bands, ndvi[None]]),
                            bands=[*S2, "elevation", "s2_NDVI"])
    results = {}
    for name, args in {"config": ["-c", str(config)], "stack": ["--stack", str(stack)],
                       "explicit": ["--stack", str(with_ndvi)]}.items():
        result = _predict(run, tmp_path / name, *args)
        assert result.exit_code == 0, result.output
        results[name] = (read(tmp_path / name / "classes.tif", 1),
                         read(tmp_path / name / "probabilities.tif"))
    classes, probs = results["explicit"]
    assert (classes != 255).mean() > 0.5 and len(np.unique(classes[classes != 255])) >= 2
    for name in ("config", "stack"):
        assert np.array_equal(results[name][0], classes), name
        assert np.abs(results[name][1].astype(int) - probs).max() <= 1, name
    record = json.loads((tmp_path / "config" / "predict.json").read_text())
    assert record["scene"] == {"kind": "config", "path": str(config)}
    assert "s2_NDVI" in record["bands"]


def test_a_config_on_another_grid_than_the_run_is_a_one_line_error(
    config_run: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    config, _, run = config_run
    data = json.loads(config.read_text())
    data["modalities"] = [{**m, "files": [str(config.parent / m["files"][0])]}
                          for m in data["modalities"]]
    data["grid"] = {"crs": CRS, "resolution": 20.0,
                    "bounds": [TRANSFORM.c, TRANSFORM.f - 10 * HEIGHT,
                               TRANSFORM.c + 10 * WIDTH, TRANSFORM.f]}
    other = tmp_path / "coarse.yaml"
    other.write_text(json.dumps(data))
    result = _predict(run, tmp_path / "out", "-c", str(other))
    assert result.exit_code == 2, result.output
    assert "has 20 x 20 pixels" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_scene_needs_exactly_one_of_stack_and_config(
    config_run: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    config, stack, run = config_run
    for args in ([], ["--stack", str(stack), "-c", str(config)]):
        result = _predict(run, tmp_path / "out", *args)
        assert result.exit_code == 2 and "either --stack" in result.output, result.output


def test_mc_dropout_passes_are_members_with_a_spread_and_repeat_exactly(
    config_run: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, stack, run = config_run
    maps = []
    for name, tile in (("a", "32"), ("b", "64")):  # other windows, same passes
        result = runner.invoke(app, ["predict", str(run), "--stack", str(stack), "-o",
                                     str(tmp_path / name), "--mc-dropout", "4",
                                     "--device", "cpu", "--tile-size", tile])
        assert result.exit_code == 0, result.output
        with rasterio.open(tmp_path / name / "uncertainty.tif") as src:
            assert list(src.descriptions) == ["entropy", "one_minus_max_probability",
                                              "member_std", "vote_disagreement"]
            maps.append(src.read())
    unc = maps[0]
    valid = np.isfinite(unc[0])
    assert valid.mean() > 0.5
    assert unc[2][valid].mean() > 1e-3  # dropout makes the passes differ
    assert np.array_equal(maps[0], maps[1], equal_nan=True)  # fixed masks per pass
    record = json.loads((tmp_path / "a" / "predict.json").read_text())
    assert record["mc_dropout"] == 4 and record["device"] == "cpu"
    member = load_member(read_member_spec(run), mc_dropout=4)
    assert not any(m.training for m in member.model.modules())  # batch norm stays in eval
    result = runner.invoke(app, ["predict", str(run), "--stack", str(stack), "-o",
                                 str(tmp_path / "c"), "--mc-dropout", "1"], terminal_width=400)
    assert result.exit_code == 2 and "at least 2 passes" in result.output, result.output


def test_an_unknown_radar_scale_is_decided_once_for_the_whole_scene(tmp_path: Path) -> None:
    vv = np.full((HEIGHT, WIDTH), 0.2, dtype=np.float32)
    vh = np.full((HEIGHT, WIDTH), 0.05, dtype=np.float32)
    vv[:8, :8], vh[:8, :8] = -8.0, -14.0  # dB in one corner: the whole scene is dB
    stack = write_stack(tmp_path / "s1.tif", np.stack([vv, vh]), bands=["VV", "VH"])
    spec = SceneSpec("stack", str(stack))
    info = scene_info(spec)
    rvi = DerivedBand("s1_RVI", "RVI", {"vv": "VV", "vh": "VH"}, None)
    (resolved,) = resolve_db(spec, info, [rvi])
    assert resolved.db_to_linear is True
    with SceneSource(spec, info, ["VV", "s1_RVI"], [resolved]) as src:
        far = src.read(40, 40, 8, 8)  # a window without a negative value
    lin_vv, lin_vh = 10 ** (0.2 / 10), 10 ** (0.05 / 10)
    assert np.allclose(far[1], 4 * lin_vh / (lin_vv + lin_vh), rtol=1e-5)
    assert np.allclose(far[0], 0.2)  # the stack's own band is read as it is


def test_mc_dropout_without_dropout_and_an_unknown_device_are_one_line_errors(
    tmp_path: Path
) -> None:
    stack = write_stack(tmp_path / "stack" / "stack.tif")
    run = train_run(tmp_path, stack, name="nodrop",
                    model={"name": "simple_cnn", "hidden": 16, "dropout": 0.0})
    result = runner.invoke(app, ["predict", str(run), "--stack", str(stack), "-o",
                                 str(tmp_path / "out"), "--mc-dropout", "3"],
                           terminal_width=400)
    assert result.exit_code == 2 and "no dropout layer" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    devices = ["tpu"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in devices:
        result = runner.invoke(app, ["predict", str(run), "--stack", str(stack), "-o",
                                     str(tmp_path / "out"), "--device", device],
                               terminal_width=400)
        assert result.exit_code == 2 and f"--device {device}" in result.output, result.output
    assert not (tmp_path / "out" / "classes.tif").exists()
