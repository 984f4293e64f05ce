"""Cloud masks and composites in ``prepare``: flags per acquisition, buffers, median / mean /
max / greenest composites, clear-observation QC, and the one-line errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.transform import from_origin
from scipy.ndimage import binary_dilation
from typer.testing import CliRunner

from geofuse.cli import app
from geofuse.config import parse_config
from geofuse.errors import RasterError
from geofuse.raster.io import write_raster
from geofuse.raster.masks import PRESETS, MaskRule, disk, rule_of
from geofuse.raster.prepare import PrepareResult, prepare_stack

UTM = "EPSG:32633"
ORIGIN = (500_000.0, 5_100_000.0)
N = 96  # reference pixels (10 m) per side; the SCL files are 48 x 48 at 20 m
BANDS = ["B2", "B3", "B4", "B8"]
CLOUD, SHADOW, CLEAR = 9, 3, 4  # SCL codes
# (date, SCL code, rows, cols) in 20 m pixels; date 2's cloud overlaps date 0's
FLAGS = [
    (0, CLOUD, slice(5, 20), slice(5, 20)),
    (1, SHADOW, slice(25, 35), slice(25, 40)),
    (2, CLOUD, slice(10, 15), slice(10, 15)),
    *[(d, CLOUD, slice(0, 2), slice(0, 2)) for d in range(3)],  # cloudy on every date
]


def _surface() -> np.ndarray:
    """The ground: the same reflectance on every date, NDVI between 0.2 and 0.8."""
    rng = np.random.default_rng(3)
    red = rng.uniform(400, 900, (N, N))
    ndvi = rng.uniform(0.2, 0.8, (N, N))
    nir = red * (1 + ndvi) / (1 - ndvi)
    return np.stack([red * 0.6, red * 0.8, red, nir]).round().astype(np.uint16)


def _scenes(folder: Path, band_in_file: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
    """Three acquisitions of the ground with clouds, shadows and an unflagged haze ring one
    10 m pixel wide around date 0's cloud; SCL at 20 m as separate files or as a fifth band."""
    ground = _surface()
    scls = []
    for d in range(3):
        scl = np.full((N // 2, N // 2), CLEAR, np.uint8)
        image = ground.copy()
        for date, code, rows, cols in FLAGS:
            if date == d:
                scl[rows, cols] = code
        fine = np.kron(scl, np.ones((2, 2), np.uint8))
        image[:, fine == CLOUD] = 9000
        image[:, fine == SHADOW] = 150
        if d == 0:  # haze: bright but not flagged, just outside the cloud
            ring = binary_dilation(fine == CLOUD, structure=np.ones((3, 3))) & (fine != CLOUD)
            image[:, ring] = 3000
        scls.append(fine)
        tf = from_origin(*ORIGIN, 10, 10)
        if band_in_file:
            stacked = np.concatenate([image, fine[None].astype(np.uint16)])
            write_raster(folder / f"s2/2023061{d}_s2.tif", stacked, UTM, tf)
        else:
            write_raster(folder / f"s2/2023061{d}_s2.tif", image, UTM, tf)
            write_raster(folder / f"scl/2023061{d}_scl.tif", scl, UTM,
                         from_origin(*ORIGIN, 20, 20))
    return ground.astype(np.float32), scls


def _modality(**extra: Any) -> dict[str, Any]:
    return {"name": "s2", "files": ["s2/*.tif"], "bands": BANDS, "combine": "median",
            "mask": {"files": ["scl/*.tif"], "preset": "s2_scl", "buffer": 2}, **extra}


def _prepare(folder: Path, modality: dict[str, Any], block: int = 64, workdir: str = "work"
             ) -> PrepareResult:
    data = {"workdir": workdir, "modalities": [modality],
            "prepare": {"block_size": block, "max_nan_fraction": 0.5}}
    return prepare_stack(parse_config(data, folder), progress=False)


def _read(result: PrepareResult) -> np.ndarray:
    with rasterio.open(result.stack_path) as src:
        assert src.descriptions == tuple(BANDS)
        return src.read()


def _expected_clear(scls: list[np.ndarray], buffer: int) -> np.ndarray:
    """Clear acquisitions per pixel by the definition: flagged codes grown by a disk."""
    flagged = [np.isin(s, PRESETS["s2_scl"].values) for s in scls]
    if buffer:
        flagged = [binary_dilation(f, structure=disk(buffer)) for f in flagged]
    return sum((~f).astype(int) for f in flagged)


def test_mask_rules_read_values_bits_and_presets() -> None:
    flags = np.array([0, 3, 4, 9, np.nan, 1 << 10, 1 << 11, (1 << 10) | 1])
    scl = PRESETS["s2_scl"].invalid(flags)
    assert scl.tolist() == [True, True, False, True, False, False, False, False]
    qa60 = PRESETS["s2_qa60"].invalid(flags)
    assert qa60.tolist() == [False, False, False, False, False, True, True, True]
    rule = rule_of("s2_scl", [4], [0])
    assert rule == MaskRule(values=(0, 1, 3, 4, 8, 9, 10), bits=(0,))
    assert rule.invalid(flags).tolist() == [True, True, True, True, False, False, False, True]
    assert disk(1).sum() == 5 and disk(2).sum() == 13


def test_the_median_equals_numpys_nanmedian() -> None:
    from geofuse.raster.composite import nanmedian_first_axis

    rng = np.random.default_rng(2)
    for dates in (1, 2, 5, 40):
        obs = rng.normal(size=(dates, 3, 9, 11)).astype(np.float32)
        obs[rng.random(obs.shape) < 0.4] = np.nan
        obs[:, :, 0, 0] = np.nan  # no valid value at all
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            want = np.nanmedian(obs, axis=0)
        np.testing.assert_allclose(nanmedian_first_axis(obs), want, rtol=1e-6,
                                   equal_nan=True)


def test_median_composite_removes_clouds_shadows_and_the_buffered_haze(tmp_path: Path) -> None:
    ground, scls = _scenes(tmp_path)
    result = _prepare(tmp_path, _modality(combine="mean"))
    stack = _read(result)
    clear = _expected_clear(scls, buffer=2)
    has = clear > 0
    assert (~has).sum() > 0 and has.mean() > 0.99
    # every acquisition shows the same ground: with clouds, shadows and haze removed, the
    # mean of the clear values is the ground itself
    np.testing.assert_allclose(stack[:, has], ground[:, has], rtol=1e-6)
    assert np.isnan(stack[:, ~has]).all()
    # without the buffer the unflagged haze ring leaks into the mean
    no_buffer = _modality(combine="mean", mask={"files": ["scl/*.tif"], "preset": "s2_scl"})
    leaky = _read(_prepare(tmp_path, no_buffer, workdir="no_buffer"))
    assert np.nanmax(np.abs(leaky - ground)) > 500
    # without any mask the clouds stay in the mean
    raw = _read(_prepare(tmp_path, _modality(combine="mean", mask=None), workdir="raw"))
    assert np.nanmax(raw) > 3000
    # the QC report counts clear acquisitions per pixel and what the mask removed
    obs = result.qc["modalities"]["s2"]["observations"]
    counts = obs["clear_observations"]
    assert counts["histogram"] == np.bincount(clear.ravel(), minlength=4).tolist()
    assert counts["none_fraction"] == pytest.approx((~has).mean())
    assert counts["min"] == 0 and counts["max"] == 3
    # and per pixel, as a raster beside the stack
    with rasterio.open(result.stack_path.with_name("stack_clear.tif")) as src:
        assert src.descriptions == ("s2_clear_acquisitions",)
        assert src.transform == from_origin(*ORIGIN, 10, 10)
        np.testing.assert_array_equal(src.read(1), clear)
    flagged = 3 * N * N - clear.sum()
    assert obs["flagged_pixels"] == flagged and obs["observed_pixels"] == 3 * N * N
    assert any("no clear acquisition" in w for w in result.qc["warnings"])
    md = result.qc_path.with_suffix(".md").read_text()
    assert "clear acquisitions per pixel" in md
    manifest = json.loads(result.manifest_path.read_text())["sources"]["s2"]
    assert manifest["combine"] == "mean" and manifest["mask"]["buffer"] == 2
    assert manifest["clear_acquisitions"] == "s2_clear_acquisitions"
    assert manifest["mask"]["invalid_values"] == [0, 1, 3, 8, 9, 10]
    assert len(manifest["mask"]["files"]) == 3


def test_strips_and_a_flag_band_beside_the_data_keep_results_and_nodata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from geofuse.raster import align

    _scenes(tmp_path)
    whole = _read(_prepare(tmp_path, _modality()))
    monkeypatch.setattr(align, "COMPOSITE_BUDGET", 20_000)  # a few rows at a time
    np.testing.assert_array_equal(_read(_prepare(tmp_path, _modality(), workdir="strips")),
                                  whole)
    # Landsat-like: nodata 0 in the data bands, a QA band beside them that is never 0; the
    # data's nodata stays nodata although the QA band is not
    tf = from_origin(*ORIGIN, 30, 30)
    image = np.full((4, 8, 8), 900, np.uint16)
    image[:, :, :3] = 0                     # fill
    qa = np.full((8, 8), 1 << 6, np.uint16)  # clear
    qa[:, :3] = 1                           # fill bit
    qa[5, 5] = 1 << 3                       # cloud
    write_raster(tmp_path / "ls/LC08_20230610.tif", np.concatenate([image, qa[None]]), UTM,
                 tf, nodata=0)
    landsat = {"name": "ls", "files": ["ls/*.tif"], "bands": ["B2", "B3", "B4", "B5"],
               "sensor": "landsat8", "resampling": "nearest",
               "mask": {"band": 5, "invalid_bits": [3]}}
    out = _read_bands(_prepare(tmp_path, landsat, workdir="landsat"))
    assert np.isnan(out[:, :, :3]).all() and np.isnan(out[:, 5, 5]).all()
    assert (out[:, :, 3:][np.isfinite(out[:, :, 3:])] == 900).all()
    assert np.isfinite(out[:, :, 3:]).sum() == 4 * (8 * 5 - 1)


def _read_bands(result: PrepareResult) -> np.ndarray:
    with rasterio.open(result.stack_path) as src:
        return src.read()


def test_median_max_and_the_band_in_file_give_the_same_clean_ground(tmp_path: Path) -> None:
    ground, scls = _scenes(tmp_path / "a")
    has = _expected_clear(scls, buffer=2) > 0
    median = _read(_prepare(tmp_path / "a", _modality()))
    np.testing.assert_allclose(median[:, has], ground[:, has], rtol=1e-6)
    _scenes(tmp_path / "b", band_in_file=True)
    in_file = _read(_prepare(tmp_path / "b", _modality(
        mask={"band": 5, "preset": "s2_scl", "buffer": 2})))
    np.testing.assert_array_equal(in_file, median)
    # block size does not change the result: the buffer reads a halo around each window
    big = _read(_prepare(tmp_path / "a", _modality(), block=128, workdir="big"))
    np.testing.assert_array_equal(big, median)
    # data patterns in another order still meet their own masks (paired by date)
    shuffled = _modality(files=["s2/20230612_s2.tif", "s2/2023061[01]_s2.tif"])
    np.testing.assert_array_equal(_read(_prepare(tmp_path / "a", shuffled, workdir="sh")),
                                  median)
    # max and a mosaic (first clear acquisition wins) agree on the clean ground too
    for combine in ("max", "mosaic"):
        other = _read(_prepare(tmp_path / "a", _modality(combine=combine), workdir=combine))
        np.testing.assert_allclose(other[:, has], ground[:, has], rtol=1e-6)


def test_scenes_mapped_on_the_fly_read_the_same_composite_and_a_greedy_mask_is_warned(
    tmp_path: Path,
) -> None:
    from geofuse.mapping.scene import AlignedSource, SceneSpec, scene_files, scene_info

    _scenes(tmp_path)
    stack = _read(_prepare(tmp_path, _modality()))
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"workdir": "work", "modalities": [_modality()]}))
    spec = SceneSpec("config", str(path))
    source = AlignedSource(scene_info(spec), ["B8", "B4"])
    window = source.read(10, 20, 40, 50)  # what `geofuse predict -c` reads
    np.testing.assert_array_equal(window, stack[[3, 2], 10:50, 20:70])
    assert sum("scl" in p.parent.name for p in scene_files(spec)) == 3  # masks are inputs
    # a rule that flags the clear class removes nearly everything: the QC report says so
    greedy = _modality(mask={"files": ["scl/*.tif"], "invalid_values": [CLEAR, CLOUD, SHADOW]})
    data = {"workdir": "greedy", "modalities": [greedy]}  # the default max_nan_fraction
    with pytest.raises(RasterError, match=r"its mask flags 100\.0% of the observed pixels"):
        prepare_stack(parse_config(data, tmp_path), progress=False)
    # a mask that flags nothing is suspicious too (an empty QA60 band, a wrong band)
    idle = _prepare(tmp_path, _modality(mask={"files": ["scl/*.tif"], "invalid_values": [7]}),
                    workdir="idle")
    assert any("flagged no pixel at all" in w for w in idle.qc["warnings"])


