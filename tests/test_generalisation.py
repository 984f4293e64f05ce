"""Levers for unseen data: the monitored metric, test-time augmentation, radiometric jitter."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from factories import make_config, make_multilabel_patchset, make_patchset
from geofuse.cli import app
from geofuse.config import AblationModelConfig, TrainConfig, dump_config
from geofuse.data.datamodule import PatchDataModule
from geofuse.data.normalize import BandStats
from geofuse.data.transforms import PerPatchStandardize, RandomBandJitter, standardize_patches
from geofuse.errors import ConfigError
from geofuse.evaluation.evaluate import load_task, predict
from geofuse.evaluation.tta import DIHEDRAL, dihedral, tta_probabilities
from geofuse.experiments.grid import build_grid, cell_config
from geofuse.models.simple_cnn import SimpleCNN, band_statistics
from geofuse.preflight import check_config
from geofuse.rundir import RunDir, read_history
from geofuse.training.train import _build_trainer, build_task, train_model


@pytest.mark.parametrize("monitor", ["val_f1_macro", "val_accuracy"])
def test_monitor_picks_the_best_checkpoint_by_that_score(tmp_path: Path, monitor: str) -> None:
    cfg = make_config(tmp_path, epochs=5, monitor=monitor, lr=0.02, model={"hidden": 16})
    run = train_model(cfg, patchset=make_patchset(n=80), progress=False, run_name=monitor)
    history = read_history(run / "history.csv")
    scores = [row[monitor] for row in history]
    best = int(np.argmax(scores))  # first epoch reaching the maximum (strict improvement)
    assert json.loads((run / "metrics.json").read_text())["best_epoch"] == history[best]["epoch"]
    _, epoch = load_task(run / "checkpoints" / "best.ckpt")
    assert epoch == history[best]["epoch"]


def test_checkpoint_last_keeps_the_final_epoch_without_early_stopping(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, epochs=4, lr=0.5, early_stopping_patience=1,
                      checkpoint="last", model={"hidden": 16})
    run = train_model(cfg, patchset=make_patchset(n=60), progress=False, run_name="last")
    history = read_history(run / "history.csv")
    assert [row["epoch"] for row in history] == [0, 1, 2, 3]
    assert json.loads((run / "metrics.json").read_text())["best_epoch"] == 3
    task, epoch = load_task(run / "checkpoints" / "best.ckpt")
    assert epoch == 3
    final = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    for name, value in task.state_dict().items():
        torch.testing.assert_close(value, final[name])
    kinds = {type(c).__name__ for c in _build_trainer(cfg, RunDir(run), 4, False).callbacks}
    assert "EarlyStopping" not in kinds and "BestAndLastCheckpoint" in kinds
    cfg.train.checkpoint = "best"
    kinds = {type(c).__name__ for c in _build_trainer(cfg, RunDir(run), 4, False).callbacks}
    assert "EarlyStopping" in kinds


def test_monitor_typo_is_refused() -> None:
    with pytest.raises(ValueError, match="val_f1_macro"):
        TrainConfig.model_validate({"monitor": "val_f1"})


class _Corner(torch.nn.Module):
    """Orientation-dependent toy model: logits from the top-left pixel of each band."""

    multilabel = False

    def forward(self, x: torch.Tensor, tab: torch.Tensor | None = None) -> torch.Tensor:
        return x[:, :3, 0, 0] * 3


def test_tta_averages_the_eight_flips_and_rotations() -> None:
    x = torch.randn(5, 3, 4, 4)
    model = _Corner()
    expected = torch.stack([model(dihedral(x, k, f)).softmax(dim=1) for k, f in DIHEDRAL])
    got = tta_probabilities(model, x)
    torch.testing.assert_close(got, expected.mean(dim=0))
    assert len({(k, f) for k, f in DIHEDRAL}) == 8
    # the 8 transforms visit each of the 4 corners twice: the corner bias is averaged out
    corners = {tuple(dihedral(torch.arange(16.).view(4, 4), k, f)[0, 0].view(1).tolist())
               for k, f in DIHEDRAL}
    assert corners == {(0.0,), (3.0,), (12.0,), (15.0,)}


def test_tta_run_scores_the_averaged_predictions(tmp_path: Path) -> None:
    patches = make_patchset(n=60)
    cfg = make_config(tmp_path, epochs=2, tta=True, model={"hidden": 16})
    run = train_model(cfg, patchset=patches, progress=False, run_name="tta")
    metrics = json.loads((run / "metrics.json").read_text())
    task, _ = load_task(run / "checkpoints" / "best.ckpt")
    data = PatchDataModule(patches, augment=False,
                           stats=BandStats.load(run / "normalization.json"))
    y, plain = predict(task, data.loader("val"))
    _, averaged = predict(task, data.loader("val"), tta=True)
    assert metrics["val"]["accuracy"] == pytest.approx(float((averaged == y).mean()))
    assert plain.shape == averaged.shape


def test_band_jitter_is_an_affine_change_per_band_on_train_only() -> None:
    torch.manual_seed(0)
    image = torch.randn(4, 6, 6)
    out = RandomBandJitter(0.2)({"image": image, "label": 1})["image"]
    for b in range(4):  # out = gain * image + offset, one gain and offset per band
        a = np.polyfit(image[b].flatten().numpy(), out[b].flatten().numpy(), 1)
        assert np.allclose(np.polyval(a, image[b].numpy()), out[b].numpy(), atol=1e-5)
        assert not math.isclose(a[0], 1.0, abs_tol=1e-4)
    data = PatchDataModule(make_patchset(n=40), augment=False, jitter=0.2)
    train, val = data.dataset("train"), data.dataset("val")
    assert not torch.equal(train[0]["image"], train[0]["image"])  # drawn anew every time
    assert torch.equal(val[0]["image"], val[0]["image"])


def test_cli_train_prints_the_figures_it_reached(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, epochs=1, model={"hidden": 8})
    make_multilabel_patchset(n=40).save(cfg.patches_path)
    path = tmp_path / "study.yaml"
    dump_config(cfg, path)
    result = CliRunner().invoke(app, ["train", "-c", str(path), "--run-name", "r"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((cfg.runs_path / "r" / "metrics.json").read_text())
    line = next(x for x in result.output.splitlines() if x.startswith("val:"))
    assert line == (f"val: subset accuracy {metrics['val']['accuracy']:.3f}, macro F1 "
                    f"{metrics['val']['f1_macro']:.3f}, micro F1 {metrics['val']['f1_micro']:.3f}"
                    f", mAP {metrics['val']['map']:.3f}")


def test_simple_cnn_average_pooling_and_band_statistics() -> None:
    x = torch.randn(3, 5, 16, 16)
    flat, avg = SimpleCNN(5, 4, 16), SimpleCNN(5, 4, 16, pool="avg")
    stats = SimpleCNN(5, 4, 16, pool="avg", band_stats=True)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(avg) < count(flat) and count(stats) == count(avg) + 4 * 5 * 128
    for model in (flat, avg, stats):
        assert model.eval()(x).shape == (3, 4)
    got = band_statistics(x)
    assert got.shape == (3, 20)
    torch.testing.assert_close(got[:, :5], x.mean(dim=(2, 3)))
    torch.testing.assert_close(got[:, 15:], x.amax(dim=(2, 3)))
    # global pooling: the same network takes any patch size
    assert avg.eval()(torch.randn(2, 5, 32, 32)).shape == (2, 4)
    with pytest.raises(ConfigError, match="pool='max'"):
        SimpleCNN(5, 4, 16, pool="max")


def test_simple_cnn_statistics_pooling_sees_texture_that_averaging_loses() -> None:
    torch.manual_seed(0)
    avg, stats = SimpleCNN(1, 3, 16, pool="avg"), SimpleCNN(1, 3, 16, pool="stats")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(stats) == count(avg) + 2 * 64 * 128  # mean, max and std of 64 maps
    stats.features.load_state_dict(avg.features.state_dict())
    features = stats.features.eval()
    flat = torch.full((1, 1, 16, 16), 0.5)
    pooled = stats.pool(features(flat))
    torch.testing.assert_close(pooled[:, :64], avg.pool(features(flat)).flatten(1))
    torch.testing.assert_close(pooled[:, :64], features(flat).mean(dim=(2, 3)))
    torch.testing.assert_close(pooled[:, 64:128], features(flat).amax(dim=(2, 3)))
    assert stats.eval()(torch.randn(2, 1, 24, 24)).shape == (2, 3)  # any patch size


def test_ablation_entries_compare_training_levers(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    cfg.ablation.folds = 2
    cfg.ablation.sensors = [["s2"]]
    cfg.ablation.models = ["simple_cnn", AblationModelConfig(
        name="simple_cnn", train={"tta": True, "jitter": 0.1}, label="cnn_levers")]
    cells = build_grid(cfg)
    assert [c.config_id for c in cells] == ["s2/simple_cnn"] * 2 + ["s2/cnn_levers"] * 2
    plain, levers = cell_config(cfg, cells[0]).train, cell_config(cfg, cells[2]).train
    assert (plain.tta, plain.jitter) == (False, 0.0) and (levers.tta, levers.jitter) == (True, 0.1)
    cfg.ablation.models = [AblationModelConfig(name="simple_cnn", train={"jitter": 3})]
    with pytest.raises(ConfigError, match=r"invalid train settings \{'jitter': 3\}"):
        build_grid(cfg)
    cfg.ablation.models = [AblationModelConfig(name="simple_cnn", train={"model": {}})]
    with pytest.raises(ConfigError, match=r"train keys \['model'\] are set by the grid"):
        build_grid(cfg)
    problems = [str(p) for p in check_config(cfg, "ablate")]
    assert any("ablation.models entry 'simple_cnn': train keys ['model']" in p for p in problems)


def test_mixup_blends_images_and_losses_on_training_batches_only(tmp_path: Path) -> None:
    patches = make_patchset(n=16)
    task = build_task(make_config(tmp_path, mixup=0.4, model={"hidden": 8}), patches).eval()
    batch = {"image": torch.from_numpy((patches.x[:8] - 1500) / 800).nan_to_num(),
             "label": torch.from_numpy(patches.y[:8])}
    torch.manual_seed(3)
    got = task._shared_step(batch, "train")
    torch.manual_seed(3)
    lam = float(torch.distributions.Beta(0.4, 0.4).sample())
    perm = torch.randperm(8)
    logits = task(lam * batch["image"] + (1 - lam) * batch["image"][perm])
    want = lam * F.cross_entropy(logits, batch["label"]) + (1 - lam) * F.cross_entropy(
        logits, batch["label"][perm])
    torch.testing.assert_close(got, want)
    plain = F.cross_entropy(task(batch["image"]), batch["label"])
    torch.testing.assert_close(task._shared_step(batch, "val"), plain)


def test_test_area_normalisation_removes_a_radiometric_offset(tmp_path: Path) -> None:
    """Test patches from 'another area': every band offset by 3 of its noise std. With the
    training statistics the network misreads them; with the test area's own statistics
    (no labels used) it recovers."""
    patches = make_patchset(n=200)
    test = patches.split == 2
    x = patches.x.copy()
    x[test] += 3 * 0.6 * 800
    shifted = patches._replace(x=x)
    accuracy = {}
    for mode in ("train", "test_area"):
        cfg = make_config(tmp_path, epochs=4, normalization=mode, model={"hidden": 16})
        run = train_model(cfg, patchset=shifted, progress=False, run_name=mode)
        accuracy[mode] = json.loads((run / "metrics.json").read_text())["test"]["accuracy"]
        assert (run / "normalization_test.json").is_file() == (mode == "test_area")
    assert accuracy["test_area"] >= accuracy["train"] + 0.2, accuracy


def test_predictions_of_a_remote_cell_reach_the_study(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ray worker on another machine saves test_predictions.npz on its own disk: the result
    carries them back, the study writes them locally and builds its fold ensembles."""
    from geofuse.experiments import runner
    from geofuse.experiments.ablation import run_ablation
    from geofuse.experiments.ensemble import read_ensembles
    from geofuse.experiments.runner import load_cells

    original = runner.execute_cell

    def remote(ctx: object, cell: dict) -> dict:
        result = original(ctx, cell)
        (Path(ctx.study_dir) / result["run_dir"] / "test_predictions.npz").unlink()
        return result

    monkeypatch.setattr(runner, "execute_cell", remote)
    cfg = make_config(tmp_path, epochs=1, model={"hidden": 8})
    cfg.ablation.folds = 2
    cfg.ablation.sensors = [["s2"]]
    cfg.ablation.test_fraction = 0.2
    study = run_ablation(cfg, progress=False, patchset=make_patchset(n=60))
    cells = load_cells(study)
    assert all("_test_predictions" not in c for c in cells)
    for cell in cells:
        assert (study / cell["run_dir"] / "test_predictions.npz").is_file()
    assert [e["config_id"] for e in read_ensembles(study)] == ["s2/simple_cnn"]


