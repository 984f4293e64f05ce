"""EuroSAT-MS reader on the real folder: band order, classes, spatial groups, errors, study."""

from __future__ import annotations

import json
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
from geofuse.data.datasets.eurosat_ms import BANDS, block_groups, read_eurosat_ms
from geofuse.data.external_test import external_test_mask
from geofuse.data.patchset import SPLIT_CODES, PatchSet
from geofuse.experiments.folds import make_folds

pytestmark = pytest.mark.realdata

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "eurosat_ms.yaml"
CLASSES = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
           "PermanentCrop", "Residential", "River", "SeaLake"]
COUNTS = [24, 24, 24, 20, 20, 16, 20, 24, 20, 24]


@pytest.fixture(scope="session")
def eurosat_root(shared_data: Path) -> Path:
    root = shared_data / "eurosat_ms" / "train"
    if not root.is_dir():
        pytest.skip(f"real test data missing: {root}")
    return root


def _config(tmp_path: Path, root: Path, **dataset: Any) -> Path:
    return ready_config_copy(CONFIG, tmp_path, root, **dataset)


def _read(tmp_path: Path, root: Path, patch_size: int = 64, **dataset: Any) -> PatchSet:
    cfg = load_config(_config(tmp_path, root, **dataset))
    cfg.extract.patch_size = patch_size
    assert cfg.dataset is not None
    return read_eurosat_ms(cfg.dataset, root, cfg, external=False)


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory, eurosat_root: Path) -> PatchSet:
    return _read(tmp_path_factory.mktemp("full"), eurosat_root)


def _class_mean(p: PatchSet, name: str) -> dict[str, float]:
    sel = p.y == p.class_names.index(name)
    return dict(zip(p.band_names, p.x[sel].mean(axis=(0, 2, 3)).tolist(), strict=True))


def test_band_order_matches_spectral_signatures(full: PatchSet) -> None:
    assert full.band_names == list(BANDS) and full.band_names[-1] == "B8A"
    water = _class_mean(full, "SeaLake")
    assert water["B08"] < 0.5 * water["B03"] and water["B08"] < 0.5 * water["B02"]
    assert water["B11"] < 0.02 and water["B12"] < 0.02  # SWIR absorbed by water
    for veg in ("Forest", "Pasture"):
        m = _class_mean(full, veg)
        assert m["B08"] > 3 * m["B04"] and m["B07"] > m["B05"] > m["B04"]  # red edge rises
    flat = full.x.transpose(1, 0, 2, 3).reshape(len(BANDS), -1)
    corr = np.corrcoef(flat)
    b08, b8a = BANDS.index("B08"), BANDS.index("B8A")
    assert corr[b08, b8a] > 0.97  # the narrow NIR band tracks B08 ...
    assert corr[b08, BANDS.index("B09")] < 0.85  # ... the water-vapour band does not
    assert 0.9 < float(np.median(flat[b8a] / flat[b08])) < 1.3
    assert float(flat[BANDS.index("B10")].mean()) < 0.005  # cirrus: near zero at ground
    assert 0 < float(np.median(full.x)) < 0.5 and float(full.x.max()) < 3  # reflectance


def test_classes_counts_and_provenance(full: PatchSet, eurosat_root: Path) -> None:
    assert full.x.shape == (216, 13, 64, 64) and full.x.dtype == np.float32
    assert full.class_names == CLASSES
    assert np.bincount(full.y).tolist() == COUNTS
    files = full.provenance["files"]
    assert len(files) == 216 and files[0].startswith("AnnualCrop/")
    with rasterio.open(eurosat_root / files[5]) as src:  # physical = DN * 1e-4, same order
        np.testing.assert_allclose(full.x[5], src.read().astype(np.float32) * 1e-4, rtol=1e-6)
    assert full.crs == "EPSG:3035" and len(full.provenance["source_crs"]) == 8
    x, y = full.coords[:, 0], full.coords[:, 1]  # LAEA Europe metres
    assert (x > 2.0e6).all() and (x < 7.5e6).all() and (y > 1.0e6).all() and (y < 5.5e6).all()


