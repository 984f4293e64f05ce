"""Calibrated probabilities: reliability/ECE, temperature scaling, and a run that stores it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import expit, softmax
from typer.testing import CliRunner

from factories import make_config, make_multilabel_patchset, make_patchset
from geofuse.cli import app
from geofuse.data.patchset import PatchSet
from geofuse.evaluation.calibration import (
    T_BOUNDS,
    expected_calibration_error,
    fit_temperature,
    reliability,
    scaled_nll,
)
from geofuse.evaluation.evaluate import load_task
from geofuse.evaluation.predictions import load_predictions
from geofuse.training.train import train_model


def test_reliability_of_a_hand_worked_example() -> None:
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    rel = reliability(probs, np.array([0, 1, 1]), n_bins=10)
    # confidences 0.9 (right), 0.6 (wrong), 0.7 (right): gaps 0.1, 0.6, 0.3 in three bins
    assert rel["ece"] == pytest.approx(1.0 / 3.0)
    assert rel["mce"] == pytest.approx(0.6)
    assert rel["brier"] == pytest.approx((0.02 + 0.72 + 0.18) / 3)
    assert rel["nll"] == pytest.approx(-np.log([0.9, 0.4, 0.7]).mean())
    assert [b["count"] for b in rel["bins"]] == [1, 1, 1]
    assert reliability(np.zeros((0, 2)), np.zeros(0))["ece"] is None


def _sampled(rng: np.random.Generator, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """True logits and labels drawn from their softmax: perfectly calibrated by design."""
    z = rng.normal(0, 2.0, (n, k))
    p = softmax(z, axis=1)
    y = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return z, y


def test_temperature_scaling_recovers_an_over_confident_model() -> None:
    rng = np.random.default_rng(0)
    z, y = _sampled(rng, 6000, 5)
    assert expected_calibration_error(softmax(z, axis=1), y) < 0.03  # calibrated by design
    over = 3.0 * z  # the same ranking, three times too sharp
    assert expected_calibration_error(softmax(over, axis=1), y) > 0.1
    t = fit_temperature(over, y)
    assert t == pytest.approx(3.0, rel=0.1)
    assert expected_calibration_error(softmax(over / t, axis=1), y) < 0.03
    assert scaled_nll(over, y, t) < scaled_nll(over, y, 1.0)
    # an under-confident model gets T < 1
    assert fit_temperature(0.5 * z, y) == pytest.approx(0.5, rel=0.1)
    # perfectly separated data sharpen without end: the search stays finite, within its bounds
    sep = np.eye(3)[np.arange(300) % 3] * 5.0
    assert T_BOUNDS[0] <= fit_temperature(sep, np.arange(300) % 3) < 0.5
    with pytest.raises(ValueError, match="non-finite"):
        fit_temperature(np.full((4, 2), np.nan), np.zeros(4))


def test_multilabel_temperature_pools_every_label() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2.0, (3000, 4))
    y = (rng.random(z.shape) < expit(z)).astype(np.uint8)
    assert fit_temperature(2.5 * z, y, multilabel=True) == pytest.approx(2.5, rel=0.1)
    rel = reliability(expit(z), y, multilabel=True)
    assert rel["n"] == 3000 and rel["ece"] < 0.03
    assert sum(b["count"] for b in rel["bins"]) == 3000 * 4


def test_torchmetrics_agrees_on_the_ece() -> None:
    from torchmetrics.functional.classification import multiclass_calibration_error

    rng = np.random.default_rng(2)
    z, y = _sampled(rng, 2000, 4)
    p = softmax(2.0 * z, axis=1)
    ours = expected_calibration_error(p, y)
    theirs = float(multiclass_calibration_error(torch.from_numpy(p), torch.from_numpy(y),
                                                num_classes=4, n_bins=15, norm="l1"))
    assert ours == pytest.approx(theirs, abs=1e-6)


def _hard_patchset(n: int, seed: int = 0) -> PatchSet:
    """:func:`make_patchset` with a per-patch offset per band: classes overlap, so the
    validation split has the mistakes a temperature is fitted on."""
    ps = make_patchset(n=n, seed=seed)
    rng = np.random.default_rng(seed + 100)
    return ps._replace(x=ps.x + rng.normal(0, 900, ps.x.shape[:2])[:, :, None, None])


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("calibrated")
    cfg = make_config(root, epochs=6, model={"name": "simple_cnn", "hidden": 16})
    _hard_patchset(240).save(cfg.patches_path)
    return train_model(cfg, progress=False, run_name="cnn")


def test_a_run_fits_stores_and_reports_its_temperature(calibrated_run: Path) -> None:
    metrics = json.loads((calibrated_run / "metrics.json").read_text())
    cal = metrics["calibration"]
    assert cal["method"] == "temperature" and not cal.get("skipped")
    t = cal["temperature"]
    assert T_BOUNDS[0] <= t <= T_BOUNDS[1] and t != 1.0
    assert cal["fit_samples"] == metrics["val"]["n"]
    val = cal["splits"]["val"]
    assert val["nll"] <= val["nll_before"] + 1e-6  # fitted on val: never worse there
    assert set(cal["splits"]) == {"val", "test"}
    # the checkpoint carries T, and the saved probabilities are the scaled softmax
    task, _ = load_task(calibrated_run / "checkpoints" / "best.ckpt")
    assert float(task.logit_temperature) == pytest.approx(t)
    pred = load_predictions(calibrated_run, "val")
    assert pred is not None
    assert reliability(pred.probabilities, pred.targets)["ece"] == pytest.approx(val["ece"],
                                                                                 abs=1e-6)
    report = (calibrated_run / "report.md").read_text()
    assert "## Calibration of the probabilities" in report and f"T = {t:.3f}" in report
    assert (calibrated_run / "plots" / "reliability.png").is_file()
    # re-evaluating refits from T = 1: the same temperature, the same metrics
    result = CliRunner().invoke(app, ["evaluate", str(calibrated_run)])
    assert result.exit_code == 0, result.output
    assert f"calibration: T = {t:.3f}" in result.output and "ECE val" in result.output
    again = json.loads((calibrated_run / "metrics.json").read_text())
    assert again["calibration"]["temperature"] == pytest.approx(t, rel=1e-4)
    assert again["val"]["accuracy"] == metrics["val"]["accuracy"]


def test_checkpoint_without_a_temperature_loads_with_t_one(calibrated_run: Path,
                                                           tmp_path: Path) -> None:
    ckpt = torch.load(calibrated_run / "checkpoints" / "best.ckpt", weights_only=True)
    del ckpt["state_dict"]["logit_temperature"]  # as written by geofuse before calibration
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    task, _ = load_task(old)
    assert float(task.logit_temperature) == 1.0
    new, _ = load_task(calibrated_run / "checkpoints" / "best.ckpt")
    x = torch.randn(3, 6, 8, 8)
    with torch.inference_mode():
        assert torch.allclose(new(x) * new.logit_temperature, task(x), atol=1e-5)


def test_calibration_none_keeps_the_softmax_and_still_reports_ece(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, epochs=2, calibration="none",
                      model={"name": "simple_cnn", "hidden": 8})
    make_patchset(n=120).save(cfg.patches_path)
    run = train_model(cfg, progress=False, run_name="raw")
    cal = json.loads((run / "metrics.json").read_text())["calibration"]
    assert cal["method"] == "none" and cal["temperature"] == 1.0
    assert cal["splits"]["val"]["ece"] is not None
    task, _ = load_task(run / "checkpoints" / "best.ckpt")
    assert float(task.logit_temperature) == 1.0
    # the forest's vote fractions are judged the same way
    cfg.train.model.name = "random_forest"
    forest = train_model(cfg, progress=False, run_name="forest")
    fcal = json.loads((forest / "metrics.json").read_text())["calibration"]
    assert fcal["method"] == "none" and 0 <= fcal["splits"]["test"]["ece"] <= 1


def test_multilabel_run_is_calibrated_per_label(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, epochs=3, model={"name": "simple_cnn", "hidden": 8})
    make_multilabel_patchset().save(cfg.patches_path)
    run = train_model(cfg, progress=False, run_name="ml")
    cal = json.loads((run / "metrics.json").read_text())["calibration"]
    val = cal["splits"]["val"]
    assert cal["method"] == "temperature" and val["nll"] <= val["nll_before"] + 1e-6
    assert sum(b["count"] for b in val["bins"]) == val["n"] * 4
