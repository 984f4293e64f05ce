"""``geofuse predict`` with dense models: blended half-overlapping tiles give a map that does
not depend on the tile size; per-pixel nodata only; TTA; the per-pixel forest baseline.

The dense run is built directly (a small U-Net fitted for a few steps on the synthetic scene,
saved as a Lightning-style checkpoint with run.json, config.yaml and normalization.json), as a
segmentation run directory written by ``geofuse train`` would be.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import torch
import yaml
from sklearn.ensemble import RandomForestClassifier

from geofuse.config import dump_config
from geofuse.data.normalize import compute_band_stats, normalize
from geofuse.evaluation.seg_evaluate import mask_probabilities
from geofuse.mapping.predict import PredictOptions, predict_map
from geofuse.mapping.windows import (
    blend_weights,
    block_size,
    dense_tile_size,
    dense_window_size,
    patch_window_size,
)
from geofuse.models.pixel_forest import pixel_features
from geofuse.training.task import ClassificationTask
from test_predict import BANDS, CLASSES, read, scene, study_config, truth, write_stack

TINY = {"decoder_channels": [16, 8, 8, 8, 8]}


def _run_dir(root: Path, stack: Path, model: str) -> Path:
    run = root / model
    (run / "checkpoints").mkdir(parents=True)
    info = {"run_name": model, "status": "finished", "model": {"name": model, "kwargs": {}},
            "bands": BANDS, "class_names": ["scene"], "mask_names": CLASSES,
            "task": "segmentation", "patch_size": 16, "num_classes": 1}
    (run / "run.json").write_text(json.dumps(info))
    dump_config(study_config(root, stack, model={"name": model}), run / "config.yaml")
    data = scene()
    compute_band_stats(data[None], BANDS).save(run / "normalization.json")
    return run


def _fit_unet(seed: int = 0, steps: int = 25, **kwargs: Any) -> ClassificationTask:
    """A small U-Net fitted for a few steps on random 32 px crops of the scene."""
    torch.manual_seed(seed)
    task = ClassificationTask(model="unet_early", in_channels=4, num_classes=3, patch_size=32,
                              model_kwargs={"band_names": BANDS, **TINY, **kwargs},
                              class_names=CLASSES, segmentation=True)
    data = scene()
    x = torch.from_numpy(normalize(data[None], compute_band_stats(data[None], BANDS)))
    y = torch.from_numpy(truth())
    opt = torch.optim.Adam(task.parameters(), lr=0.01)
    rng = np.random.default_rng(seed)
    task.train()
    for _ in range(steps):
        rs, cs = rng.integers(0, 64 - 32 + 1, 4), rng.integers(0, 80 - 32 + 1, 4)
        image = torch.cat([x[:, :, r:r + 32, c:c + 32] for r, c in zip(rs, cs, strict=True)])
        mask = torch.stack([y[r:r + 32, c:c + 32] for r, c in zip(rs, cs, strict=True)])
        loss = torch.nn.functional.cross_entropy(task(image), mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return task.eval()


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("dense")
    stack = write_stack(root / "stack.tif")
    run = _run_dir(root, stack, "unet_early")
    task = _fit_unet()
    torch.save({"hyper_parameters": dict(task.hparams), "state_dict": task.state_dict(),
                "epoch": 0}, run / "checkpoints" / "best.ckpt")
    return stack, run


def test_blending_weights_sum_to_one_over_half_overlapping_tiles() -> None:
    w = blend_weights(32)
    total = np.zeros((96, 96))
    for r in range(0, 96 - 31, 16):
        for c in range(0, 96 - 31, 16):
            total[r:r + 32, c:c + 32] += w
    np.testing.assert_allclose(total[16:80, 16:80], 1.0, atol=1e-6)
    assert w.min() > 0 and w[0, 0] < 0.01 and w[15:17, 15:17].min() > 0.99


def test_window_sizes_are_whole_cells_hops_and_blocks() -> None:
    assert [patch_window_size(t, s) for t, s in ((256, 1), (20, 3), (100, 5))] == [256, 48, 160]
    assert [dense_tile_size(t) for t in (8, 50, 256)] == [16, 64, 256]
    assert [dense_window_size(t) for t in (256, 48, 1024)] == [512, 528, 2048]
    assert [block_size(w) for w in (256, 528, 2048, 48, 16 * 67)] == [256, 528, 1024, 48, 256]


def test_the_dense_map_does_not_depend_on_the_tile_size(
    dense_run: tuple[Path, Path], tmp_path: Path
) -> None:
    stack, run = dense_run
    a = predict_map(run, stack, tmp_path / "a", PredictOptions(tile_size=48, probabilities=True),
                    progress=False)
    b = predict_map(run, stack, tmp_path / "b", PredictOptions(tile_size=64, probabilities=True),
                    progress=False)
    assert a["engine"] == "dense" and (a["tile_size"], b["tile_size"]) == (48, 64)
    ca, cb = read(tmp_path / "a" / "classes.tif", 1), read(tmp_path / "b" / "classes.tif", 1)
    nodata = np.isnan(scene()).any(axis=0)
    assert ((ca == 255) == nodata).all() and ((cb == 255) == nodata).all()  # no border lost
    assert (ca == cb)[~nodata].mean() >= 0.99
    pa, pb = read(tmp_path / "a" / "probabilities.tif"), read(tmp_path / "b" / "probabilities.tif")
    diff = np.abs(pa.astype(int) - pb)[:, ~nodata]  # percent
    assert np.median(diff) <= 1 and diff.mean() < 2.0
    assert (ca == truth())[~nodata].mean() > 0.6  # the fitted model maps the scene


def test_mc_dropout_passes_of_a_dense_model_are_fixed_networks_across_tiles(
    tmp_path: Path
) -> None:
    stack = write_stack(tmp_path / "stack.tif")
    run = _run_dir(tmp_path, stack, "unet_early")
    task = _fit_unet(dropout=0.5)
    torch.save({"hyper_parameters": dict(task.hparams), "state_dict": task.state_dict(),
                "epoch": 0}, run / "checkpoints" / "best.ckpt")
    spreads = []
    for name, tile in (("a", 48), ("b", 64)):
        predict_map(run, stack, tmp_path / name, PredictOptions(tile_size=tile, mc_dropout=3),
                    progress=False)
        spreads.append(read(tmp_path / name / "uncertainty.tif", 3))  # member_std
    nodata = np.isnan(scene()).any(axis=0)
    a, b = spreads[0][~nodata], spreads[1][~nodata]
    assert a.mean() > 1e-4  # the passes differ
    # one network per pass whatever the tiles: the spread follows the scene, not the tiling
    assert np.corrcoef(a, b)[0, 1] > 0.7 and 0.5 < a.mean() / b.mean() < 2.0


def test_the_dense_map_matches_the_model_run_on_the_whole_scene_at_once(
    dense_run: tuple[Path, Path], tmp_path: Path
) -> None:
    stack, run = dense_run
    from geofuse.evaluation.evaluate import load_task

    predict_map(run, stack, tmp_path, PredictOptions(tile_size=64, tta=True), progress=False)
    classes = read(tmp_path / "classes.tif", 1)
    task, _ = load_task(run / "checkpoints" / "best.ckpt")
    data = scene()
    x = torch.from_numpy(normalize(data[None], compute_band_stats(data[None], BANDS)))
    with torch.inference_mode():
        whole = mask_probabilities(task, x, tta=True)[0].argmax(0).numpy()
    valid = classes != 255
    assert (classes == whole)[valid].mean() >= 0.97
    assert json.loads((tmp_path / "predict.json").read_text())["tta"] is True


def test_a_stride_is_ignored_with_a_warning_for_dense_models(
    dense_run: tuple[Path, Path], tmp_path: Path
) -> None:
    stack, run = dense_run
    with pytest.warns(UserWarning, match="--stride 4 is ignored"):
        record = predict_map(run, stack, tmp_path, PredictOptions(stride=4, tile_size=64),
                             progress=False)
    assert record["stride"] == 1


def test_the_per_pixel_forest_maps_every_pixel_like_its_own_predictions(tmp_path: Path) -> None:
    stack = write_stack(tmp_path / "stack.tif")
    run = _run_dir(tmp_path, stack, "random_forest")
    data = scene()
    means = np.asarray(compute_band_stats(data[None], BANDS).mean)
    values = np.moveaxis(data, 0, -1).reshape(-1, 4)
    feats = pixel_features(values, means, 1, "stats")
    forest = RandomForestClassifier(n_estimators=10, random_state=0)
    forest.fit(feats[::7], truth().ravel()[::7])
    joblib.dump(forest, run / "model.joblib")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["train"]["baseline"]["features"] == "stats"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        record = predict_map(run, stack, tmp_path / "map", PredictOptions(tile_size=48),
                             progress=False)
    assert record["engine"] == "pixel_forest"
    classes = read(tmp_path / "map" / "classes.tif", 1)
    nodata = np.isnan(data).any(axis=0)
    want = forest.predict(feats).reshape(64, 80)
    assert ((classes == 255) == nodata).all()
    assert (classes == want)[~nodata].all()
