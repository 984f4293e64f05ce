"""Data pipeline, training, evaluation and the run directory on tiny synthetic PatchSets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from factories import CLASSES, DEM, S2, make_config, make_patchset
from geofuse.cli import app
from geofuse.config import dump_config, load_config
from geofuse.data.datamodule import PatchDataModule, check_splits, select_inputs
from geofuse.data.normalize import BandStats, compute_band_stats, normalize
from geofuse.data.patchset import PatchSet
from geofuse.data.transforms import RandomFlipRotate, flip_rotate
from geofuse.errors import BandError, DataNotFoundError, RunDirError, SplitError
from geofuse.evaluation.evaluate import evaluate_run
from geofuse.rundir import HISTORY_COLUMNS, RunDir, read_history
from geofuse.training.train import train_model


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trained")
    cfg = make_config(root)
    make_patchset().save(cfg.patches_path)
    return train_model(cfg, progress=False)


# -- data -----------------------------------------------------------------------------------
def test_normalisation_uses_train_split_only() -> None:
    ps = make_patchset()
    stats = PatchDataModule(ps).stats
    changed = ps.x.copy()
    changed[ps.split != 0] *= 100.0
    stats_val_changed = PatchDataModule(ps._replace(x=changed)).stats
    np.testing.assert_array_equal(stats.mean, stats_val_changed.mean)
    np.testing.assert_array_equal(stats.std, stats_val_changed.std)
    train_x = ps.x[ps.split == 0].astype(np.float64)
    np.testing.assert_allclose(stats.mean, np.nanmean(train_x, axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(stats.std, np.nanstd(train_x, axis=(0, 2, 3)), rtol=1e-5)


def test_normalise_maps_nan_to_band_mean_and_roundtrips(tmp_path: Path) -> None:
    x = np.array([[[[1.0, 3.0], [np.nan, 5.0]], [[2.0, 2.0], [2.0, 2.0]]]], dtype=np.float32)
    stats = compute_band_stats(x, ["a", "b"])
    assert stats.mean.tolist() == [3.0, 2.0]
    assert stats.std[1] == 1.0  # constant band: no division by zero
    out = normalize(x, stats)
    assert out[0, 0, 1, 0] == 0.0
    assert np.isfinite(out).all()
    assert out[0, 0, 0, 0] == pytest.approx((1 - 3) / np.sqrt(8 / 3))
    loaded = BandStats.load(stats.save(tmp_path / "n.json"))
    assert loaded.bands == ["a", "b"]
    np.testing.assert_array_equal(loaded.mean, stats.mean)


def test_band_without_valid_train_pixels_is_a_band_error() -> None:
    x = np.full((2, 1, 4, 4), np.nan, dtype=np.float32)
    with pytest.raises(BandError, match="'dead'"):
        compute_band_stats(x, ["dead"])


def test_flip_rotate_applies_same_transform_to_every_raster() -> None:
    image = torch.tensor([[[1, 2], [3, 4]]])
    sample = {"image": image, "mask": image[0].clone(), "s2": image.clone(), "label": 3,
              "index": 9}
    out = flip_rotate(sample, k=1, flip=False)
    assert out["image"].tolist() == [[[2, 4], [1, 3]]]  # 90 degrees counter-clockwise
    assert out["mask"].tolist() == [[2, 4], [1, 3]]
    assert out["s2"].tolist() == out["image"].tolist()
    assert (out["label"], out["index"]) == (3, 9)
    assert flip_rotate(sample, k=0, flip=True)["image"].tolist() == [[[2, 1], [4, 3]]]
    assert sample["image"].tolist() == [[[1, 2], [3, 4]]]  # input untouched


def test_random_flip_rotate_preserves_content_and_covers_all_8_outcomes() -> None:
    torch.manual_seed(0)
    image = torch.arange(2 * 3 * 3).reshape(2, 3, 3)
    seen = set()
    for _ in range(200):
        out = RandomFlipRotate()({"image": image, "mask": image[0], "label": 1})
        assert out["image"].shape == image.shape
        assert sorted(out["image"].flatten().tolist()) == image.flatten().tolist()
        assert torch.equal(out["mask"], out["image"][0])
        seen.add(tuple(out["image"].flatten().tolist()))
    assert len(seen) == 8


def test_training_batches_are_augmented_and_val_batches_are_not() -> None:
    dm = PatchDataModule(make_patchset(), batch_size=16, augment=True, seed=1)
    val = dm.dataset("val")
    assert torch.equal(val[0]["image"], val[0]["image"])
    train = dm.dataset("train")
    torch.manual_seed(0)
    draws = {tuple(train[0]["image"].flatten().tolist()) for _ in range(20)}
    assert len(draws) > 1
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (16, 6, 8, 8)
    assert batch["image"].dtype == torch.float32
    assert set(batch) == {"image", "label", "index"}


def test_select_inputs_by_modality_and_band(tmp_path: Path) -> None:
    ps = make_patchset(n=40)
    assert select_inputs(ps, make_config(tmp_path, modalities=["dem"]).train).band_names == DEM
    sub = select_inputs(ps, make_config(tmp_path, bands=["s2_nir", "dem_elev"]).train)
    assert sub.band_names == ["s2_nir", "dem_elev"]
    with pytest.raises(BandError, match="s2_swir"):
        select_inputs(ps, make_config(tmp_path, bands=["s2_swir"]).train)


def test_split_errors_name_the_class_and_the_fix() -> None:
    ps = make_patchset(n=80)
    no_water_val = ps.split.copy()
    no_water_val[(ps.y == 1) & (ps.split == 1)] = 0
    with pytest.raises(SplitError, match=r"\['water'\].*val split.*geofuse extract"):
        check_splits(ps._replace(split=no_water_val))
    with pytest.raises(SplitError, match="val split is empty"):
        check_splits(ps._replace(split=np.zeros(len(ps), dtype=np.uint8)))


def test_missing_patchset_says_run_extract(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="geofuse extract"):
        train_model(make_config(tmp_path), progress=False)


# -- training and the run directory ---------------------------------------------------------
def test_training_learns_and_writes_complete_run_dir(trained_run: Path) -> None:
    run = RunDir(trained_run)
    assert run.name == "toy-s2+dem-seed7"
    for path in (run.config, run.run_json, run.normalization, run.metrics, run.history,
                 run.best_ckpt, run.last_ckpt, run.report, run.plots / "training_curves.png",
                 run.plots / "confusion_matrix_val.png", run.plots / "confusion_matrix_test.png"):
        assert path.is_file() and path.stat().st_size > 0, path
    metrics = json.loads(run.metrics.read_text())
    assert metrics["val"]["accuracy"] > 0.9
    assert metrics["val"]["f1_macro"] > 0.9
    assert metrics["guard"]["collapsed"] is False
    history = read_history(run.history)
    assert list(history[0]) == list(HISTORY_COLUMNS)
    assert [r["epoch"] for r in history] == list(range(8))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(0 <= r[k] <= 1 for r in history for k in ("train_f1_macro", "val_f1_macro"))
    assert history[-1]["train_f1_macro"] > history[0]["train_f1_macro"]
    assert metrics["best_epoch"] == min(history, key=lambda r: r["val_loss"])["epoch"]


def test_run_dir_records_provenance(trained_run: Path) -> None:
    run = RunDir(trained_run)
    info = json.loads(run.run_json.read_text())
    assert Path(info["patches_path"]).is_absolute()
    assert info["bands"] == S2 + DEM
    assert info["class_names"] == CLASSES
    assert info["seed"] == 7
    assert info["num_params"] > 50_000
    assert info["class_counts"]["val"] == {c: 10 for c in CLASSES}
    assert {"torch", "lightning", "geofuse"} <= set(info["versions"])
    assert info["sessions"][0]["train_s"] > 0
    cfg = load_config(run.config)
    assert cfg.patches_path == Path(info["patches_path"])
    assert cfg.train.run_name == run.name
    ps = PatchSet.load(info["patches_path"])
    expected = compute_band_stats(ps.x[ps.split == 0], ps.band_names)
    stats = BandStats.load(run.normalization)
    np.testing.assert_allclose(stats.mean, expected.mean, rtol=1e-6)


def test_evaluate_run_reproduces_metrics_json(trained_run: Path) -> None:
    run = RunDir(trained_run)
    saved = json.loads(run.metrics.read_text())
    again = evaluate_run(trained_run, verbose=False)
    assert json.loads(json.dumps(again)) == saved


def test_same_seed_gives_identical_metrics(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, epochs=3, modalities=["s2"])
    make_patchset().save(cfg.patches_path)
    first = RunDir(train_model(cfg, progress=False, run_name="a"))
    second = RunDir(train_model(cfg, progress=False, run_name="b"))
    assert json.loads(first.run_json.read_text())["bands"] == S2
    assert read_history(first.history) == read_history(second.history)
    m1, m2 = (json.loads(r.metrics.read_text()) for r in (first, second))
    assert m1["val"] == m2["val"]
    assert m1["test"] == m2["test"]


def test_resume_continues_interrupted_run(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    ps = make_patchset()
    run = RunDir(train_model(cfg, progress=False, epochs=2, patchset=ps, run_name="r"))
    before = read_history(run.history)
    assert len(before) == 2
    with pytest.raises(RunDirError, match="--resume"):
        train_model(cfg, progress=False, epochs=4, patchset=ps, run_name="r")
    train_model(cfg, resume=True, progress=False, epochs=4, patchset=ps, run_name="r")
    after = read_history(run.history)
    assert [r["epoch"] for r in after] == [0, 1, 2, 3]
    assert after[:2] == before
    steps_per_epoch = int(np.ceil((ps.split == 0).sum() / cfg.train.batch_size))
    last = torch.load(run.last_ckpt, map_location="cpu", weights_only=True)
    assert last["global_step"] == 4 * steps_per_epoch
    info = json.loads(run.run_json.read_text())
    assert [s["resumed"] for s in info["sessions"]] == [False, True]
    assert info["patches_path"] == str(run.patches_copy.resolve())
    assert load_config(run.config).train.epochs == 4
    with pytest.raises(RunDirError, match="trained on bands"):
        train_model(make_config(tmp_path, modalities=["dem"]), resume=True, progress=False,
                    patchset=ps, run_name="r")


def test_resume_without_checkpoint_is_a_run_dir_error(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="without --resume"):
        train_model(make_config(tmp_path), resume=True, progress=False, run_name="nothing")


# -- CLI --------------------------------------------------------------------------------------
def test_cli_train_with_typo_key_exits_2_with_one_line(tmp_path: Path) -> None:
    cfg_path = tmp_path / "study.yaml"
    data = yaml.safe_load(dump_config(make_config(tmp_path)))
    data["train"]["epochz"] = 3
    cfg_path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["train", "-c", str(cfg_path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert "train.epochz" in lines[0] and "epochs" in lines[0]


def test_cli_train_writes_a_run(tmp_path: Path) -> None:
    cfg_path = tmp_path / "study.yaml"
    dump_config(make_config(tmp_path, epochs=1), cfg_path)
    make_patchset(n=80).save(tmp_path / "work" / "patches.h5")
    result = CliRunner().invoke(app, ["train", "-c", str(cfg_path), "--run-name", "cli"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "work" / "runs" / "cli" / "report.md").is_file()


def test_training_loader_drops_a_last_batch_of_one() -> None:
    ps = make_patchset()
    n_train = len(ps.split_indices("train"))
    dm = PatchDataModule(ps, batch_size=n_train - 1)
    assert len(dm.train_dataloader()) == 1  # the lone remainder sample would break batch norm
    assert len(PatchDataModule(ps, batch_size=n_train - 2).train_dataloader()) == 2
    assert len(dm.val_dataloader().dataset) == len(ps.split_indices("val"))
