"""`geofuse show`: PNG views of a PatchSet and of a fused stack."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from typer.testing import CliRunner

from factories import make_patchset
from geofuse.cli import app
from geofuse.data.patchset import PatchSet
from geofuse.reporting._show_inputs import DPI
from geofuse.reporting.show import (
    find_rgb,
    find_s1,
    percentile_stretch,
    plot_class_balance,
    s1_false_colour,
    sensor_rgb,
)

runner = CliRunner()
S2 = ["B2", "B3", "B4", "B8"]
S1 = ["VV_lee", "VH_lee"]


def _s2_s1_patchset(n: int = 60, size: int = 8, seed: int = 0) -> PatchSet:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    s2 = rng.uniform(0.02, 0.4, (n, 4, size, size)) + 0.05 * y[:, None, None, None]
    s1 = rng.gamma(2.0, 0.05, (n, 2, size, size))  # linear intensities, as in LCZ42
    x = np.concatenate([s2, s1], axis=1).astype(np.float32)
    x[rng.random(x.shape) < 0.02] = np.nan
    split = (np.arange(n) // 3) % 5
    split = np.where(split < 3, 0, split - 2).astype(np.uint8)
    return PatchSet(x=x, y=y, band_names=S2 + S1, modalities={"s2": S2, "s1": S1},
                    class_names=["urban", "forest", "water"], groups=[f"g{i}" for i in range(n)],
                    coords=np.zeros((n, 2)), split=split)


def _check_png(path: Path) -> np.ndarray:
    assert path.is_file(), path
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4) and min(image.shape[:2]) > 100
    assert image[..., :3].std() > 0
    return image


def test_percentile_stretch_maps_2_98_to_0_1() -> None:
    band = np.linspace(0.0, 100.0, 1001)
    band[::50] = np.nan
    out = percentile_stretch(np.stack([band, band * 10 + 5, np.full_like(band, 3.0)]))
    for b, src in enumerate([band, band * 10 + 5]):
        lo, hi = np.nanpercentile(src, [2, 98])
        assert out[b][np.argmin(np.abs(np.nan_to_num(src, nan=1e9) - lo))] == pytest.approx(
            0.0, abs=2e-3)
        assert out[b][np.argmin(np.abs(np.nan_to_num(src, nan=1e9) - hi))] == pytest.approx(
            1.0, abs=2e-3)
        assert np.nanmin(out[b]) == 0.0 and np.nanmax(out[b]) == 1.0
    assert np.isnan(out[0][::50]).all() and np.isfinite(out[0][1::50]).all()
    assert (out[2][np.isfinite(out[2])] == 0).all()  # constant band: no division by zero


def test_band_finders() -> None:
    assert find_rgb(["B2", "B3", "B4", "B8"]) == (2, 1, 0)
    assert find_rgb(["b02", "b03", "b04"]) == (2, 1, 0)
    assert find_rgb(["s2_b", "s2_g", "s2_r", "s2_nir"]) == (2, 1, 0)
    assert find_rgb(["elevation", "NDVI"]) is None
    assert find_s1(["VH_real", "VV_real", "VH_lee", "VV_lee"]) == (3, 2)
    assert find_s1(["B2", "VV", "VH"]) == (1, 2)
    assert find_s1(["B2", "B3"]) is None
    # Landsat 4/5/7: red B3, green B2, blue B1 (B4 is the near infrared)
    tm = {"ls": ["ls_B1", "ls_B2", "ls_B3", "ls_B4", "ls_B5", "ls_B7"], "dem": ["elevation"]}
    rgb = sensor_rgb(tm, {"ls": "landsat57", "dem": "dem"})
    assert rgb == ["ls_B3", "ls_B2", "ls_B1"]
    assert find_rgb([*tm["ls"], "elevation"], rgb) == (2, 1, 0)
    assert sensor_rgb(tm, {"ls": "sentinel2"}) is None  # the name patterns then
    assert find_rgb(["B1", "B2", "B3", "B4", "B5", "B7"]) == (3, 2, 1)  # no sensor: S2 numbers


def test_s1_false_colour_linear_and_db_agree() -> None:
    rng = np.random.default_rng(0)
    vv, vh = rng.gamma(2.0, 0.05, (2, 16, 16))
    linear = s1_false_colour(vv, vh)
    decibel = s1_false_colour(10 * np.log10(vv), 10 * np.log10(vh))
    assert linear.shape == (3, 16, 16)
    assert np.nanmin(linear) >= 0 and np.nanmax(linear) <= 1 and np.nanstd(linear) > 0
    np.testing.assert_allclose(linear, decibel, atol=1e-4)


def test_show_patchset_cli(tmp_path: Path) -> None:
    path = _s2_s1_patchset().save(tmp_path / "lcz.h5")
    out = tmp_path / "figs"
    result = runner.invoke(app, ["show", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    names = ["samples_true_colour", "samples_s1_false_colour", "band_distributions",
             "class_balance"]
    for name in names:
        assert str(out / f"lcz_{name}.png") in result.stdout
        _check_png(out / f"lcz_{name}.png")
    fig = plot_class_balance(PatchSet.load(path))
    width, height = (fig.get_size_inches() * DPI).round().astype(int)
    assert _check_png(out / "lcz_class_balance.png").shape[:2] == (height, width)


def test_show_patchset_without_rgb_warns(tmp_path: Path) -> None:
    patches = make_patchset(n=40)
    patches = patches.select_bands(["s2_nir", "dem_elev"])
    path = patches.save(tmp_path / "norgb.h5")
    result = runner.invoke(app, ["show", str(path), "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "skipping" in result.output and "true colour" in result.output
    assert not (tmp_path / "o" / "norgb_samples_true_colour.png").exists()
    _check_png(tmp_path / "o" / "norgb_class_balance.png")


def test_show_stack_via_config(tmp_path: Path) -> None:
    from geofuse.config import load_config
    from geofuse.data.synthetic import generate_scene
    from geofuse.raster.prepare import prepare_stack

    cfg_path = generate_scene(tmp_path / "scene", seed=1, size_m=4000.0, n_polygons=20)
    stack = prepare_stack(load_config(cfg_path), progress=False).stack_path
    result = runner.invoke(app, ["show", "-c", str(cfg_path), "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    true_colour = _check_png(tmp_path / "o" / f"{stack.stem}_true_colour.png")
    _check_png(tmp_path / "o" / f"{stack.stem}_index_NDVI.png")
    assert true_colour.shape[0] > 500
    result = runner.invoke(app, ["show", str(stack)])  # default folder: beside the stack
    assert result.exit_code == 0, result.output
    assert (stack.parent / "show" / f"{stack.stem}_true_colour.png").is_file()


@pytest.mark.parametrize("content", [None, b"not a raster nor a PatchSet"])
def test_show_bad_input_one_line_error(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "thing.tif"
    if content is not None:
        path.write_bytes(content)
    result = runner.invoke(app, ["show", str(path)])
    assert result.exit_code == 2
    assert "error:" in result.output and "thing.tif" in result.output
    assert "Traceback" not in result.output
    assert "geofuse prepare" in result.output  # names the fix
