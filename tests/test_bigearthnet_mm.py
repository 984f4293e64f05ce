"""BigEarthNet-MM reader on the real example folder: pairing, band order, resampling, labels,
selection, errors."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import yaml
from typer.testing import CliRunner

from factories import ready_config_copy
from geofuse.cli import app
from geofuse.config import load_config
from geofuse.data.datasets._bigearthnet_labels import LABELS_19, LABELS_43, TO_19, multi_hot
from geofuse.data.datasets.bigearthnet_mm import S2_BANDS, _choose, read_bigearthnet_mm
from geofuse.data.external_test import with_external_test
from geofuse.data.patchset import SPLIT_CODES, PatchSet
from geofuse.errors import BandError, ConfigError, DataNotFoundError, LabelError, RasterError

pytestmark = pytest.mark.realdata

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "bigearthnet_mm.yaml"
S2_DIR, S1_DIR, EXTRA_DIR = "BigEarthNet-S2-Example", "BigEarthNet-S1-Example", (
    "BigEarthNet-S1-extra")
#: The six S2 patches in row order (sorted by name).
S2_NAMES = ["S2A_MSIL2A_20170613T101031_87_48", "S2A_MSIL2A_20170617T113321_36_85",
            "S2A_MSIL2A_20170617T113321_4_55", "S2A_MSIL2A_20171221T112501_56_35",
            "S2B_MSIL2A_20170924T93020_69_24", "S2B_MSIL2A_20180204T94161_57_38"]
LAKE = 4  # 69_24, Finland in September: labelled "Water bodies", a dark boreal lake
PASTURE = 2  # 4_55, Ireland in June: labelled "Pastures" only


def _config(tmp_path: Path, root: Path, **dataset: Any) -> Path:
    return ready_config_copy(CONFIG, tmp_path, root, **dataset)


def _read(tmp_path: Path, root: Path, patch_size: int = 120, **dataset: Any) -> PatchSet:
    cfg = load_config(_config(tmp_path, root, **dataset))
    cfg.extract.patch_size = patch_size
    assert cfg.dataset is not None
    return read_bigearthnet_mm(cfg.dataset, root, cfg, external=False)


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory, bigearthnet_dir: Path) -> PatchSet:
    return _read(tmp_path_factory.mktemp("full"), bigearthnet_dir)


def _tree(dst: Path, src: Path, s2: list[str], s1: list[tuple[str, str]]) -> Path:
    """A root of symlinked patch folders: S2 names, and (S1 folder, S1 name) pairs."""
    for name in s2:
        (dst / S2_DIR).mkdir(parents=True, exist_ok=True)
        (dst / S2_DIR / name).symlink_to(src / S2_DIR / name)
    for folder, name in s1:
        (dst / folder).mkdir(parents=True, exist_ok=True)
        (dst / folder / name).symlink_to(src / folder / name)
    return dst


def _s1_names(src: Path, folder: str) -> list[tuple[str, str]]:
    return [(folder, p.name) for p in sorted((src / folder).iterdir())]


def _copy_s2(src: Path, dst: Path, name: str, labels: list[str] | None) -> Path:
    """A real copy of one S2 patch folder (bands symlinked) with other JSON labels."""
    folder = dst / S2_DIR / name
    folder.mkdir(parents=True)
    for f in (src / S2_DIR / name).iterdir():
        if f.suffix == ".tif":
            (folder / f.name).symlink_to(f)
    meta = json.loads((src / S2_DIR / name / f"{name}_labels_metadata.json").read_text())
    if labels is None:
        del meta["labels"]
    else:
        meta["labels"] = labels
    (folder / f"{name}_labels_metadata.json").write_text(json.dumps(meta))
    return folder


def test_paired_patches_shapes_and_provenance(full: PatchSet) -> None:
    assert full.x.shape == (6, 14, 120, 120) and full.x.dtype == np.float32
    assert full.band_names == [*S2_BANDS, "VV", "VH"]
    assert full.modalities == {"s2": list(S2_BANDS), "s1": ["VV", "VH"]}
    assert full.class_names == list(LABELS_19) and full.multi_hot is not None
    assert full.multi_hot.shape == (6, 19)
    assert full.crs == "EPSG:3035" and len(set(full.groups.tolist())) == 6
    x, y = full.coords[:, 0], full.coords[:, 1]  # LAEA Europe metres
    assert (x > 2.5e6).all() and (x < 5.5e6).all() and (y > 1.9e6).all() and (y < 4.7e6).all()
    prov = full.provenance
    assert prov["s2_patches_found"] == 6 and prov["s1_patches_found"] == 9
    assert prov["skipped_without_s1"] == 0 and prov["dropped_without_label"] == 0
    assert prov["band_order"]["s2"] == list(S2_BANDS) and prov["nomenclature"] == 19
    assert prov["resampling"] == dict.fromkeys(
        ["B01", "B05", "B06", "B07", "B8A", "B09", "B11", "B12"], "bilinear")
    assert len(prov["source_crs"]) == 3
    y_rarest = full.y[LAKE]  # the lake patch's rarest label is one only it has
    assert full.multi_hot[:, y_rarest].sum() == 1


def test_band_order_matches_physics(full: PatchSet) -> None:
    b = {n: i for i, n in enumerate(full.band_names)}
    flat = full.x[:, :12].transpose(1, 0, 2, 3).reshape(12, -1)
    corr = np.corrcoef(flat)
    assert corr[b["B08"], b["B8A"]] > 0.95  # resampled 20 m narrow NIR tracks 10 m B08
    assert 0.9 < float(np.median(flat[b["B8A"]] / flat[b["B08"]])) < 1.2
    assert corr[b["B02"], b["B01"]] > 0.9  # 60 m aerosol band tracks blue
    pasture = full.x[PASTURE]
    assert pasture[b["B08"]].mean() > 5 * pasture[b["B04"]].mean()  # vegetation: NIR >> red
    assert pasture[b["B07"]].mean() > pasture[b["B05"]].mean()  # red edge rises
    lake = full.x[LAKE]
    water = lake[b["B08"]] < 0.05
    assert 0.1 < water.mean() < 0.5  # the lake: low NIR ...
    assert lake[b["B11"]][water].mean() < 0.03  # ... low SWIR ...
    vv = lake[b["VV"]]
    assert vv[water].mean() < -17 and vv[water].mean() < vv[~water].mean() - 5  # ... smooth in S1
    assert (full.x[:, b["VV"]].mean(axis=(1, 2)) > full.x[:, b["VH"]].mean(axis=(1, 2))).all()
    assert full.x[:, 12:].min() > -50 and full.x[:, 12:].max() < 20  # dB as stored


def test_values_match_files_and_resampling(tmp_path: Path, bigearthnet_dir: Path,
                                           full: PatchSet) -> None:
    folder = bigearthnet_dir / S2_DIR / S2_NAMES[LAKE]
    with rasterio.open(folder / f"{S2_NAMES[LAKE]}_B02.tif") as src:
        np.testing.assert_allclose(full.x[LAKE, 1], src.read(1) * np.float32(1e-4), rtol=1e-6)
    with rasterio.open(folder / f"{S2_NAMES[LAKE]}_B05.tif") as src:
        b05 = src.read(1).astype(np.float32) * np.float32(1e-4)
    near = _read(tmp_path, bigearthnet_dir, bands={"s2": ["B05", "B09"]},
                 resampling={"B05": "nearest", "B9": "nearest"})
    assert near.provenance["resampling"] == {"B05": "nearest", "B09": "nearest"}
    np.testing.assert_allclose(near.x[LAKE, 0], np.kron(b05, np.ones((2, 2), np.float32)),
                               rtol=1e-6)  # each 20 m pixel -> 2 x 2 pixels, aligned
    bil = full.x[:, [S2_BANDS.index("B05"), S2_BANDS.index("B09")]]
    assert not np.allclose(near.x, bil)  # the method changes the values ...
    np.testing.assert_allclose(near.x.mean(axis=(2, 3)), bil.mean(axis=(2, 3)), rtol=0.05)


def test_labels_multi_hot_in_both_nomenclatures(tmp_path: Path, bigearthnet_dir: Path,
                                                full: PatchSet) -> None:
    name = S2_NAMES[LAKE]
    meta = bigearthnet_dir / S2_DIR / name / f"{name}_labels_metadata.json"
    labels = json.loads(meta.read_text())["labels"]
    assert "Peatbogs" in labels and "Water bodies" in labels
    assert TO_19["Peatbogs"] == "Inland wetlands" and TO_19["Water bodies"] == "Inland waters"
    assert TO_19["Inland marshes"] == "Inland wetlands" and TO_19["Airports"] is None
    assert len(LABELS_43) == 43 and sum(v is None for v in TO_19.values()) == 11
    assert full.multi_hot is not None
    got19 = {full.class_names[k] for k in np.flatnonzero(full.multi_hot[LAKE])}
    assert got19 == {TO_19[v] for v in labels} == {
        "Coniferous forest", "Mixed forest", "Transitional woodland, shrub", "Inland wetlands",
        "Inland waters"}
    p43 = _read(tmp_path, bigearthnet_dir, nomenclature=43, bands={"s2": ["B02"]})
    assert p43.class_names == list(LABELS_43) and p43.multi_hot is not None
    for i, s2 in enumerate(S2_NAMES):
        js = bigearthnet_dir / S2_DIR / s2 / f"{s2}_labels_metadata.json"
        want = set(json.loads(js.read_text())["labels"])
        assert {p43.class_names[k] for k in np.flatnonzero(p43.multi_hot[i])} == want
    row = multi_hot(["Airports", "Pastures"], 19, meta)
    assert row.tolist() == [int(c == "Pastures") for c in LABELS_19]


def test_band_selection_crop_and_s2_only(tmp_path: Path, bigearthnet_dir: Path,
                                         full: PatchSet) -> None:
    p = _read(tmp_path, bigearthnet_dir, 64, bands={"s2": ["B04", "B3", "B8A"]})
    assert p.band_names == ["B04", "B03", "B8A"] and list(p.modalities) == ["s2"]
    assert p.x.shape == (6, 3, 64, 64)
    np.testing.assert_array_equal(p.x, full.x[:, [3, 2, 8], 28:92, 28:92])
    cfg = load_config(_config(tmp_path, bigearthnet_dir, bands={"s1": ["VH"], "s2": ["B02"]}))
    assert [(m.name, m.bands, m.scale, m.sensor) for m in cfg.modalities] == [
        ("s2", ["B02"], 1e-4, "sentinel2"), ("s1", ["VH"], 1.0, "sentinel1")]
    # S2 only: patches without an S1 partner are fine
    root = _tree(tmp_path / "s2only", bigearthnet_dir, S2_NAMES, [])
    assert len(_read(tmp_path, root, bands={"s2": ["B02"]})) == 6


def test_s1_only_reads_the_extra_patches(tmp_path: Path, bigearthnet_dir: Path) -> None:
    p = _read(tmp_path, bigearthnet_dir, bands={"s1": ["VV", "VH"]})
    assert p.x.shape == (9, 2, 120, 120) and p.band_names == ["VV", "VH"]
    assert p.provenance["rows"] == "S1 patches" and p.provenance["labels_from"] == "S1 metadata"
    counts = p.class_counts()
    assert counts["Urban fabric"] == 2  # only the extra patches 61_40 and 61_41 have it
    assert counts["Inland wetlands"] == 2  # 61_40 (Inland marshes) and 69_24 (Peatbogs)
    # the three extras are adjacent 1.2 km patches of one column: one merged block
    assert len(set(p.groups.tolist())) == 7


def test_unpaired_s2_skipped_with_warning(tmp_path: Path, bigearthnet_dir: Path) -> None:
    s1 = _s1_names(bigearthnet_dir, S1_DIR)[:4] + _s1_names(bigearthnet_dir, EXTRA_DIR)
    root = _tree(tmp_path / "part", bigearthnet_dir, S2_NAMES, s1)
    with pytest.warns(UserWarning, match="skipped 2 S2 patch"):
        p = _read(tmp_path, root, bands={"s2": ["B02"], "s1": ["VV"]})
    assert len(p) == 4 and p.provenance["skipped_without_s1"] == 2
    root = _tree(tmp_path / "none", bigearthnet_dir, S2_NAMES, [])
    with pytest.raises(DataNotFoundError, match="none of its 6 S2 patches has an S1 partner"):
        _read(tmp_path, root)


def test_patches_without_a_19_class_label_are_dropped(tmp_path: Path, bigearthnet_dir: Path
                                                      ) -> None:
    root = _tree(tmp_path / "r", bigearthnet_dir, S2_NAMES[:2], [])
    _copy_s2(bigearthnet_dir, root, S2_NAMES[2], ["Airports", "Bare rock"])
    with pytest.warns(UserWarning, match="dropped 1 patch"):
        p = _read(tmp_path, root, bands={"s2": ["B02"]})
    assert len(p) == 2 and p.provenance["dropped_without_label"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        p43 = _read(tmp_path, root, bands={"s2": ["B02"]}, nomenclature=43)
    assert len(p43) == 3 and p43.provenance["dropped_without_label"] == 0


def test_bad_input_errors(tmp_path: Path, bigearthnet_dir: Path) -> None:
    with pytest.raises(BandError, match=r"unknown band 'B10'.*B01, B02, .*B8A"):
        _read(tmp_path, bigearthnet_dir, bands={"s2": ["B02", "B10"]})
    with pytest.raises(BandError, match=r"modality 's3'"):
        _read(tmp_path, bigearthnet_dir, bands={"s3": ["VV"]})
    with pytest.raises(BandError, match=r"'B02', a 10 m band"):
        _read(tmp_path, bigearthnet_dir, resampling={"B02": "nearest"})
    with pytest.raises(ValueError, match="resampling"):
        load_config(_config(tmp_path, bigearthnet_dir, resampling={"B05": "sideways"}))
    with pytest.raises(ConfigError, match=r"extract\.patch_size = 121"):
        _read(tmp_path, bigearthnet_dir, 121)
    (tmp_path / "empty" / "x").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match=r"empty' holds no \*_labels_metadata.json"):
        _read(tmp_path, tmp_path / "empty")
    with pytest.raises(DataNotFoundError, match="nowhere' is not a folder"):
        _read(tmp_path, tmp_path / "nowhere")
    bad = _copy_s2(bigearthnet_dir, tmp_path / "label", S2_NAMES[0], ["Pasture", "Vineyards"])
    with pytest.raises(LabelError, match=(r"_labels_metadata.json': unknown label 'Pasture' "
                                          r"\(did you mean 'Pastures'\?\)")) as err:
        _read(tmp_path, tmp_path / "label", bands={"s2": ["B02"]})
    assert str(bad) in str(err.value)
    _copy_s2(bigearthnet_dir, tmp_path / "nolabels", S2_NAMES[0], None)
    with pytest.raises(LabelError, match="has no 'labels' list"):
        _read(tmp_path, tmp_path / "nolabels", bands={"s2": ["B02"]})
    folder = _copy_s2(bigearthnet_dir, tmp_path / "miss", S2_NAMES[0], ["Pastures"])
    (folder / f"{S2_NAMES[0]}_B8A.tif").unlink()
    with pytest.raises(DataNotFoundError, match=f"{S2_NAMES[0]}' lacks band B8A"):
        _read(tmp_path, tmp_path / "miss", bands={"s2": ["B02", "B8A"]})
    b8a = folder / f"{S2_NAMES[0]}_B8A.tif"
    shutil.copy(folder / f"{S2_NAMES[0]}_B02.tif", b8a)  # a 120 px file where 60 px belong
    with pytest.raises(RasterError, match=r"B8A.tif' has 1 band\(s\) of 120 x 120 px.*60 x 60"):
        _read(tmp_path, tmp_path / "miss", bands={"s2": ["B8A"]})


def test_cli_error_is_one_line(tmp_path: Path, bigearthnet_dir: Path) -> None:
    result = CliRunner().invoke(app, ["extract", "-c", str(_config(
        tmp_path, bigearthnet_dir, bands={"s2": ["B13"]}))])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "'B13'" in lines[0], result.output


def test_external_test_keeps_multi_hot(tmp_path: Path, bigearthnet_dir: Path) -> None:
    s1 = _s1_names(bigearthnet_dir, S1_DIR)
    a = _read(tmp_path, _tree(tmp_path / "a", bigearthnet_dir, S2_NAMES[:3], s1[:3]))
    b = _read(tmp_path, _tree(tmp_path / "b", bigearthnet_dir, S2_NAMES[3:], s1[3:]))
    a.split[:] = SPLIT_CODES["train"]
    merged = with_external_test(a, b, "b")
    assert merged.multi_hot is not None and a.multi_hot is not None and b.multi_hot is not None
    np.testing.assert_array_equal(merged.multi_hot, np.concatenate([a.multi_hot, b.multi_hot]))
    assert (merged.split[3:] == SPLIT_CODES["test"]).all()
    assert merged.multi_hot[np.arange(6), merged.y].all()  # y: a present label of each row
    assert merged.provenance["external_test"]["per_class"]["Inland waters"] == 1
    other = _read(tmp_path, tmp_path / "b", nomenclature=43)
    with pytest.raises(ConfigError, match=r"dataset.nomenclature"):
        with_external_test(a, other, "b")


def test_ready_config_checks(bigearthnet_dir: Path) -> None:
    result = CliRunner().invoke(app, ["config", "--check", str(CONFIG)])
    assert result.exit_code == 0, result.output
    cfg = load_config(CONFIG)
    assert cfg.dataset is not None and cfg.resolve(str(cfg.dataset.root)).resolve() == (
        bigearthnet_dir.resolve())
    assert [m.name for m in cfg.modalities] == ["s2", "s1"]
    assert cfg.ablation.sensors == [["s2"], ["s1", "s2"]] and cfg.train.loss.name == "bce"


def test_ready_config_runs_a_one_epoch_multilabel_study(tmp_path: Path,
                                                        bigearthnet_dir: Path) -> None:
    """extract + ablate of the ready config (1 epoch, 2 folds): S2 vs S1 + S2, network and
    forest, scored on label sets."""
    path = _config(tmp_path, bigearthnet_dir)
    data = yaml.safe_load(path.read_text())
    data["train"].update(epochs=1)
    data["train"]["baseline"] = {"n_estimators": 10}
    path.write_text(yaml.safe_dump(data))
    runner = CliRunner()
    for command in (["extract", "-c", str(path)], ["ablate", "-c", str(path), "--name", "smoke"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
    study = tmp_path / "work" / "studies" / "smoke"
    cells = [json.loads(f.read_text()) for f in sorted((study / "cells").glob("*.json"))]
    assert len(cells) == 8  # 2 sensor sets x 2 models x 2 folds
    assert {c["config_id"] for c in cells} == {"s2/simple_cnn", "s2/random_forest",
                                               "s2+s1/simple_cnn", "s2+s1/random_forest"}
    for cell in cells:
        val = cell["val"]
        assert val["multilabel"] and val["n"] == 3 and 0 <= val["map"] <= 1
        assert set(val["per_class"]) == set(LABELS_19)
    folds = json.loads((study / "folds.json").read_text())
    assert len(set(folds["groups"].values())) == 2
    assert (study / "report.md").is_file()


def test_config_check_refuses_an_exclusive_class_loss(tmp_path: Path,
                                                      bigearthnet_dir: Path) -> None:
    path = _config(tmp_path, bigearthnet_dir)
    data = yaml.safe_load(path.read_text())
    data["train"]["loss"]["name"] = "cross_entropy"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["config", "--check", str(path)])
    assert result.exit_code == 2
    assert "train.loss.name = 'cross_entropy': dataset 'bigearthnet_mm' carries multi-label" \
        in " ".join(result.output.split())


def test_max_patches_and_memory_budget(tmp_path: Path, bigearthnet_dir: Path,
                                       full: PatchSet) -> None:
    some = _read(tmp_path, bigearthnet_dir, max_patches=4)
    assert len(some) == 4 and some.provenance["available"] == 6
    rows = [int(np.flatnonzero((full.x == some.x[i]).all(axis=(1, 2, 3)))[0])
            for i in range(4)]
    assert rows == sorted(rows)  # a subset of the full read, in name order
    np.testing.assert_array_equal(some.multi_hot, full.multi_hot[rows])
    assert _read(tmp_path, bigearthnet_dir, max_patches=4).x.tobytes() == some.x.tobytes()
    cfg = load_config(_config(tmp_path, bigearthnet_dir, max_memory_mb=64))
    assert cfg.dataset is not None
    # 1,000 patches x 14 bands x 120^2 px = 769 MB of float32: refused before any read
    with pytest.raises(ConfigError, match=r"above dataset.max_memory_mb = 64; set "
                                          r"dataset.max_patches to at most 83"):
        _choose(1000, cfg.dataset, 0, 14, 120, "dataset.root")
    assert len(_choose(1000, cfg.dataset.model_copy(update={"max_patches": 80}), 0, 14, 120,
                       "dataset.root")) == 80
