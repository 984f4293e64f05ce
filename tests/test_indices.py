"""Spectral / radar indices as bands: formulas, band lookup, config and the extract path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from geofuse.cli import app
from geofuse.config import load_config, parse_config
from geofuse.data.indices import add_index_modalities, compute_index, find_band, index_bands
from geofuse.data.patchset import PatchSet
from geofuse.data.synthetic import generate_scene
from geofuse.errors import ConfigError
from geofuse.experiments.grid import build_grid

runner = CliRunner()

V = {"blue": 0.05, "green": 0.08, "red": 0.1, "nir": 0.4, "swir1": 0.2, "swir2": 0.1,
     "vv": 0.2, "vh": 0.05}
EXPECTED = {
    "NDVI": (0.4 - 0.1) / (0.4 + 0.1),
    "NDWI": (0.08 - 0.4) / (0.08 + 0.4),
    "NDBI": (0.2 - 0.4) / (0.2 + 0.4),
    "SAVI": 1.5 * (0.4 - 0.1) / (0.4 + 0.1 + 0.5),
    "EVI": 2.5 * (0.4 - 0.1) / (0.4 + 6 * 0.1 - 7.5 * 0.05 + 1),
    "NBR": (0.4 - 0.1) / (0.4 + 0.1),
    "RVI": 4 * 0.05 / (0.2 + 0.05),
    "VV_VH_RATIO": 0.2 / 0.05,
}


@pytest.mark.parametrize("index", sorted(EXPECTED))
def test_formula_matches_hand_computed_value(index: str) -> None:
    out = compute_index(index, {r: np.array([v]) for r, v in V.items()})
    assert out.dtype == np.float32
    assert out[0] == pytest.approx(EXPECTED[index], rel=1e-6)


def test_zero_denominator_and_nan_give_nan() -> None:
    zero = compute_index("NDVI", {"nir": np.array([0.0, 0.3]), "red": np.array([0.0, np.nan])})
    assert np.isnan(zero).all()
    ratio = compute_index("VV_VH_RATIO", {"vv": np.array([1.0, np.inf]),
                                          "vh": np.array([0.0, 1.0])})
    assert np.isnan(ratio).all()


def test_band_roles_by_name() -> None:
    assert find_band(["B2", "B3", "B4", "B8"], "red") == "B4"
    assert find_band(["B02", "B04", "B08", "B8A"], "red") == "B04"
    assert find_band(["B02", "B04", "B8A", "B08"], "nir") == "B08"
    assert find_band(["summer_R", "summer_G", "summer_B"], "red") == "summer_R"
    assert find_band(["summer_R", "summer_G", "summer_B"], "blue") == "summer_B"
    s1 = ["VH_real", "VH_imag", "VV_real", "VV_imag", "VH_lee", "VV_lee"]
    assert find_band(s1, "vv") == "VV_lee" and find_band(s1, "vh") == "VH_lee"
    assert find_band(["VV", "VH"], "vh") == "VH"
    with pytest.raises(ConfigError, match=r"modality 's2': index NDBI needs a swir1 band.*B8"):
        index_bands("s2", ["B2", "B3", "B4", "B8"], "NDBI")


def test_landsat_band_numbers_follow_the_sensor() -> None:
    oli = ["SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7"]
    assert index_bands("ls", oli, "NDVI", "landsat8") == {"nir": "SR_B5", "red": "SR_B4"}
    assert index_bands("ls", oli, "NBR", "landsat8") == {"nir": "SR_B5", "swir2": "SR_B7"}
    # without the sensor, Sentinel-2 names would pick B8 (Landsat's panchromatic): refused
    with pytest.raises(ConfigError, match=r"needs a nir band.*sensor: landsat8"):
        index_bands("ls", ["B2", "B3", "B4", "B5", "B6", "B7"], "NDVI")
    with pytest.raises(ConfigError, match=r"needs a nir band \(B5 or \*_B5 for sensor landsat8"):
        index_bands("ls", ["B2", "B3", "B4"], "NDVI", "landsat8")
    ps = _patches(["B4", "B5"], [0.1, 0.4])
    ps.modalities = {"ls": ["B4", "B5"]}
    out = add_index_modalities(ps, {"ls": ["NDVI"]}, {"ls": "landsat8"})
    np.testing.assert_allclose(out.x[:, -1], (0.4 - 0.1) / (0.4 + 0.1), rtol=1e-6)
    # Landsat 4/5 TM and 7 ETM+: red B3, near infrared B4, SWIR B5 and B7 (B6 thermal)
    tm = ["SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "ST_B6", "SR_B7"]
    assert index_bands("ls", tm, "NDVI", "landsat57") == {"nir": "SR_B4", "red": "SR_B3"}
    assert index_bands("ls", tm, "NDBI", "landsat57") == {"nir": "SR_B4", "swir1": "SR_B5"}
    assert index_bands("ls", tm, "NBR", "landsat57") == {"nir": "SR_B4", "swir2": "SR_B7"}
    assert index_bands("ls", tm, "EVI", "landsat57")["blue"] == "SR_B1"
    ps = _patches(["B3", "B4"], [0.1, 0.4])  # TM red and near infrared
    ps.modalities = {"ls": ["B3", "B4"]}
    out = add_index_modalities(ps, {"ls": ["NDVI"]}, {"ls": "landsat57"})
    np.testing.assert_allclose(out.x[:, -1], (0.4 - 0.1) / (0.4 + 0.1), rtol=1e-6)


def test_greenest_composites_know_the_landsat_band_numbers() -> None:
    from geofuse._config_base import ModalityConfig
    from geofuse.raster.composite import greenest_bands

    assert greenest_bands(["B1", "B2", "B3", "B4", "B5", "B7"], "landsat57") == (2, 3)
    assert greenest_bands(["B2", "B3", "B4", "B5"], "landsat8") == (2, 3)
    with pytest.raises(ValueError, match=r"B3 and B4 \(sensor landsat57\)"):
        ModalityConfig(name="tm", files=["a.tif", "b.tif"], bands=["B1", "B2", "B3"],
                       sensor="landsat57", combine="greenest")


def _patches(bands: list[str], values: list[float]) -> PatchSet:
    x = np.broadcast_to(np.array(values, np.float32)[None, :, None, None], (2, len(bands), 2, 2))
    return PatchSet(x=x.copy(), y=[0, 1], band_names=bands, modalities={"s1": bands},
                    class_names=["a", "b"], groups=["g0", "g1"], coords=np.zeros((2, 2)))


def test_add_index_modalities_linear_and_db() -> None:
    lin = add_index_modalities(_patches(["VV", "VH"], [0.2, 0.05]), {"s1": ["RVI"]})
    assert lin.modalities["s1_idx"] == ["s1_RVI"] and lin.band_names[-1] == "s1_RVI"
    assert lin.x[0, 2, 0, 0] == pytest.approx(EXPECTED["RVI"], rel=1e-6)
    assert "4 * VH / (VV + VH)" in lin.provenance["indices"]["s1_idx"]["indices"]["RVI"]["formula"]
    db = add_index_modalities(_patches(["VV", "VH"], [10 * np.log10(0.2), 10 * np.log10(0.05)]),
                              {"s1": ["RVI"]})
    assert db.provenance["indices"]["s1_idx"]["db_to_linear"] is True
    assert db.x[0, 2, 0, 0] == pytest.approx(EXPECTED["RVI"], rel=1e-5)


def _base(tmp_path: Path) -> dict:
    return {"modalities": [{"name": "s2", "files": ["s2.tif"],
                            "bands": ["B2", "B3", "B4", "B8", "B11", "B12"]}]}


def test_config_accepts_indices_and_index_modality(tmp_path: Path) -> None:
    data = _base(tmp_path)
    data["modalities"][0]["indices"] = ["NDVI", "NDBI"]
    data["train"] = {"modalities": ["s2", "s2_idx"]}
    cfg = parse_config(data, tmp_path)
    assert cfg.derived_modalities() == [("s2_idx", ["s2_NDVI", "s2_NDBI"])]
    assert cfg.all_band_names[-2:] == ["s2_NDVI", "s2_NDBI"]
    data["modalities"][0]["indices"] = ["RVI"]
    data["train"] = {}
    with pytest.raises(ConfigError, match="index RVI needs a vv band"):
        parse_config(data, tmp_path)
    data["modalities"][0]["indices"] = []
    data["train"] = {"modalities": ["s2_idx"]}
    with pytest.raises(ConfigError, match="unknown modality 's2_idx'"):
        parse_config(data, tmp_path)


def test_extract_adds_index_modality_grid_and_train(tmp_path: Path) -> None:
    cfg_path = generate_scene(tmp_path, seed=3, size_m=4000.0, n_polygons=30)
    data = yaml.safe_load(cfg_path.read_text())
    data["modalities"][0]["indices"] = ["NDVI", "NDBI"]
    data["train"] = {**data.get("train", {}), "epochs": 1, "batch_size": 32,
                     "modalities": ["s2_idx"]}
    cfg_path.write_text(yaml.safe_dump(data, sort_keys=False))
    for command in ("prepare", "extract"):
        result = runner.invoke(app, [command, "-c", str(cfg_path)])
        assert result.exit_code == 0, result.output
    cfg = load_config(cfg_path)
    patches = PatchSet.load(cfg.patches_path)
    assert patches.modalities["s2_idx"] == ["s2_NDVI", "s2_NDBI"]
    x = patches.x.astype(np.float64)
    b = {n: x[:, patches.band_names.index(n)] for n in ("B4", "B8", "B11")}
    with np.errstate(all="ignore"):
        ndvi = (b["B8"] - b["B4"]) / (b["B8"] + b["B4"])
        ndbi = (b["B11"] - b["B8"]) / (b["B11"] + b["B8"])
    np.testing.assert_allclose(x[:, patches.band_names.index("s2_NDVI")], ndvi, rtol=1e-5)
    np.testing.assert_allclose(x[:, patches.band_names.index("s2_NDBI")], ndbi, rtol=1e-5)
    assert ("s2", "s2_idx") in {c.modalities for c in build_grid(cfg, folds=[0])}
    result = runner.invoke(app, ["train", "-c", str(cfg_path)])
    assert result.exit_code == 0, result.output


def test_dataset_indices_on_lcz42_with_external_test(tmp_path: Path) -> None:
    from geofuse.data.datasets.so2sat_lcz42 import write_synthetic_lcz42

    train = write_synthetic_lcz42(tmp_path / "train.h5", 200)
    test = write_synthetic_lcz42(tmp_path / "test.h5", 200)
    data = {"workdir": str(tmp_path / "work"), "splits": {"test_fraction": 0.0},
            "extract": {"patch_size": 8},
            "dataset": {"name": "so2sat_lcz42", "root": str(train), "test_root": str(test),
                        "block_size": 10, "indices": {"s2": ["NDVI"], "s1": ["RVI"]}}}
    cfg_path = tmp_path / "lcz.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    cfg = load_config(cfg_path)
    assert [n for n, _ in cfg.derived_modalities()] == ["s1_idx", "s2_idx"]
    result = runner.invoke(app, ["extract", "-c", str(cfg_path)])
    assert result.exit_code == 0, result.output
    patches = PatchSet.load(cfg.patches_path)
    assert patches.modalities["s1_idx"] == ["s1_RVI"]
    assert patches.modalities["s2_idx"] == ["s2_NDVI"]
    assert len(patches.split_indices("test")) == 200
    x = patches.x.astype(np.float64)
    vv, vh = (x[:, patches.band_names.index(b)] for b in ("VV_lee", "VH_lee"))
    db = bool((vv < 0).any() or (vh < 0).any())  # synthetic noise can be negative: dB
    if db:
        vv, vh = 10 ** (vv / 10), 10 ** (vh / 10)
    np.testing.assert_allclose(x[:, patches.band_names.index("s1_RVI")],
                               4 * vh / (vv + vh), rtol=1e-5)
    data["dataset"]["indices"] = {"s3": ["NDVI"]}
    cfg_path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"dataset\.indices names modality 's3'"):
        load_config(cfg_path)