def test_greenest_keeps_every_band_of_the_acquisition_with_the_highest_ndvi(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(5)
    tf = from_origin(*ORIGIN, 10, 10)
    dates = []
    for d in range(4):
        red = rng.uniform(300, 900, (32, 32))
        nir = rng.uniform(1000, 4000, (32, 32))
        image = np.stack([red * 0.5, red * 0.7, red, nir]).astype(np.float32)
        qa = np.zeros((32, 32), np.uint16)
        qa[d * 8 : d * 8 + 8, :] = 1 << 10  # an opaque cloud band (QA60 bit 10) per date
        image[:, qa > 0] = [[500.0], [500.0], [100.0], [6000.0]]  # a cloud that looks green
        write_raster(tmp_path / f"s2/{d}.tif", np.concatenate([image, qa[None]]), UTM, tf)
        dates.append(np.where(qa > 0, np.nan, image))
    out = _read(_prepare(tmp_path, {"name": "s2", "files": ["s2/*.tif"], "bands": BANDS,
                                    "combine": "greenest", "resampling": "nearest",
                                    "mask": {"band": 5, "preset": "s2_qa60"}}))
    obs = np.stack(dates)
    ndvi = (obs[:, 3] - obs[:, 2]) / (obs[:, 3] + obs[:, 2])
    best = np.nanargmax(ndvi, axis=0)
    want = np.take_along_axis(obs, best[None, None], axis=0)[0]
    np.testing.assert_allclose(out, want, rtol=1e-6)


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())


