"""Semantic segmentation on the fused stack: extract.target mask, unet_late, map and assess."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from shapely.geometry import box, mapping
from torch import nn
from typer.testing import CliRunner

from geofuse.cli import app
from geofuse.config import load_config
from geofuse.data.extract import extract_patches
from geofuse.data.patchset import MASK_IGNORE, PatchSet
from geofuse.data.synthetic import generate_scene
from geofuse.errors import ConfigError
from geofuse.labels.label_tiles import _dominant, tile_strata
from geofuse.models.registry import create_model
from test_raster_labels import _write_labels

P, CAP = 32, 6
CODES = {"Agriculture": 1, "Forest": 2, "Parcels": 3, "Urban": 4}  # Water (5) left unlabelled
TINY = {"decoder_channels": [16, 8, 8, 8, 8]}


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def _config(folder: Path, name: str, labels: dict, **extract: object) -> Path:
    data = yaml.safe_load((folder / "study.yaml").read_text())
    data["labels"] = labels
    data["extract"] = {"patch_size": P, "target": "mask", "per_class": CAP, "block_size": 40,
                       "output": f"{Path(name).stem}.h5", **extract}
    data["splits"] = {"val_fraction": 0.3}
    data["train"] = {"model": {"name": "unet_late", **TINY}, "epochs": 1, "batch_size": 8,
                     "monitor": "val_iou"}
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("masks")
    generate_scene(folder, seed=7, size_m=4000.0, n_polygons=30)
    labels = _write_labels(folder, "labels10.tif", "EPSG:32718", 10.0)  # the stack's grid
    cfg = _config(folder, "tiles.yaml", {"raster": "labels10.tif", "class_codes": CODES})
    code, out = _invoke("prepare", "-c", str(cfg))
    assert code == 0, out
    code, out = _invoke("extract", "-c", str(cfg))
    assert code == 0, out
    return {"folder": folder, "cfg": cfg, "labels": labels,
            "patches": folder / "work" / "tiles.h5"}


def _tile_origins(ps: PatchSet, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    with rasterio.open(folder / "work" / "stack.tif") as src:
        rows, cols = rasterio.transform.rowcol(src.transform, ps.coords[:, 0], ps.coords[:, 1])
    return np.asarray(rows) - P // 2, np.asarray(cols) - P // 2


def test_masks_are_the_label_raster_cut_on_a_tile_grid(scene: dict[str, Path]) -> None:
    ps = PatchSet.load(scene["patches"])
    assert ps.segmentation and ps.x.shape[1:] == (8, P, P) and ps.masks.shape[1:] == (P, P)
    assert ps.mask_names == list(CODES) and ps.provenance["target"] == "mask"
    with rasterio.open(scene["labels"]) as src:
        codes = src.read(1)
    rows, cols = _tile_origins(ps, scene["folder"])
    assert (rows % P == 0).all() and (cols % P == 0).all()  # a regular, non-overlapping grid
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) == len(ps)
    lookup = np.full(256, MASK_IGNORE, dtype=np.uint8)  # code -> class index, Water ignored
    for k, code in enumerate(CODES.values()):
        lookup[code] = k
    for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
        expected = lookup[codes[r:r + P, c:c + P]]
        expected[np.isnan(ps.x[i]).any(axis=0)] = MASK_IGNORE  # nodata pixels: unlabelled
        np.testing.assert_array_equal(ps.masks[i], expected)
    labelled = (ps.masks != MASK_IGNORE).mean(axis=(1, 2))
    assert (labelled >= 0.05).all()
    # y: the tile's dominant mask class, named in class_names; at most CAP tiles per class
    for i in range(len(ps)):
        counts = np.bincount(ps.masks[i][ps.masks[i] != MASK_IGNORE], minlength=len(CODES))
        assert ps.class_names[ps.y[i]] == ps.mask_names[int(counts.argmax())]
    assert np.bincount(ps.y).max() <= CAP


def test_tiles_are_grouped_by_whole_tile_blocks_that_never_straddle_splits(
    scene: dict[str, Path],
) -> None:
    ps = PatchSet.load(scene["patches"])
    rows, cols = _tile_origins(ps, scene["folder"])
    block = 64  # block_size 40 rounded up to whole 32 px tiles
    assert ps.provenance["sampling"]["block_size"] == block
    want = [f"block:{c // block}_{r // block}" for r, c in zip(rows, cols, strict=True)]
    assert list(ps.groups) == want
    for g in np.unique(ps.groups):
        assert len(np.unique(ps.split[ps.groups == g])) == 1
    assert set(np.unique(ps.split).tolist()) == {0, 1}


def test_dominant_class_ignores_unlabelled_pixels() -> None:
    tiles = np.array([[5, 5, 5, 2], [1, 2, 2, 9], [9, 9, 9, 9]])
    ok = tiles != 9
    count, dominant = _dominant(tiles, ok)
    assert count.tolist() == [4, 3, 0] and dominant.tolist() == [5, 2, -1]


def test_a_class_dominant_in_too_few_groups_passes_its_tiles_to_their_next_class() -> None:
    pixels = np.array([[9, 1, 0], [8, 0, 0], [0, 5, 0], [0, 6, 0], [0, 1, 7], [0, 0, 3]])
    groups = np.array(["a", "b", "c", "d", "e", "e"])
    y, has, passed = tile_strata(pixels, groups, min_groups=2)
    # class 2 dominates tiles of one group only: tile 4 goes to class 1, tile 5 has no other
    assert y.tolist() == [0, 0, 1, 1, 1, -1] and has.tolist() == [True] * 5 + [False]
    assert passed == {2: 1}


def test_polygons_are_burnt_into_the_masks(scene: dict[str, Path]) -> None:
    folder = scene["folder"]
    with rasterio.open(folder / "work" / "stack.tif") as src:
        left, top, crs = src.bounds.left, src.bounds.top, src.crs
    # rectangles in the stack's CRS: Forest over the tile at row 0, col 0, Water over part
    # of the tile at row 32, col 64 (pixels); the rest is unlabelled
    forest = box(left, top - 320, left + 320, top)
    water = box(left + 640 + 50, top - 640 + 20, left + 640 + 250, top - 320 - 20)
    # and one more whole tile of each class in other blocks (each class needs 2 groups)
    rects = [("Forest", forest), ("Water", water),
             ("Forest", box(left + 2560, top - 2880, left + 2880, top - 2560)),
             ("Water", box(left + 1280, top - 3520, left + 1600, top - 3200))]
    features = [{"type": "Feature", "properties": {"class": c, "id": i},
                 "geometry": mapping(g)} for i, (c, g) in enumerate(rects)]
    (folder / "rects.geojson").write_text(json.dumps({
        "type": "FeatureCollection", "features": features,
        "crs": {"type": "name", "properties": {"name": crs.to_string()}}}))
    cfg = _config(folder, "rects.yaml", {"path": "rects.geojson", "classes": ["Forest", "Water"]},
                  max_nodata_fraction=1.0, on_nodata="flag")
    ps = extract_patches(load_config(cfg), progress=False)
    assert ps.mask_names == ["Forest", "Water"] and "labels_polygons" in ps.provenance
    rows, cols = _tile_origins(ps, folder)
    tiles = dict(zip(zip(rows.tolist(), cols.tolist(), strict=True), ps.masks, strict=True))
    assert set(tiles) == {(0, 0), (32, 64), (256, 256), (320, 128)}
    nan = np.isnan(ps.x).any(axis=1)
    assert ((tiles[(0, 0)] == 0) | nan[list(tiles).index((0, 0))]).all()  # whole tile Forest
    water_tile = tiles[(32, 64)]
    assert (water_tile[2:30, 5:25] == 1).all()  # pixel centres inside the rectangle
    assert (water_tile[:, 26:] == MASK_IGNORE).all() and (water_tile[:, :4] == MASK_IGNORE).all()


def test_too_strict_a_labelled_share_is_a_one_line_error(scene: dict[str, Path]) -> None:
    cfg = _config(scene["folder"], "strict.yaml", {"raster": "labels10.tif",
                                                   "class_codes": {"Forest": 2, "Water": 5}},
                  min_labelled=1.0)
    code, out = _invoke("extract", "-c", str(cfg))
    assert code == 2, out
    assert "extract.min_labelled" in out and "labels10.tif" in out
    assert len([ln for ln in out.splitlines() if ln.strip()]) == 1
    # one class (the rest unlabelled) cannot train a segmentation model
    cfg = _config(scene["folder"], "one.yaml", {"raster": "labels10.tif",
                                                "class_codes": {"Water": 5}})
    code, out = _invoke("extract", "-c", str(cfg))
    assert code == 2 and "needs two or more" in out and "labels.unlabelled" in out, out


def test_unet_late_gives_each_modality_its_own_encoder() -> None:
    torch.manual_seed(0)
    mods = {"s2": 4, "s1": 2, "dem": 1}
    model = create_model("unet_late", in_channels=7, num_classes=3, patch_size=32,
                         modalities=mods, band_names=["B2", "B3", "B4", "B8", "VV", "VH", "z"],
                         **TINY)
    assert list(model.streams) == ["s2", "s1", "dem"]
    stems = {m: next(s for s in net.modules() if isinstance(s, nn.Conv2d))
             for m, net in model.streams.items()}
    assert {m: conv.in_channels for m, conv in stems.items()} == mods
    out = model(torch.randn(2, 7, 40, 40))  # any tile size: padded and cropped back
    assert out.shape == (2, 3, 40, 40)
    out.square().mean().backward()
    assert all(conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
               for conv in stems.values())
    # one decoder: the other streams keep only their encoders
    assert sum(isinstance(net.unet.decoder, nn.Identity) for net in model.streams.values()) == 2
    with pytest.raises(ConfigError, match="time_steps=2"):
        create_model("unet_late", in_channels=8, num_classes=2, patch_size=32, time_steps=2)
    with pytest.raises(ConfigError, match="do not split"):
        create_model("unet_late", in_channels=7, num_classes=2, patch_size=32,
                     modalities={"s2": 4, "s1": 2})


def test_segmentation_of_the_stack_trains_maps_and_assesses_end_to_end(
    scene: dict[str, Path], tmp_path: Path,
) -> None:
    torch.set_num_threads(1)
    cfg = scene["cfg"]
    code, out = _invoke("train", "-c", str(cfg), "--run-name", "late")
    assert code == 0, out
    assert "val: IoU" in out
    run = scene["folder"] / "work" / "runs" / "late"
    info = json.loads((run / "run.json").read_text())
    assert info["task"] == "segmentation" and info["mask_names"] == list(CODES)
    code, out = _invoke("predict", str(run), "--stack",
                        str(scene["folder"] / "work" / "stack.tif"), "-o", str(tmp_path / "map"))
    assert code == 0, out
    with rasterio.open(tmp_path / "map" / "classes.tif") as src, \
            rasterio.open(scene["folder"] / "work" / "stack.tif") as stack:
        assert (src.width, src.height, src.transform) == (stack.width, stack.height,
                                                          stack.transform)
        assert json.loads(src.tags()["label_codes"]) == CODES
        mapped = src.read(1)
    assert set(np.unique(mapped).tolist()) <= {0, 1, 2, 3, 255}
    # the map knows the training raster's codes: assess reads that raster as is (0 is its
    # unlabelled code; 5 = Water was no training class: left out with a warning)
    code, out = _invoke("assess", str(tmp_path / "map" / "classes.tif"), "--labels",
                        str(scene["labels"]), "-o", str(tmp_path / "assess"))
    assert code == 0, out
    assert "code(s) {5:" in out and "left out" in out
    with rasterio.open(scene["labels"]) as src:
        data = src.read(1)
    result = json.loads((tmp_path / "assess" / "assessment.json").read_text())
    labelled = int(np.isin(data, list(CODES.values())).sum())
    n_ref = int(np.asarray(result["confusion_matrix"]).sum())
    assert 0.9 * labelled <= n_ref <= labelled  # every labelled pixel on a mapped pixel
    # a reference with its own class_names tag is read by those names, not the training codes
    named = tmp_path / "named.tif"
    with rasterio.open(scene["labels"]) as src:
        profile = src.profile
    with rasterio.open(named, "w", **profile) as dst:
        dst.write(data, 1)
        dst.update_tags(class_names=json.dumps(["Forest", "Agriculture"]))
    code, out = _invoke("assess", str(tmp_path / "map" / "classes.tif"), "--labels",
                        str(named), "--unlabelled", "99", "-o", str(tmp_path / "assess2"))
    assert code == 2 and "holds code(s) the map does not have" in out, out


def test_a_patch_classifier_on_mask_tiles_and_a_dataset_with_masks_are_refused(
    scene: dict[str, Path],
) -> None:
    data = yaml.safe_load(scene["cfg"].read_text())
    data["train"]["model"] = {"name": "simple_cnn"}
    data["ablation"] = {"folds": 2, "models": ["unet_early"]}
    data["extract"]["output"] = "not_extracted_yet.h5"  # judged from the config alone
    path = scene["folder"] / "cnn.yaml"
    path.write_text(yaml.safe_dump(data))
    code, out = _invoke("config", "--check", str(path))
    assert code == 2 and "'simple_cnn' classifies whole patches" in out, out
    assert "extract.target mask" in out and "ablation.models" not in out
    data["extract"]["target"] = "class"  # and the other way round
    data["train"]["model"] = {"name": "unet_late"}
    data["ablation"] = {"folds": 2, "models": ["simple_cnn"]}
    path.write_text(yaml.safe_dump(data))
    code, out = _invoke("config", "--check", str(path))
    assert code == 2 and "'unet_late' is a segmentation model" in out, out
    data = {"dataset": {"name": "eurosat_ms", "root": "x"}, "extract": {"target": "mask"}}
    path.write_text(yaml.safe_dump(data))
    code, out = _invoke("config", "--check", str(path))
    assert code == 2 and "remove extract.target" in out, out
