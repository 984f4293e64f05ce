"""``temporal_cnn``: classes told apart by how they change between dates, from a stack holding
each date as a modality; label points, training, a map of the scene and the checks."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from shapely.geometry import Point

from geofuse.config import parse_config
from geofuse.errors import ConfigError
from geofuse.models.registry import create_model
from geofuse.models.temporal import TemporalCNN
from geofuse.raster.manifest import StackManifest, manifest_path

CRS = "EPSG:32633"
TF = Affine(10.0, 0.0, 400_000.0, 0.0, -10.0, 5_000_000.0)
H, W = 64, 64
MODALITIES = {"may": ["may_red", "may_nir"], "jul": ["jul_red", "jul_nir"],
              "dem": ["elevation"]}
# four crops by their (May, July) greenness: none can be told from one date alone
CLASSES = {"winter_wheat": (1, 0), "maize": (0, 1), "grassland": (1, 1), "fallow": (0, 0)}


def truth() -> np.ndarray:
    """(H, W) class index: four fields of 32 x 32 px."""
    rows, cols = np.mgrid[0:H, 0:W]
    return (rows // 32) * 2 + cols // 32


def write_temporal_stack(workdir: Path, seed: int = 0) -> Path:
    """Each date's red/NIR from the class's greenness at that date, plus noise; a flat DEM."""
    rng = np.random.default_rng(seed)
    green = np.array(list(CLASSES.values()))[truth()]  # (H, W, 2 dates)
    bands = []
    for d in range(2):
        g = green[..., d]
        bands += [0.08 - 0.04 * g, 0.2 + 0.25 * g]  # red falls, NIR rises with greenness
    bands.append(np.full((H, W), 300.0))
    x = np.stack(bands).astype(np.float32) + rng.normal(0, 0.03, (5, H, W)).astype(np.float32)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "stack.tif"
    names = [b for v in MODALITIES.values() for b in v]
    with rasterio.open(path, "w", driver="GTiff", width=W, height=H, count=5, dtype="float32",
                       crs=CRS, transform=TF, nodata=np.nan) as dst:
        dst.write(x)
        dst.descriptions = tuple(names)
    StackManifest(bands=names, modalities=MODALITIES, crs=CRS, transform=list(TF)[:6],
                  width=W, height=H).save(manifest_path(path))
    return path


def study(tmp_path: Path, **model: object) -> object:
    """The study of the temporal stack: label points on a 5 px lattice; ``model`` replaces
    the temporal_cnn settings."""
    rows, cols = np.mgrid[3:H - 3:5, 3:W - 3:5]
    names = list(CLASSES)
    points = [{"id": f"p{r}_{c}", "crop": names[truth()[r, c]],
               "geometry": Point(*(TF @ (c + 0.5, r + 0.5)))}
              for r, c in zip(rows.ravel(), cols.ravel(), strict=True)]
    gpd.GeoDataFrame(points, crs=CRS).to_file(tmp_path / "fields.gpkg")
    return parse_config({
        "workdir": str(tmp_path / "work"), "seed": 1,
        "modalities": [{"name": m, "files": [f"{m}.tif"], "bands": b}
                       for m, b in MODALITIES.items()],
        "labels": {"path": "fields.gpkg", "class_field": "crop", "id_field": "id"},
        "extract": {"patch_size": 5},
        "splits": {"val_fraction": 0.25},
        "train": {"epochs": 25, "batch_size": 16, "lr": 0.003, "early_stopping_patience": 25,
                  "model": model or {"name": "temporal_cnn", "time_series": ["may", "jul"],
                                     "lstm_hidden_dim": 32, "hidden": 32, "dropout": 0.1}},
    }, tmp_path)


def test_the_series_is_read_date_by_date_with_the_static_bands() -> None:
    net = TemporalCNN(5, 4, 8, modalities={"may": 2, "jul": 2, "dem": 1},
                      time_series=["may", "jul"], lstm_hidden_dim=16, hidden=8)
    x = torch.arange(5.0)[None, :, None, None].expand(3, 5, 8, 8)
    seq = net.sequence(x)
    assert seq.shape == (3, 2, 3, 8, 8)  # two dates, each its 2 bands + the DEM
    assert seq[0, 0, :, 0, 0].tolist() == [0.0, 1.0, 4.0]
    assert seq[0, 1, :, 0, 0].tolist() == [2.0, 3.0, 4.0]
    assert net(torch.randn(3, 5, 8, 8)).shape == (3, 4)
    # an ablation subset with one date: the same network reads the dates present
    one = create_model("temporal_cnn", 3, 4, 8, modalities={"jul": 2, "dem": 1},
                       time_series=["may", "jul"])
    assert one(torch.randn(2, 3, 8, 8)).shape == (2, 4)
    with pytest.raises(ConfigError, match=r"needs train\.model\.time_series"):
        TemporalCNN(4, 2, 8, modalities={"may": 2, "jul": 2})
    with pytest.raises(ConfigError, match=r"different numbers of bands \{'may': 2, 'jul': 3\}"):
        TemporalCNN(5, 2, 8, modalities={"may": 2, "jul": 3}, time_series=["may", "jul"])
    with pytest.raises(ConfigError, match=r"none of train\.model\.time_series"):
        TemporalCNN(1, 2, 8, modalities={"dem": 1}, time_series=["may", "jul"])


def test_crops_told_apart_by_their_season_from_points_and_mapped(tmp_path: Path) -> None:
    from geofuse.data.extract import extract_patches
    from geofuse.mapping.predict import PredictOptions, predict_map
    from geofuse.training.train import train_model

    cfg = study(tmp_path)
    stack = write_temporal_stack(cfg.workdir_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extract_patches(cfg, progress=False)
        run = train_model(cfg, progress=False, figures=False)
        one_date = study(tmp_path, name="simple_cnn", hidden=32, dropout=0.1)
        one_date.train.modalities = ["jul", "dem"]
        single = train_model(one_date, progress=False, figures=False, run_name="july_only")
    acc = json.loads((run / "metrics.json").read_text())["val"]["accuracy"]
    july = json.loads((single / "metrics.json").read_text())["val"]["accuracy"]
    assert acc >= 0.9 and july <= 0.75  # July alone cannot tell wheat from fallow
    predict_map(run, stack, tmp_path / "map", PredictOptions(stride=2), progress=False)
    with rasterio.open(tmp_path / "map" / "classes.tif") as src:
        mapped, names = src.read(1), json.loads(src.tags()["class_names"])
    ok = mapped != 255
    mapped_names = np.array(names)[mapped[ok]]
    assert ok.mean() > 0.8 and (mapped_names == np.array(list(CLASSES))[truth()[ok]]).mean() >= 0.85


def test_the_checks_name_a_missing_or_unknown_series(tmp_path: Path) -> None:
    from geofuse.preflight import check_config

    cfg = study(tmp_path, name="temporal_cnn")
    write_temporal_stack(cfg.workdir_path)
    problems = " ".join(p.reason for p in check_config(cfg, "train"))
    assert "needs train.model.time_series: the modalities that are the dates" in problems
    cfg = study(tmp_path, name="temporal_cnn", time_series=["may", "juli"])
    problems = " ".join(p.reason for p in check_config(cfg, "train"))
    assert "names ['juli']" in problems and "jul" in problems
    # what the run uses: no date among its modalities, or dates with other bands
    cfg = study(tmp_path)
    cfg.train.modalities = ["dem"]
    problems = " ".join(p.reason for p in check_config(cfg, "train"))
    assert "none of train.model.time_series ['may', 'jul'] is an input" in problems
    cfg = study(tmp_path)
    cfg.train.bands = ["may_red", "jul_nir", "elevation"]
    problems = " ".join(p.reason for p in check_config(cfg, "train"))
    assert "dates 'may' and 'jul' hold different bands" in problems


def test_each_date_takes_its_own_indices_and_the_same_bands() -> None:
    mods = {"s2_may": 2, "s2_jul": 2, "dem": 1, "s2_may_idx": 1, "s2_jul_idx": 1}
    names = ["s2_may_B4", "s2_may_B8", "s2_jul_B4", "s2_jul_B8", "elevation", "s2_may_NDVI",
             "s2_jul_NDVI"]
    net = TemporalCNN(7, 3, 8, modalities=mods, time_series=["s2_may", "s2_jul"],
                      band_names=names)
    assert net.groups == {"s2_may": ["s2_may", "s2_may_idx"], "s2_jul": ["s2_jul", "s2_jul_idx"]}
    x = torch.arange(7.0)[None, :, None, None].expand(1, 7, 8, 8)
    seq = net.sequence(x)[0, :, :, 0, 0]
    assert seq.tolist() == [[0.0, 1.0, 5.0, 4.0], [2.0, 3.0, 6.0, 4.0]]  # its NDVI, the DEM
    with pytest.raises(ConfigError, match="hold different bands"):
        TemporalCNN(4, 3, 8, modalities={"s2_may": 2, "s2_jul": 2},
                    time_series=["s2_may", "s2_jul"],
                    band_names=["s2_may_B4", "s2_may_B8", "s2_jul_B8", "s2_jul_B4"])
    with pytest.raises(ConfigError, match="repeats a date"):
        TemporalCNN(4, 3, 8, modalities={"s2_may": 2, "s2_jul": 2},
                    time_series=["s2_may", "s2_may"])