def _config(folder: Path, modality: dict[str, Any]) -> Path:
    path = folder / "bad.yaml"
    path.write_text(yaml.safe_dump({"workdir": "work", "modalities": [modality]}))
    return path


def test_mask_and_composite_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    _scenes(tmp_path)
    cases = [  # (modality, words the message must hold)
        (_modality(mask={"files": ["scl/20230610_scl.tif"], "preset": "s2_scl"}),
         ["mask.files gives 1 file(s)", "'files' gives 3", "paired by the date"]),
        (_modality(mask={"band": 5, "preset": "s2_scl"}),
         ["has 4 band(s)", "plus the mask band", "20230610_s2.tif"]),
        (_modality(mask={"files": ["scl/*.tif"], "band": 2, "preset": "s2_scl"}),
         ["mask.band = 2", "20230610_scl.tif", "1 band(s)"]),
        (_modality(mask={"files": ["nowhere/*.tif"], "preset": "s2_scl"}),
         ["mask.files", "nowhere", "matches no file"]),
        (_modality(mask={"preset": "s2_scl"}), ["mask needs 'band'", "'files'"]),
        (_modality(mask={"files": ["scl/*.tif"]}), ["mask needs a 'preset'"]),
        (_modality(combine="greenest", bands=["a", "b", "c", "d"]),
         ["greenest needs a red and a near-infrared band", "B4 and B8"]),
        (_modality(combine="greenest", bands=["B2", "B3", "B4", "B5"]),
         ["set sensor: landsat8 (8/9, B4 and B5) or landsat57"]),
        (_modality(mask={"files": ["scl/*.tif"], "invalid_values": [3], "band": 1,
                         "threshold": None}, combine="greenest", sensor="landsat8",
                   bands=["B2", "B3", "B4", "B6"]), ["B4 and B5 (sensor landsat8)"]),
    ]
    for modality, words in cases:
        code, out = _invoke("prepare", "-c", str(_config(tmp_path, modality)))
        assert code == 2, out
        assert all(w in out for w in words), (words, out)
        assert "Traceback" not in out
    assert not (tmp_path / "work" / "stack.tif").exists()
    # a mask file that lies elsewhere than its data file is a mispairing
    write_raster(tmp_path / "far/0.tif", np.zeros((4, 4), np.uint8), UTM,
                 from_origin(ORIGIN[0] + 50_000, ORIGIN[1], 20, 20))
    for d in (1, 2):
        write_raster(tmp_path / f"far/{d}.tif", np.zeros((48, 48), np.uint8), UTM,
                     from_origin(*ORIGIN, 20, 20))
    code, out = _invoke("prepare", "-c", str(_config(tmp_path, _modality(
        mask={"files": ["far/*.tif"], "preset": "s2_scl"}))))
    assert code == 2 and "each mask must cover its own acquisition" in out, out
    assert "far/0.tif" in out and "20230610_s2.tif" in out, out
    # masks pair with data files by the date in their names: a missing date is named
    (tmp_path / "scl" / "20230612_scl.tif").rename(tmp_path / "scl" / "20230615_scl.tif")
    code, out = _invoke("prepare", "-c", str(_config(tmp_path, _modality())))
    assert code == 2 and "is dated 20230612 but no mask file is" in out, out


