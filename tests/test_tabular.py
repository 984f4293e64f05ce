"""Tabular attributes: PatchSet round-trip, batch["tab"], tabular_fusion modes and training."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from factories import CLASSES, DEM, S2, make_config, make_patchset
from geofuse.data.datamodule import PatchDataModule
from geofuse.data.patchset import PatchSet
from geofuse.errors import ConfigError
from geofuse.models.tabular import TabularFusion
from geofuse.rundir import RunDir
from geofuse.training.task import ClassificationTask
from geofuse.training.train import train_model

TAB = ["pop_density", "night_light", "road_km"]


def tabular_patchset(n: int = 200, patch_size: int = 8, seed: int = 0) -> PatchSet:
    """Images are pure noise; the label is readable only from the tabular columns."""
    rng = np.random.default_rng(seed)
    base = make_patchset(n=n, patch_size=patch_size, seed=seed)
    x = rng.normal(1500, 800, base.x.shape).astype(np.float32)
    centres = rng.normal(0, 3.0, (len(CLASSES), len(TAB)))
    tab = 50 + 10 * (centres[base.y] + rng.normal(0, 0.5, (n, len(TAB))))
    tab[rng.random(tab.shape) < 0.02] = np.nan
    return PatchSet(x=x, y=base.y, band_names=S2 + DEM, modalities={"s2": S2, "dem": DEM},
                    class_names=CLASSES, groups=base.groups, coords=base.coords, split=base.split,
                    tabular=tab, tabular_names=TAB)


def test_patchset_with_tabular_round_trips_and_subsets(tmp_path: Path) -> None:
    ps = tabular_patchset(n=40)
    loaded = PatchSet.load(ps.save(tmp_path / "p.h5"))
    assert loaded.tabular_names == TAB
    np.testing.assert_array_equal(loaded.tabular, ps.tabular)  # NaNs in the same places
    sub = loaded.subset(np.array([3, 1]))
    assert sub.tabular is not None and ps.tabular is not None
    np.testing.assert_array_equal(sub.tabular, ps.tabular[[3, 1]])
    assert loaded.select_bands(S2).tabular_names == TAB


def test_patchset_without_tabular_still_saves_and_loads_the_old_format(tmp_path: Path) -> None:
    path = make_patchset(n=12).save(tmp_path / "old.h5")
    with h5py.File(path, "r") as f:
        assert "tabular" not in f and "tabular_names" not in f.attrs
    loaded = PatchSet.load(path)
    assert loaded.tabular is None and loaded.tabular_names == []


@pytest.mark.parametrize(
    ("tab", "names", "match"),
    [(np.zeros((5, 2)), ["a", "b"], "tabular must be"), (np.zeros((12, 2)), ["a"], "2 tabular"),
     (None, ["a"], "without a tabular")],
)
def test_inconsistent_tabular_is_rejected(
    tab: np.ndarray | None, names: list[str], match: str
) -> None:
    ps = make_patchset(n=12)
    with pytest.raises(ValueError, match=match):
        ps._replace(tabular=tab, tabular_names=names)


def test_batches_carry_tab_normalised_with_train_statistics() -> None:
    ps = tabular_patchset(n=120)
    data = PatchDataModule(ps, batch_size=200, augment=True)
    batch = next(iter(data.train_dataloader()))
    assert batch["tab"].shape == (84, len(TAB)) and batch["tab"].dtype == torch.float32
    torch.testing.assert_close(batch["tab"].mean(0), torch.zeros(3), atol=0.05, rtol=0)
    assert torch.isfinite(batch["tab"]).all()  # missing values -> 0, the train mean
    val = next(iter(data.val_dataloader()))["tab"]
    assert ps.tabular is not None
    raw = ps.tabular[ps.split_indices("train")]
    expected = (ps.tabular[ps.split_indices("val")] - np.nanmean(raw, 0)) / np.nanstd(raw, 0)
    np.testing.assert_allclose(val.numpy(), np.nan_to_num(expected), atol=1e-4)
    assert "tab" not in next(iter(PatchDataModule(make_patchset(n=40)).val_dataloader()))


@pytest.mark.parametrize("mode", ["early", "late", "progressive"])
@pytest.mark.parametrize("patch", [8, 32])
def test_tabular_fusion_modes_shapes_backprop_and_use_of_tab(mode: str, patch: int) -> None:
    torch.manual_seed(0)
    model = TabularFusion(6, 4, patch, num_tabular=3, mode=mode)
    image, tab = torch.randn(4, 6, patch, patch), torch.randn(4, 3)
    out = model(image, tab)
    assert out.shape == (4, 4)
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model(image, tab), model(image, tab + 3.0))
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        model(image)


def test_task_passes_tab_only_to_models_that_use_it() -> None:
    image, tab = torch.randn(2, 6, 8, 8), torch.randn(2, 3)
    task = ClassificationTask("tabular_fusion", 6, 4, 8, model_kwargs={"num_tabular": 3})
    assert task(image, tab).shape == (2, 4)
    plain = ClassificationTask("simple_cnn", 6, 4, 8)
    assert plain(image, tab).shape == (2, 4)  # a PatchSet with tabular still trains image models


def test_bad_tabular_options_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mode='middle'"):
        TabularFusion(6, 4, 8, num_tabular=3, mode="middle")
    cfg = make_config(tmp_path, epochs=1, model={"name": "tabular_fusion"})
    with pytest.raises(ConfigError, match="needs tabular attributes"):
        train_model(cfg, patchset=make_patchset(n=40), progress=False)


@pytest.mark.parametrize(("mode", "epochs"), [("late", 5), ("early", 3), ("progressive", 3)])
def test_tabular_fusion_learns_a_label_only_the_table_predicts(
    tmp_path: Path, mode: str, epochs: int
) -> None:
    cfg = make_config(tmp_path, epochs=epochs, lr=3e-3,
                      model={"name": "tabular_fusion", "mode": mode, "dropout": 0.1})
    run = RunDir(train_model(cfg, patchset=tabular_patchset(), progress=False))
    metrics = json.loads(run.metrics.read_text())
    assert metrics["val"]["accuracy"] > 0.8, metrics["val"]  # chance is 0.25
    ckpt = torch.load(run.best_ckpt, map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["model_kwargs"]["num_tabular"] == len(TAB)
