"""Area of applicability of a map (``geofuse predict --aoa``, Meyer & Pebesma 2021)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from geofuse.cli import app
from geofuse.errors import ConfigError
from geofuse.mapping.aoa import build_reference, fivenum, upper_whisker
from geofuse.mapping.aoa_members import network_features
from test_predict import read, scene, train_run, write_stack

runner = CliRunner()
ODD = (slice(10, 30), slice(40, 70))  #: a block of the scene unlike anything trained on


def test_whisker_is_r_boxplot_stats() -> None:
    # R: fivenum(c(1, 2, 3, 4, 100)) = 1 2 3 4 100; fivenum(1:4) = 1.0 1.5 2.5 3.5 4.0
    np.testing.assert_allclose(fivenum(np.array([100.0, 1, 3, 2, 4])), [1, 2, 3, 4, 100])
    np.testing.assert_allclose(fivenum(np.arange(1.0, 5)), [1, 1.5, 2.5, 3.5, 4])
    assert upper_whisker(np.array([1.0, 2, 3, 4, 100])) == 4.0  # boxplot.stats(...)$stats[5]
    assert upper_whisker(np.array([1.0, 2, 3, 4, 5, 6, 7, 8, 30])) == 8.0


def test_reference_follows_the_definition() -> None:
    """DI, mean distance and threshold computed by brute force from the published recipe."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3)) * [1.0, 5.0, 0.2] + [0, 10, -3]
    groups = np.repeat(np.arange(20), 3).astype(str)  # three patches per polygon
    ref = build_reference(x, groups)
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    d = np.linalg.norm(z[:, None] - z[None], axis=2)
    mean_d = d[~np.eye(60, dtype=bool)].mean()
    same = groups[:, None] == groups[None]
    di = np.where(same, np.inf, d).min(axis=1) / mean_d
    assert ref.mean_distance == pytest.approx(mean_d, rel=1e-5)
    assert ref.threshold == pytest.approx(upper_whisker(di), rel=1e-5)
    q = rng.normal(size=(5, 3)) * [1.0, 5.0, 0.2] + [0, 10, -3]
    zq = (q - x.mean(axis=0)) / x.std(axis=0)
    want = np.linalg.norm(zq[:, None] - z[None], axis=2).min(axis=1) / mean_d / upper_whisker(di)
    np.testing.assert_allclose(ref.dissimilarity(q), want, rtol=1e-4)
    assert ref.dissimilarity(np.array([[0, 10, 40.0]]))[0] > 5  # far off in one feature


def test_novelty_along_a_feature_constant_in_training_counts() -> None:
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(size=(50, 3)), np.zeros((50, 1))], axis=1)  # a dead unit
    ref = build_reference(x, np.arange(50).astype(str))
    assert ref.dissimilarity(np.array([[0, 0, 0, 0.0]]))[0] < 1
    assert ref.dissimilarity(np.array([[0, 0, 0, 50.0]]))[0] > 5
    same = np.repeat(rng.normal(size=(1, 3)), 40, axis=0)  # every patch alike
    with pytest.raises(ConfigError, match="share the same features"):
        build_reference(same, (np.arange(40) % 4).astype(str), what="run 'r'")


def test_output_layer_inputs_skip_a_hidden_layer_as_wide_as_the_output() -> None:
    import torch

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5), torch.nn.ReLU(),
                              torch.nn.Linear(5, 5))
    feats = network_features(net, torch.randn(3, 3, 2, 2))
    assert feats.shape == (3, 5)  # the head's input, not the flattened input as well

    class TwoHeads(torch.nn.Module):  # decision fusion: a head per modality
        def __init__(self) -> None:
            super().__init__()
            self.heads = torch.nn.ModuleDict({"a": torch.nn.Linear(4, 2),
                                              "b": torch.nn.Linear(6, 2)})

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.heads["a"](x[:, :4]) + self.heads["b"](x[:, 4:])

    assert network_features(TwoHeads(), torch.randn(3, 10)).shape == (3, 10)


def test_forest_importances_weight_the_features() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 2))
    ref = build_reference(x, np.arange(40).astype(str), weights=np.array([1.0, 0.0]))
    a, b = ref.dissimilarity(np.array([[0.3, 0.0], [0.3, 50.0]]))
    assert a == pytest.approx(b)  # a feature the forest never used does not count
    with pytest.raises(ConfigError, match="at least 2 folds"):
        build_reference(x, np.zeros(40).astype(str))


