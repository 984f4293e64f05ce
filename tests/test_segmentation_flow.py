"""Segmentation in the core flow: extract -> train -> evaluate -> report, and a study on IoU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from geofuse.cli import app
from geofuse.config import GuardConfig
from geofuse.data.normalize import BandStats, compute_band_stats
from geofuse.evaluation.seg_evaluate import mask_probabilities, undo_dihedral
from geofuse.evaluation.tta import DIHEDRAL, dihedral
from geofuse.rundir import read_history
from geofuse.training.guards import CollapseStopper

TINY = {"decoder_channels": [16, 8, 8, 8, 8]}


def _study(tmp_path: Path, **extra: Any) -> Path:
    data = {
        "name": "lt", "workdir": "work", "seed": 1,
        "dataset": {"name": "land_take_synthetic", "n_tiles": 20, "years": 3},
        "extract": {"patch_size": 16},
        "splits": {"val_fraction": 0.3, "test_fraction": 0.2},
        "train": {"model": {"name": "lstm_unet", "lstm_hidden_dim": 8, **TINY},
                  "epochs": 2, "batch_size": 4, "monitor": "val_iou",
                  "loss": {"name": "focal", "class_weights": [0.75, 0.25]}},
        **extra,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["extract", "-c", str(path)])
    assert result.exit_code == 0, result.output
    return path


def test_train_a_temporal_segmentation_run_end_to_end(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    path = _study(tmp_path)
    result = CliRunner().invoke(app, ["train", "-c", str(path), "--optimizer", "adamw",
                                      "--lr", "0.005", "--lstm-hidden-dim", "4"])
    assert result.exit_code == 0, result.output
    assert "val: IoU" in result.output and "test: IoU" in result.output
    run = next((tmp_path / "work" / "runs").iterdir())
    config = yaml.safe_load((run / "config.yaml").read_text())  # the overrides are recorded
    assert config["train"]["optimizer"] == "adamw" and config["train"]["lr"] == 0.005
    assert config["train"]["model"]["lstm_hidden_dim"] == 4
    info = json.loads((run / "run.json").read_text())
    assert info["task"] == "segmentation" and info["time_steps"] == 3
    assert info["mask_names"] == ["no_change", "land_take"]
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("val", "test"):
        m = metrics[split]
        assert m["segmentation"] and 0 <= m["iou"] <= 1 and m["n"] > 0
        assert m["per_tile"]["n_tiles"] == m["n"]
        saved = np.load(run / f"{split}_masks.npz")
        assert saved["pred"].shape == (m["n"], 16, 16) and saved["pred"].dtype == np.uint8
    # per-pixel temperature scaling on the labelled val pixels, judged on the test pixels
    cal = metrics["calibration"]
    assert cal["method"] == "temperature" and set(cal["splits"]) == {"val", "test"}
    for split, c in cal["splits"].items():
        labelled = int((np.load(run / f"{split}_masks.npz")["pred"] >= 0).sum())
        assert 0 < c["n"] <= labelled and sum(b["count"] for b in c["bins"]) == c["n"]
        assert c["ece_before"] is not None
    assert cal.get("skipped") or cal["splits"]["val"]["nll"] <= \
        cal["splits"]["val"]["nll_before"] + 1e-6
    history = read_history(run / "history.csv")
    assert all(row["val_iou"] is not None for row in history)
    report = (run / "report.md").read_text()
    assert "## Calibration of the probabilities" in report
    assert "class 'land_take'" in report and "| IoU |" in report
    assert (run / "plots" / "masks_val.png").is_file() and "Time series: 3 dates" in report
    stats = BandStats.load(run / "normalization.json")  # one scale per band through time
    np.testing.assert_allclose(stats.mean[:9], stats.mean[9:18])


def test_a_segmentation_study_compares_models_on_iou(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    path = _study(tmp_path, ablation={
        "folds": 2, "group_by": "polygon", "models": [
            {"name": "unet_early", "options": TINY, "label": "early"},
            {"name": "siamese_unet", "options": TINY, "label": "siamese"}]})
    data = yaml.safe_load(path.read_text())
    data["train"] = {**data["train"], "epochs": 1,
                     "model": {"name": "unet_early"}}
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["ablate", "-c", str(path)])
    assert result.exit_code == 0, result.output
    assert "val IoU" in result.output
    study = tmp_path / "work" / "studies" / "lt"
    assert json.loads((study / "study.json").read_text())["primary_metric"] == "iou"
    md = (study / "report.md").read_text()
    assert "Main metric: **iou**" in md and "| stratum | tiles |" in md
    assert "## Calibration of the probabilities" in md
    assert "Mean validation IoU per epoch" in md
    assert "Masks of a few validation tiles" in md and (study / "plots" / "masks.png").is_file()
    results = (study / "results.csv").read_text().splitlines()[0]
    assert "val_iou" in results and "val_f1" in results


def test_tta_maps_every_transform_back_onto_the_tile() -> None:
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    for k, flip in DIHEDRAL:
        torch.testing.assert_close(undo_dihedral(dihedral(x, k, flip), k, flip), x)

    class Identity(torch.nn.Module):  # logits = the image: TTA must give back the plain output
        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return image

    torch.testing.assert_close(mask_probabilities(Identity(), x, tta=True),
                               mask_probabilities(Identity(), x, tta=False))


def test_collapse_stopper_reads_masks_and_skips_unlabelled_pixels() -> None:
    stopper = CollapseStopper(GuardConfig(flat_epochs=2))

    class Module(torch.nn.Module):
        segmentation = True
        hparams: ClassVar[dict[str, Any]] = {"num_classes": 2,
                                             "class_names": ["no_change", "land_take"]}

    class Trainer:
        callback_metrics: ClassVar[dict[str, torch.Tensor]] = {}
        current_epoch = 0

    logits = torch.zeros(2, 2, 4, 4)
    logits[:, 1] = 1.0  # every pixel predicted land_take
    logits[1, 0] = 5.0  # ... except on the unlabelled tile, which must not count
    mask = torch.zeros(2, 4, 4, dtype=torch.long)
    mask[0, :2] = 1
    mask[1] = 255
    trainer, reason = Trainer(), None
    for epoch in range(2):
        trainer.current_epoch = epoch
        trainer.callback_metrics = {"val_loss": torch.tensor(1.0 - 0.3 * epoch)}
        stopper._preds, stopper._labels, stopper._hook = [], [], object()
        stopper._record(Module(), (), logits)
        stopper.on_validation_batch_end(trainer, Module(), None, {"mask": mask}, 0)
        reason = stopper._check(trainer, Module())
    assert reason is not None and "land_take" in reason and "2 epochs" in reason


def test_temporal_band_statistics_pool_each_band_over_dates() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3 * 2, 4, 4))  # 3 dates x bands a, b
    x[:, 1::2] += 10  # band b is brighter than band a at every date
    x[:, 4:] += 5  # the last date is brighter: pooled statistics keep that difference
    names = [f"{b}@{t}" for t in ("2018", "2019", "2020") for b in ("a", "b")]
    stats = compute_band_stats(x, names, time_steps=3)
    np.testing.assert_allclose(stats.mean[[0, 2, 4]], stats.mean[0])
    np.testing.assert_allclose(stats.mean[[1, 3, 5]], stats.mean[1])
    assert stats.mean[0] == pytest.approx(float(x[:, 0::2].mean()))
    assert stats.mean[1] > stats.mean[0] + 9
    per_date = compute_band_stats(x, names)
    assert per_date.mean[4] > per_date.mean[0] + 4


def test_a_model_of_the_wrong_task_is_refused_before_training(tmp_path: Path) -> None:
    path = _study(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["train"]["model"] = {"name": "simple_cnn"}
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["train", "-c", str(path)])
    assert result.exit_code == 2
    assert "carries pixel masks" in result.output and "lstm_unet" in result.output
    assert not (tmp_path / "work" / "runs").exists()  # nothing written


def test_a_segmentation_model_on_patch_labels_is_refused(tmp_path: Path) -> None:
    from factories import make_config, make_patchset
    from geofuse.preflight import check_config

    cfg = make_config(tmp_path, model={"name": "unet_early"})
    make_patchset(n=20).save(cfg.patches_path)
    problems = [str(p) for p in check_config(cfg, "train")]
    assert any("is a segmentation model" in p for p in problems), problems


def test_augmentation_moves_every_date_and_the_mask_together(tmp_path: Path) -> None:
    from geofuse.data.datamodule import PatchDataModule
    from geofuse.data.patchset import PatchSet, temporal_band_names

    rng = np.random.default_rng(0)
    masks = (rng.random((8, 6, 6)) > 0.5).astype(np.uint8)
    names = temporal_band_names(["a"], ["2018", "2019", "2020"])
    x = np.repeat(masks[:, None].astype(np.float32), 3, axis=1) * 10 + 5  # every date = mask
    patches = PatchSet(x=x, y=np.zeros(8), band_names=names, modalities={"s2": names},
                       class_names=["low"], groups=[f"tile:{i}" for i in range(8)],
                       coords=np.zeros((8, 2)), split=np.zeros(8), masks=masks,
                       mask_names=["no_change", "land_take"], timestamps=["2018", "2019", "2020"])
    data = PatchDataModule(patches, batch_size=4, augment=True, crop=0.6)
    torch.manual_seed(0)
    for i in range(8):
        sample = data.dataset("train")[i]
        image, mask = sample["image"], sample["mask"]
        assert image.shape == (3, 6, 6) and mask.shape == (6, 6)
        torch.testing.assert_close(image[0], image[2])  # the dates moved alike
        high = image[0] > image[0].mean() if image[0].std() > 0 else image[0] > 1e9
        assert ((mask == 1) == high).float().mean() > 0.8  # mask and image moved alike


def test_search_ranks_segmentation_trials_by_iou(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    path = _study(tmp_path, ablation={"folds": 2, "group_by": "polygon"},
                  search={"fold": 0, "space": {"train.lr": [0.01, 0.001]}, "epochs": 1})
    result = CliRunner().invoke(app, ["search", "-c", str(path)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "work" / "studies" / "lt-search"
    record = json.loads((out / "search.json").read_text())
    assert record["metric"] == "val_iou" and len(record["trials"]) == 2
    ious = [t["val_iou"] for t in record["trials"]]
    assert ious == sorted(ious, reverse=True)
    md = (out / "report.md").read_text()
    assert "Main metric: **iou**" in md and "paired Cohen's d" in md
