"""report.md and plots: tables, guard box, image links that resolve to real PNGs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from factories import make_config, make_patchset
from geofuse.errors import RunDirError
from geofuse.evaluation.evaluate import evaluate_run
from geofuse.reporting.plots import plot_confusion_matrix, plot_training_curves
from geofuse.reporting.report import write_report
from geofuse.rundir import RunDir
from geofuse.training.train import train_model


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    root = tmp_path_factory.mktemp("report")
    cfg = make_config(root, epochs=4)
    make_patchset().save(cfg.patches_path)
    return RunDir(train_model(cfg, progress=False))


def test_report_has_metric_tables_and_data_summary(run: RunDir) -> None:
    text = run.report.read_text()
    metrics = json.loads(run.metrics.read_text())
    assert "| split | n | accuracy | macro F1 |" in text
    val = metrics["val"]
    assert f"| val | {val['n']} | {val['accuracy']:.3f} | {val['f1_macro']:.3f} |" in text
    assert "### Per class (val)" in text and "### Per class (test)" in text
    assert "| class | train | val | test |" in text
    assert "| forest | 35 | 10 | 5 |" in text
    assert "Bands used (6)" in text
    assert "**Collapse guard: passed**" in text
    assert "MODEL COLLAPSE" not in text
    assert "```yaml" in text and f"run_name: {run.name}" in text


def test_report_links_resolve_to_existing_pngs(run: RunDir) -> None:
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", run.report.read_text())
    assert set(links) == {"plots/training_curves.png", "plots/confusion_matrix_val.png",
                          "plots/confusion_matrix_test.png", "plots/reliability.png"}
    for link in links:
        assert not Path(link).is_absolute()
        assert (run.path / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_collapsed_model_is_reported_loudly(run: RunDir, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    run = RunDir(Path(shutil.copytree(run.path, tmp_path / run.name)))
    ckpt = torch.load(run.best_ckpt, map_location="cpu", weights_only=True)
    state = ckpt["state_dict"]
    weight = next(k for k in state if k.endswith("head.4.weight"))
    state[weight].zero_()
    state[weight.replace("weight", "bias")] = torch.tensor([0.0, 0.0, 9.0, 0.0])
    torch.save(ckpt, run.best_ckpt)

    metrics = evaluate_run(run.path)
    assert metrics["guard"]["collapsed"] is True
    assert any("predicts 'urban' for 100%" in r for r in metrics["guard"]["reasons"])
    assert json.loads(run.metrics.read_text())["guard"]["collapsed"] is True
    assert "MODEL COLLAPSE DETECTED" in capsys.readouterr().err

    text = write_report(run.path).read_text()
    assert "> [!CAUTION]" in text
    assert "> **MODEL COLLAPSE DETECTED" in text
    assert "predicts 'urban' for 100%" in text


def test_report_on_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="does not exist"):
        write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match=r"run\.json"):
        write_report(tmp_path / "empty")


def test_plot_functions_return_figures() -> None:
    history = [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_loss": 1.2 / (e + 1),
                "train_accuracy": 0.5, "val_accuracy": 0.6, "val_f1_macro": 0.55, "lr": 1e-3}
               for e in range(3)]
    fig = plot_training_curves(history)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3
    assert any("best epoch 2" in t.get_text()
               for t in fig.axes[0].get_legend().get_texts())
    cm = plot_confusion_matrix(np.array([[5, 1], [0, 4]]), ["a", "b"], title="val")
    texts = [t.get_text() for t in cm.axes[0].texts]
    assert "5\n83%" in texts and "0\n0%" in texts