@pytest.mark.realdata
def test_real_ndvi_series_composites_match_eolearn_and_numpy(
    tmp_path: Path, shared_data: Path
) -> None:
    """The eo-learn Slovenia patch: 68 NDVI acquisitions with their cloud masks (CLM)."""
    patch = shared_data / "eolearn_slovenia" / "TestEOPatch"
    ndvi = np.load(patch / "data" / "NDVI.npy")[..., 0]  # (68, 101, 100)
    clm = np.load(patch / "mask" / "CLM.npy")[..., 0]
    bounds = json.loads((patch / "bbox.geojson").read_text())["coordinates"][0]
    xs, ys = [p[0] for p in bounds], [p[1] for p in bounds]
    h, w = ndvi.shape[1:]
    tf = from_origin(min(xs), max(ys), (max(xs) - min(xs)) / w, (max(ys) - min(ys)) / h)
    for d in range(len(ndvi)):
        write_raster(tmp_path / f"ndvi/{d:02d}.tif", ndvi[d], UTM, tf)
        write_raster(tmp_path / f"clm/{d:02d}.tif", clm[d], UTM, tf)
    series = {"name": "ndvi", "files": ["ndvi/*.tif"], "bands": ["NDVI"], "combine": "max",
              "resampling": "nearest"}
    # eo-learn's own maximum composite of the series (MAX_NDVI, no cloud mask)
    stack = _read_one(_prepare(tmp_path, series, workdir="max"))
    eolearn = np.load(patch / "data_timeless" / "MAX_NDVI.npy")[..., 0]
    np.testing.assert_allclose(stack, eolearn, atol=1e-6)
    # the cloud-free median: numpy's nanmedian over the acquisitions that CLM calls clear
    masked = {**series, "combine": "median",
              "mask": {"files": ["clm/*.tif"], "invalid_values": [1]}}
    result = _prepare(tmp_path, masked, workdir="median")
    clear = np.where(clm == 0, ndvi, np.nan)
    assert (clm == 0).any(axis=0).all()  # every pixel is clear at least once
    want = np.nanmedian(clear, axis=0)
    np.testing.assert_allclose(_read_one(result), want, atol=1e-6, equal_nan=True)
    obs = result.qc["modalities"]["ndvi"]["observations"]
    counts = (clm == 0).sum(axis=0)
    assert obs["masked_fraction"] == pytest.approx(clm.mean())
    assert obs["clear_observations"]["mean"] == pytest.approx(counts.mean())
    assert obs["clear_observations"]["min"] == counts.min()


def _read_one(result: PrepareResult) -> np.ndarray:
    with rasterio.open(result.stack_path) as src:
        return src.read(1)