@pytest.fixture(scope="module")
def mapped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A run, a scene with an odd block, and that scene mapped with --aoa."""
    root = tmp_path_factory.mktemp("aoa")
    stack = write_stack(root / "stack.tif")
    run = train_run(root, stack)
    data = scene()
    data[:, ODD[0], ODD[1]] = data[:, ODD[0], ODD[1]] * 4 + 3000
    odd = write_stack(root / "odd.tif", data)
    res = runner.invoke(app, ["predict", str(run), "--stack", str(odd), "-o", str(root / "map"),
                              "--aoa", "--tile-size", "24"])
    assert res.exit_code == 0, res.output
    assert "lie outside it" in res.output
    return run, odd, root / "map"


def test_the_odd_block_lies_outside_and_the_rest_mostly_inside(mapped) -> None:
    _, _, out = mapped
    with rasterio.open(out / "aoa.tif") as src:
        assert list(src.descriptions) == ["dissimilarity", "inside_aoa"]
        assert "Meyer & Pebesma" in src.tags()["method"]
        ratio, inside = src.read()
    core = (slice(ODD[0].start + 4, ODD[0].stop - 4), slice(ODD[1].start + 4, ODD[1].stop - 4))
    assert np.nanmax(inside[core]) == 0 and np.nanmin(ratio[core]) > 1
    rest = inside.copy()
    rest[ODD[0].start - 4:ODD[0].stop + 4, ODD[1].start - 4:ODD[1].stop + 4] = np.nan
    assert np.nanmean(rest) > 0.6
    classes = read(out / "classes.tif", 1)
    assert (np.isnan(inside) == (classes == 255)).all()  # NaN exactly where no class
    assert ((inside == 1) == (ratio <= 1))[np.isfinite(ratio)].all()
    record = json.loads((out / "predict.json").read_text())
    aoa = record["aoa"]
    assert aoa["mapped_pixels"] == int((classes != 255).sum())
    assert aoa["outside_pixels"] == int((inside == 0).sum())
    assert set(aoa["outside_share_by_class"]) == set(record["class_names"])
    member = aoa["members"][0]
    assert member["threshold_di"] > 0 and member["reference_patches"] > 100
    assert (out / "aoa.png").is_file() and record["products"]["aoa"] == "aoa.tif"


def test_aoa_does_not_depend_on_windows_or_dropout_passes(mapped, tmp_path: Path) -> None:
    run, odd, out = mapped
    res = runner.invoke(app, ["predict", str(run), "--stack", str(odd), "-o", str(tmp_path),
                              "--aoa", "--tile-size", "64", "--mc-dropout", "2"])
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(read(tmp_path / "aoa.tif"), read(out / "aoa.tif"), rtol=1e-5,
                               atol=1e-6)
    res = runner.invoke(app, ["predict", str(run), "--stack", str(odd), "-o", str(tmp_path)])
    assert res.exit_code == 0  # a map without --aoa leaves no stale area of applicability
    assert not (tmp_path / "aoa.tif").exists() and not (tmp_path / "aoa.png").exists()
    assert "aoa" not in json.loads((tmp_path / "predict.json").read_text())


def test_a_forest_run_measures_in_its_weighted_features(mapped, tmp_path: Path) -> None:
    _, odd, _ = mapped
    stack = write_stack(tmp_path / "stack.tif")
    run = train_run(tmp_path, stack, name="rf", model={"name": "random_forest"},
                    baseline={"n_estimators": 20})
    res = runner.invoke(app, ["predict", str(run), "--stack", str(odd), "-o",
                              str(tmp_path / "map"), "--aoa", "--stride", "2"])
    assert res.exit_code == 0, res.output
    inside = read(tmp_path / "map" / "aoa.tif", 2)
    assert np.nanmax(inside[14:26, 44:66]) == 0 and np.nanmean(inside[40:, :]) > 0.5


@pytest.mark.parametrize("case", ["gone", "other bands"])
def test_unusable_training_patches_are_a_one_line_error(mapped, tmp_path: Path,
                                                        case: str) -> None:
    from geofuse.data.patchset import PatchSet

    run, odd, _ = mapped
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    info = json.loads((copy / "run.json").read_text())
    target = tmp_path / "patches.h5"
    if case == "other bands":
        patches = PatchSet.load(info["patches_path"])
        patches._replace(band_names=[f"x{i}" for i in range(len(patches.band_names))],
                         modalities={"x": [f"x{i}" for i in range(len(patches.band_names))]}
                         ).save(target)
    info["patches_path"] = str(target)
    (copy / "run.json").write_text(json.dumps(info))
    res = runner.invoke(app, ["predict", str(copy), "--stack", str(odd), "-o",
                              str(tmp_path / "map"), "--aoa"])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "patches.h5" in lines[0] and "without --aoa" in lines[0]
    assert ("is gone" if case == "gone" else "lacks its bands") in lines[0]


def test_assess_splits_accuracy_at_the_area_of_applicability(mapped, tmp_path: Path) -> None:
    """Reference points inside and outside the AOA: the assessment counts them apart."""
    import geopandas as gpd
    from shapely.geometry import Point

    from test_predict import CLASSES, CRS, TRANSFORM, truth

    _, _, out = mapped
    classes, inside = read(out / "classes.tif", 1), read(out / "aoa.tif", 2)
    rng = np.random.default_rng(5)
    rows, cols = np.nonzero(classes != 255)
    pick = rng.choice(len(rows), 300, replace=False)
    rows, cols = rows[pick], cols[pick]
    ref = truth()[rows, cols]
    points = gpd.GeoDataFrame(
        {"class": [CLASSES[c] for c in ref]},
        geometry=[Point(*(TRANSFORM * (c + 0.5, r + 0.5)))
                  for r, c in zip(rows, cols, strict=True)], crs=CRS)
    points.to_file(tmp_path / "points.gpkg")
    res = runner.invoke(app, ["assess", str(out / "classes.tif"), "--polygons",
                              str(tmp_path / "points.gpkg"), "-o", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "a" / "assessment.json").read_text())
    ok = classes[rows, cols] == ref
    for where, flag in (("inside", 1), ("outside", 0)):
        sel = inside[rows, cols] == flag
        got = result["aoa"][where]
        assert got["n_reference_pixels"] == int(sel.sum()) > 0
        assert got["overall_accuracy"] == pytest.approx(ok[sel].mean())
    assert "area of applicability" in (tmp_path / "a" / "assessment.md").read_text()