def test_groups_are_spatial_blocks(full: PatchSet) -> None:
    groups = full.groups
    assert len(set(groups.tolist())) == 208
    blocks = np.floor(full.coords / 5000).astype(int)
    for b in {tuple(r) for r in blocks.tolist()}:  # one block, one group
        assert len(set(groups[(blocks == b).all(axis=1)].tolist())) == 1
    for i, g in enumerate(groups.tolist()):  # named by a block of its own component
        assert g.startswith("block:")
        bx, by = (int(v) for v in g[6:].split("_"))
        if (bx, by) == tuple(blocks[i]):
            continue
        assert (blocks[groups == g] == (bx, by)).all(axis=1).any()
    per_class = [len(set(groups[full.y == k].tolist())) for k in range(10)]
    assert min(per_class) == 15  # Pasture: 16 images in 15 blocks
    folds = make_folds(full, 5, "polygon")
    assert folds.n_folds == 5


def test_overlapping_images_across_a_block_edge_share_a_group() -> None:
    xy = np.array([[4990.0, 100.0], [5300.0, 100.0], [20000.0, 100.0], [9990.0, 100.0]])
    groups = block_groups(xy, 5000.0, 640.0)
    assert groups[0] == groups[1] == "block:0_0"  # 310 m apart: footprints overlap
    assert groups[2] == "block:4_0"
    assert groups[3] == "block:0_0"  # block 1_0 as a whole joined block 0_0
    assert len(set(groups.tolist())) == 2


def test_band_subset_and_centre_crop(tmp_path: Path, eurosat_root: Path, full: PatchSet
                                     ) -> None:
    p = _read(tmp_path, eurosat_root, 32, bands={"s2": ["B04", "B3", "B8A"]})
    assert p.band_names == ["B04", "B03", "B8A"] and p.modalities == {"s2": p.band_names}
    assert p.x.shape == (216, 3, 32, 32)
    np.testing.assert_array_equal(p.x, full.x[:, [3, 2, 12], 16:48, 16:48])
    cfg = load_config(_config(tmp_path, eurosat_root, bands={"s2": ["B02", "B08"]}))
    assert [(m.name, m.bands, m.scale, m.sensor) for m in cfg.modalities] == [
        ("s2", ["B02", "B08"], 1e-4, "sentinel2")]


def _subset(src: Path, dst: Path, keep: slice, classes: list[str] | None = None) -> Path:
    """A EuroSAT folder of symlinks to ``src``'s tifs ``keep`` of each class."""
    for d in sorted(src.iterdir()):
        if classes is not None and d.name not in classes:
            continue
        (dst / d.name).mkdir(parents=True)
        for f in sorted(d.glob("*.tif"))[keep]:
            (dst / d.name / f.name).symlink_to(f)
    return dst


def _fail(path: Path, fragment: str) -> None:
    result = CliRunner().invoke(app, ["extract", "-c", str(path)])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "Traceback" not in result.output and fragment in lines[0], result.output


def _write_tif(path: Path, count: int, side: int) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=count,
                       dtype="uint16", crs="EPSG:32632",
                       transform=rasterio.transform.from_origin(500000, 5e6, 10, 10)) as dst:
        dst.write(np.ones((count, side, side), dtype=np.uint16))