def test_per_patch_standardisation_in_every_split(tmp_path: Path) -> None:
    patches = make_patchset(n=60)
    data = PatchDataModule(patches, augment=False, per_patch=True)
    for split in ("train", "val", "test"):
        image = data.dataset(split)[0]["image"]
        torch.testing.assert_close(image.mean(dim=(1, 2)), torch.zeros(6), atol=1e-5, rtol=0)
        torch.testing.assert_close(image.std(dim=(1, 2), unbiased=False), torch.ones(6),
                                   atol=1e-4, rtol=0)
    batch = torch.randn(3, 2, 5, 5) * 7 + 4
    torch.testing.assert_close(standardize_patches(batch)[1],
                               PerPatchStandardize()({"image": batch[1]})["image"])
    cfg = make_config(tmp_path, epochs=1, normalization="per_patch", model={"hidden": 8})
    cfg.ablation.folds = 2
    cfg.ablation.sensors = [["s2", "dem"]]
    cfg.ablation.importance = True
    cfg.ablation.importance_repeats = 1
    from geofuse.experiments.ablation import run_ablation
    from geofuse.experiments.runner import load_cells

    study = run_ablation(cfg, progress=False, patchset=patches)
    for cell in load_cells(study):  # the importance baseline reproduces the evaluation
        assert cell["importance"]["baseline"] == pytest.approx(cell["val"]["accuracy"])
