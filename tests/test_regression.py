"""Regression (one continuous value per patch): metrics, scaling, models, guard, runs, studies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from factories import make_config, make_regression_patchset
from geofuse.config import GuardConfig, parse_config
from geofuse.data.datamodule import PatchDataModule
from geofuse.data.patchset import PatchSet
from geofuse.errors import ConfigError
from geofuse.evaluation.importance import permutation_importance
from geofuse.evaluation.predictions import load_predictions
from geofuse.evaluation.regression_metrics import regression_metrics
from geofuse.experiments.ablation import run_ablation
from geofuse.experiments.runner import load_cells
from geofuse.models.fusion import DecisionFusion
from geofuse.preflight import preflight
from geofuse.reporting.study_report import compute_study_stats, load_study
from geofuse.rundir import read_history
from geofuse.training._regression import TargetScaler, regression_epoch_scores
from geofuse.training.guards import check_values
from geofuse.training.train import train_model


def test_metrics_match_scikit_learn_and_the_epoch_scores() -> None:
    rng = np.random.default_rng(0)
    t = rng.gamma(2, 500, 300)
    p = t + rng.normal(0, 300, 300)
    m = regression_metrics(t, p)
    assert m["regression"] and m["n"] == 300
    assert m["rmse"] == pytest.approx(mean_squared_error(t, p) ** 0.5)
    assert m["mae"] == pytest.approx(mean_absolute_error(t, p))
    assert m["r2"] == pytest.approx(r2_score(t, p))
    assert m["bias"] == pytest.approx((p - t).mean())
    assert m["pearson_r"] == pytest.approx(np.corrcoef(t, p)[0, 1])
    fast = regression_epoch_scores(torch.from_numpy(p), torch.from_numpy(t))
    for key in ("rmse", "mae", "r2"):
        assert float(fast[key]) == pytest.approx(m[key], rel=1e-5)
    assert regression_metrics(np.ones(5), np.arange(5.0))["r2"] == 0.0  # constant truth
    counts = regression_metrics(t, np.abs(p))
    assert counts["r2_log1p"] == pytest.approx(r2_score(np.log1p(t), np.log1p(np.abs(p))))
    assert np.isnan(regression_metrics(t - 5000, p)["r2_log1p"])  # negative values
    assert regression_metrics(np.zeros(0), np.zeros(0))["n"] == 0


def test_target_scaler_standardises_and_inverts() -> None:
    values = np.array([0.0, 9.0, 99.0, 999.0], dtype=np.float32)
    for transform in ("none", "log1p"):
        s = TargetScaler.fit(values, transform)
        z = s.encode(torch.from_numpy(values))
        assert float(z.mean()) == pytest.approx(0, abs=1e-5)
        assert float(z.std(unbiased=False)) == pytest.approx(1, rel=1e-4)
        assert torch.allclose(s.decode(z), torch.from_numpy(values), rtol=1e-4, atol=1e-3)
    assert TargetScaler.fit(np.full(3, 7.0), "none").std == 1.0  # constant: no division by 0
    wild = TargetScaler.fit(values, "log1p").decode(torch.tensor([-40.0, 40.0]))
    assert wild.tolist() == pytest.approx([0.0, 999.0], rel=1e-4)  # within the training range
    with pytest.raises(ConfigError, match="target_transform log1p needs values above -1"):
        TargetScaler.fit(np.array([-2.0, 1.0]), "log1p")


def test_patchset_values_roundtrip_and_validation(tmp_path: Path) -> None:
    ps = make_regression_patchset(n=40)
    back = PatchSet.load(ps.save(tmp_path / "p.h5"))
    assert back.regression and back.value_name == "people"
    np.testing.assert_array_equal(back.values, ps.values)
    assert back.subset(np.arange(5)).values.tolist() == ps.values[:5].tolist()
    bad = ps.values.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        ps._replace(values=bad)
    batch = next(iter(PatchDataModule(ps, batch_size=8, augment=False).loader("train")))
    assert batch["label"].dtype == torch.float64
    np.testing.assert_allclose(batch["label"].numpy(),
                               ps.values[batch["index"].numpy()], rtol=1e-6)


def test_decision_fusion_averages_the_modalities_estimates() -> None:
    torch.manual_seed(0)
    net = DecisionFusion(in_channels=4, num_classes=1, patch_size=8,
                         modalities={"a": 3, "b": 1}, weights={"a": 3, "b": 1},
                         regression=True).eval()
    x = torch.randn(5, 4, 8, 8)
    parts = net.modality_logits(x)
    assert torch.allclose(net(x), 0.75 * parts["a"] + 0.25 * parts["b"], atol=1e-6)


def test_guard_flags_constant_and_mean_level_predictions() -> None:
    guard = GuardConfig()
    t = np.linspace(0, 100, 50)
    flat = check_values(regression_metrics(t, np.full(50, 70.0) + 0.01 * t), guard, "val")
    assert any("nearly one value" in r for r in flat)
    assert any("no better than always predicting the mean" in r for r in flat)
    assert check_values(regression_metrics(t, t + 5), guard, "val") == []


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("regression")
    cfg = make_config(root, epochs=25, target_transform="log1p",
                      model={"name": "simple_cnn", "hidden": 32, "pool": "avg"})
    ps = make_regression_patchset()
    ps.save(cfg.patches_path)
    net = train_model(cfg, progress=False, run_name="cnn")
    cfg.train.model.name = "random_forest"
    forest = train_model(cfg, progress=False, run_name="forest")
    return net, forest


def test_network_learns_the_values_and_writes_a_regression_run(runs: tuple[Path, Path]) -> None:
    net, _ = runs
    metrics = json.loads((net / "metrics.json").read_text())
    val = metrics["val"]
    assert val["regression"] and val["r2"] > 0.5 and not metrics["guard"]["collapsed"]
    info = json.loads((net / "run.json").read_text())
    assert info["task"] == "regression" and info["value_name"] == "people"
    assert info["target_scaler"]["transform"] == "log1p"
    pred = load_predictions(net, "val")
    assert pred is not None and pred.regression
    assert regression_metrics(pred.targets, pred.values())["r2"] == pytest.approx(val["r2"])
    history = read_history(net / "history.csv")
    assert history[-1]["val_r2"] is not None and history[-1]["train_rmse"] is not None
    report = (net / "report.md").read_text()
    assert "RMSE (people)" in report and "observed_vs_predicted_val.png" in report
    assert (net / "plots" / "observed_vs_predicted_test.png").is_file()


def test_regression_forest_is_the_baseline(runs: tuple[Path, Path]) -> None:
    _, forest = runs
    metrics = json.loads((forest / "metrics.json").read_text())
    assert metrics["val"]["regression"] and metrics["val"]["r2"] > 0.5
    assert load_predictions(forest, "test").regression


def test_permutation_importance_of_values_is_a_drop_of_r2() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (300, 2, 4, 4))
    y = 3.0 * x[:, 1].mean(axis=(1, 2)) + 10.0
    result = permutation_importance(lambda b: 3.0 * b[:, 1].mean(axis=(1, 2)) + 10.0, x, y,
                                    ["a", "b"], {"one": ["a"], "two": ["b"]}, n_repeats=3,
                                    metric="r2")
    assert result["baseline"] == pytest.approx(1.0)
    assert result["band"]["a"]["mean"] == pytest.approx(0.0)  # never read
    assert result["band"]["b"]["mean"] > 1.5  # shuffled: R2 about -1
    assert result["modality"]["two"]["mean"] == pytest.approx(result["band"]["b"]["mean"],
                                                              abs=0.5)


def test_preflight_refuses_class_settings_on_values(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, loss={"name": "cross_entropy"}, monitor="val_f1_macro",
                      model={"name": "unet_early"})
    make_regression_patchset(n=40).save(cfg.patches_path)
    with pytest.raises(ConfigError) as err:
        preflight(cfg, "train")
    text = str(err.value)
    assert "segmentation model" in text and "use mse, huber, l1 or auto" in text
    assert "monitor val_loss or val_r2" in text
    logistic = make_config(tmp_path, model={"name": "logistic_regression"})
    with pytest.raises(ConfigError, match="logistic_regression is a classifier"):
        preflight(logistic, "train")


def test_regression_loss_on_classes_is_refused(tmp_path: Path) -> None:
    from factories import make_patchset

    cfg = make_config(tmp_path, loss={"name": "huber"}, monitor="val_r2")
    make_patchset(n=40).save(cfg.patches_path)
    with pytest.raises(ConfigError) as err:
        preflight(cfg, "train")
    assert "is a regression loss" in str(err.value) and "val_r2 scores regression" in str(
        err.value)


def test_ablation_compares_sensors_on_r2(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, epochs=1, batch_size=16, model={"hidden": 16},
                      target_transform="log1p")
    cfg.ablation.folds = 2
    cfg.ablation.sensors = [["s2"], ["s2", "dem"]]
    cfg.ablation.models = ["simple_cnn", "random_forest"]
    cfg.ablation.test_fraction = 0.2
    cfg.ablation.importance, cfg.ablation.importance_repeats = True, 1
    study = run_ablation(cfg, progress=False, patchset=make_regression_patchset(n=100))
    for cell in load_cells(study):  # the networks' sensor contribution, as a drop of R2
        imp = cell["importance"]
        if cell["model"] == "simple_cnn":
            assert imp["metric"] == "r2" and set(imp["modality"]) == set(cell["modalities"])
        else:
            assert imp is None
    meta = json.loads((study / "study.json").read_text())
    assert meta["primary_metric"] == "r2" and meta["value_name"] == "people"
    stats = json.loads((study / "stats.json").read_text())
    assert stats["metric"] == "r2" and stats["regression"]
    means = {cid: d["mean"] for cid, d in stats["configs"].items()}
    # the DEM band carries the main driver of the values
    assert means["s2+dem/random_forest"] > means["s2/random_forest"] + 0.3
    report = (study / "report.md").read_text()
    assert "mean r2" in report and "mean RMSE" in report and "Regression of `people`" in report
    ensembles = json.loads((study / "ensembles.json").read_text())["ensembles"]
    assert ensembles and all(e["test"]["regression"] for e in ensembles)
    # an error metric: the best configuration has the lowest mean
    by_rmse = compute_study_stats(load_study(study), "rmse")
    assert by_rmse["best"] == min(by_rmse["configs"], key=lambda c: by_rmse["configs"][c]["mean"])


def test_nan_estimates_one_class_and_regression_loss_on_classes_are_refused(
    tmp_path: Path
) -> None:
    from factories import make_patchset
    from geofuse.config import LossConfig
    from geofuse.training.losses import build_loss
    from geofuse.training.train import build_task

    t = np.linspace(0, 100, 20)
    nan = check_values(regression_metrics(t, np.full(20, np.nan)), GuardConfig(), "val")
    assert nan and "non-finite estimates" in nan[0]
    one = make_patchset(n=30)
    one = one._replace(y=np.zeros(30, dtype=np.int64), class_names=["forest"])
    with pytest.raises(ConfigError, match="a classifier needs at least 2"):
        build_task(make_config(tmp_path), one)
    with pytest.raises(ConfigError, match="is a regression loss"):
        build_loss(LossConfig(name="mse"), 3)


def test_so2sat_pop_population_target_config_validates(tmp_path: Path) -> None:
    data = {"name": "pop", "workdir": "w",
            "dataset": {"name": "so2sat_lcz", "city_dir": "x", "target": "population"}}
    with pytest.raises(ConfigError, match="target population is for so2sat_pop"):
        parse_config(data, tmp_path)


def test_polygons_with_a_number_extract_a_regression_patchset(tmp_path: Path) -> None:
    import geopandas as gpd

    from geofuse.data.extract import extract_patches
    from geofuse.errors import LabelError
    from test_extract import CRS, POLYGONS, make_config, pixbox, write_stack

    biomass = [5.0, 12.0, 40.0, 7.0, 55.0, 90.0, 1.0, 30.0, 70.0]
    rows = [{"name": f"P{i}", "biomass": v, "geometry": pixbox(*b)}
            for i, ((_, b), v) in enumerate(zip(POLYGONS, biomass, strict=True))]
    rows.append({"name": "P9", "biomass": None, "geometry": pixbox(0, 8, 0, 8)})
    labels = tmp_path / "plots.geojson"
    gpd.GeoDataFrame(rows, geometry="geometry", crs=CRS).to_file(labels)
    cfg = make_config(tmp_path, labels)
    cfg.labels.value_field, cfg.labels.value_strata = "biomass", 3
    cfg.train.model.name = "unet_early"
    write_stack(cfg.workdir_path)
    with pytest.raises(ConfigError, match="segmentation model") as err:  # before extract
        preflight(cfg, "check")
    assert "class_field" not in str(err.value)  # the number is read, not the class
    with pytest.warns(UserWarning, match=r"without a number in 'biomass'"):
        ps = extract_patches(cfg, progress=False)
    assert ps.regression and ps.value_name == "biomass"
    by_polygon = dict(zip([f"polygon:P{i}" for i in range(9)], biomass, strict=True))
    assert ps.values.tolist() == [by_polygon[g] for g in ps.groups]
    assert ps.class_names == ["1-7", "12-40", "55-90"]  # tertiles of the 9 polygons
    assert set(ps.y[ps.values <= 7].tolist()) == {0} and set(ps.y[ps.values >= 55]) == {2}
    assert all(len(ps.split_indices(s)) for s in ("train", "val", "test"))
    back = PatchSet.load(cfg.patches_path)
    assert back.regression and back.values.tolist() == ps.values.tolist()
    rows[0]["biomass"] = "lots"
    gpd.GeoDataFrame(rows, geometry="geometry", crs=CRS).to_file(labels)
    with pytest.raises(LabelError, match=r"not numbers, e\.g\. \['lots'\]"):
        extract_patches(cfg, progress=False)
    with pytest.raises(ConfigError, match=r"labels\.value_field reads a number per polygon"):
        parse_config({"name": "x", "labels": {"raster": "l.tif", "value_field": "v"}}, tmp_path)


def test_a_polygon_regression_study_maps_and_assesses_its_scene(tmp_path: Path) -> None:
    import geopandas as gpd

    from test_extract import CRS, make_config, pixbox, stack_values, write_stack

    b2 = stack_values()[0]  # the value encodes row and column: b2 = 100 row + col
    rows = []
    for i, (r0, c0) in enumerate((r, c) for r in (2, 22, 42) for c in (2, 15, 28, 41, 54, 67)):
        value = float(b2[r0:r0 + 12, c0:c0 + 10].mean() / 100)  # learnable from the patches
        rows.append({"name": f"P{i}", "agb": value, "geometry": pixbox(r0, r0 + 12, c0, c0 + 10)})
    labels = tmp_path / "plots.gpkg"
    gpd.GeoDataFrame(rows, geometry="geometry", crs=CRS).to_file(labels)
    cfg = make_config(tmp_path, labels, per_polygon=4)
    cfg.labels.value_field, cfg.labels.value_strata = "agb", 3
    cfg.ablation.folds, cfg.ablation.test_fraction = 2, 0.25
    cfg.ablation.sensors, cfg.ablation.models = [["s2"]], ["random_forest"]
    cfg.mapping.scene, cfg.mapping.stride = "stack", 4
    write_stack(cfg.workdir_path)
    from geofuse.data.extract import extract_patches

    with pytest.warns(UserWarning, match="nodata share"):  # the stack's NaN corner
        extract_patches(cfg, progress=False)
    study = run_ablation(cfg, progress=False)
    out = study / "map"
    assert (out / "values.tif").is_file() and not (out / "classes.tif").exists()
    heldout = gpd.read_file(out / "heldout_polygons.gpkg")
    assert "value" in heldout.columns and len(heldout) >= 3
    assessment = json.loads((out / "assessment.json").read_text())
    assert assessment["kind"] == "values" and assessment["metrics"]["n"] == len(heldout)
    assert assessment["metrics"]["spearman_r"] > 0.5  # the map ranks unseen polygons
    report = (study / "report.md").read_text()
    assert "Value map" in report and "held-out polygons" in report