def test_bad_input_exits_2_with_one_line(tmp_path: Path, eurosat_root: Path) -> None:
    _fail(_config(tmp_path, tmp_path / "nowhere"), "nowhere' does not exist")
    (tmp_path / "empty" / "Forest").mkdir(parents=True)
    _fail(_config(tmp_path, tmp_path / "empty"), "no class folders with .tif")
    _fail(_config(tmp_path, eurosat_root, bands={"s2": ["B04", "B13"]}), "'B13'")
    path = _config(tmp_path, eurosat_root)
    data = yaml.safe_load(path.read_text())
    data["extract"]["patch_size"] = 65
    path.write_text(yaml.safe_dump(data))
    _fail(path, "extract.patch_size = 65")
    root = _subset(eurosat_root, tmp_path / "bad", slice(0, 2))
    _write_tif(root / "Forest" / "Forest_x.tif", 12, 64)
    _fail(_config(tmp_path, root), "Forest_x.tif' has 12 band(s) of 64 x 64 px")
    _write_tif(root / "Forest" / "Forest_x.tif", 13, 32)
    _fail(_config(tmp_path, root), "has 13 band(s) of 32 x 32 px")
    (root / "Forest" / "Forest_x.tif").unlink()
    test = _subset(eurosat_root, tmp_path / "test", slice(2, 3), ["Forest", "River"])
    (test / "River").rename(test / "Rivers")
    _fail(_config(tmp_path, root, test_root=str(test)), "class folder(s) ['Rivers']")


def test_external_test_root_and_one_epoch_study(tmp_path: Path, eurosat_root: Path) -> None:
    """Even images train, odd ones (of 9 classes: no SeaLake) are the external test set; a
    one-epoch ablation of the ready config keeps them out of every fold."""
    train = _subset(eurosat_root, tmp_path / "train", slice(0, None, 2))
    test = _subset(eurosat_root, tmp_path / "test", slice(1, None, 2), CLASSES[:-1])
    path = _config(tmp_path, train, test_root=str(test))
    data = yaml.safe_load(path.read_text())
    data["splits"]["test_fraction"] = 0.0
    data["train"].update(epochs=1, batch_size=64)
    data["train"]["baseline"]["n_estimators"] = 20
    pixel_net, forest = data["ablation"]["models"][1], data["ablation"]["models"][-1]
    assert pixel_net["name"] == "pixel_net" and forest == "random_forest"
    pixel_net["train"].update(epochs=1, batch_size=64)  # its own schedule, shortened
    data["ablation"].update(folds=2, models=[pixel_net, forest])
    path.write_text(yaml.safe_dump(data))
    runner = CliRunner()
    result = runner.invoke(app, ["extract", "-c", str(path)])
    assert result.exit_code == 0, result.output
    p = PatchSet.load(tmp_path / "work" / "patches.h5")
    mask = external_test_mask(p)
    assert mask is not None and int(mask.sum()) == 96 and len(p) == 204
    assert (p.split[mask] == SPLIT_CODES["test"]).all()
    assert not (p.split[~mask] == SPLIT_CODES["test"]).any()
    assert p.class_names == CLASSES and "SeaLake" not in set(
        np.array(CLASSES)[p.y[mask]].tolist())
    result = runner.invoke(app, ["ablate", "-c", str(path), "--name", "smoke"])
    assert result.exit_code == 0, result.output
    study = tmp_path / "work" / "studies" / "smoke"
    folds = json.loads((study / "folds.json").read_text())
    assert set(folds["test_groups"]) == set(p.groups[mask].tolist())
    cells = [json.loads(f.read_text()) for f in sorted((study / "cells").glob("*.json"))]
    assert len(cells) == 4
    for cell in cells:
        assert cell["test"]["accuracy"] is not None and cell["val"]["accuracy"] is not None


def test_ready_config_checks(eurosat_root: Path) -> None:
    result = CliRunner().invoke(app, ["config", "--check", str(CONFIG)])
    assert result.exit_code == 0, result.output
    cfg = load_config(CONFIG)
    assert cfg.dataset is not None and cfg.resolve(str(cfg.dataset.root)).resolve() == (
        eurosat_root.resolve())
    assert [m.name for m in cfg.modalities] == ["s2"] and cfg.modalities[0].bands == list(BANDS)
    labels = [m if isinstance(m, str) else m.label for m in cfg.ablation.models or []]
    assert labels == ["simple_cnn_stats", "pixel_net", "resnet18_band_aware", "random_forest"]
    pixel = cfg.ablation.models[1]
    assert not isinstance(pixel, str) and pixel.train["checkpoint"] == "last"
