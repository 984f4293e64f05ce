"""Learning curves: training on nested shares of the labels (train.label_fraction) and the
study's ablation.label_fractions, with the report's curves and per-share tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from factories import make_config, make_patchset
from geofuse.config import parse_config
from geofuse.data.label_fraction import kept_training, subsample_training
from geofuse.errors import ConfigError
from geofuse.experiments.ablation import run_ablation
from geofuse.experiments.grid import build_grid


def _grouped(n: int = 120, per_group: int = 3):
    patches = make_patchset(n=n)
    groups = np.array([f"polygon:{i // per_group}" for i in range(n)])
    y = (np.arange(n) // per_group) % 4  # every patch of a polygon has its class
    split = np.where((np.arange(n) // per_group) % 5 == 4, 1, 0).astype(np.uint8)
    return patches._replace(groups=groups, y=y, split=split)


def test_shares_are_nested_whole_groups_with_every_class() -> None:
    patches = _grouped()
    train = set(patches.split_indices("train"))
    kept = {}
    for share in (0.1, 0.25, 0.5):
        sub = subsample_training(patches, share, seed=3)
        idx = set(sub.split_indices("train"))
        kept[share] = idx
        assert idx < train
        groups = sub.groups[list(idx)]
        assert set(sub.y[list(idx)]) == {0, 1, 2, 3}  # every class keeps a polygon
        for g in set(groups):  # whole polygons only
            assert set(np.flatnonzero(sub.groups == g)) <= idx
        np.testing.assert_array_equal(sub.split_indices("val"), patches.split_indices("val"))
        assert (sub.split[sorted(train - idx)] == 255).all()
    assert kept[0.1] <= kept[0.25] <= kept[0.5]
    n_groups = len(set(patches.groups[list(train)]))
    assert len(set(patches.groups[list(kept[0.25])])) == 4 * int(np.ceil(0.25 * n_groups / 4))
    assert subsample_training(patches, 1.0, seed=3) is patches
    other = subsample_training(patches, 0.25, seed=4)
    assert set(other.split_indices("train")) != kept[0.25]  # another seed, another draw


def test_a_class_that_is_no_groups_majority_stays_in_every_share() -> None:
    """Mixed groups (raster blocks, point clusters): the rare class keeps one group."""
    n = 200
    groups = np.array([f"block:{i // 10}" for i in range(n)])
    y = (np.arange(n) // 10) % 2  # blocks of class 0 or 1 ...
    y[np.arange(n) % 10 == 0] = 2  # ... each with one patch of the rare class 2
    split = np.zeros(n, dtype=np.uint8)
    kept = {}
    for share in (0.05, 0.25, 0.5):
        rows = kept_training(split, groups, y, share, seed=1)
        assert 2 in set(y[rows])
        kept[share] = set(rows)
    assert kept[0.05] <= kept[0.25] <= kept[0.5]


def test_grid_names_shares_largest_first(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    cfg.ablation.label_fractions = [0.25, 1.0]
    cfg.ablation.sensors = [["s2"]]
    cfg.ablation.folds = 2
    cells = build_grid(cfg)
    assert [c.config_id for c in cells] == ["s2/simple_cnn@100%"] * 2 + ["s2/simple_cnn@25%"] * 2
    assert cells[-1].overrides["train.label_fraction"] == 0.25
    for bad in ([0.0, 1.0], [0.5, 0.5], []):
        with pytest.raises(ConfigError, match="label_fractions"):
            parse_config({"name": "x", "modalities": [{"name": "s2", "files": ["a.tif"],
                                                       "bands": ["b"]}],
                          "ablation": {"label_fractions": bad}}, tmp_path)


def test_study_draws_the_curve_and_tests_sensors_at_each_share(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, epochs=1, batch_size=16, model={"hidden": 16})
    cfg.ablation.folds = 2
    cfg.ablation.sensors = [["s2"], ["s2", "dem"]]
    cfg.ablation.label_fractions = [0.25, 1.0]
    study = run_ablation(cfg, progress=False, patchset=make_patchset(n=96))
    stats = json.loads((study / "stats.json").read_text())
    lc = stats["learning_curve"]
    assert lc["reference"] == "s2/simple_cnn"
    assert set(lc["curves"]) == {"s2/simple_cnn", "s2+dem/simple_cnn"}
    for points in lc["curves"].values():
        assert [p["share"] for p in points] == [0.25, 1.0]
        assert points[0]["n_train"] < 0.5 * points[1]["n_train"]
    assert set(lc["comparisons"]) == {"0.25", "1"}
    assert [c["config_id"] for c in lc["comparisons"]["0.25"]] == ["s2+dem/simple_cnn@25%"]
    md = (study / "report.md").read_text()
    assert "## Learning curve" in md and "plots/learning_curve.png" in md
    assert (study / "plots" / "learning_curve.png").stat().st_size > 10_000
    # the main tables and the best configuration (the one that maps) use all the labels
    assert stats["best"].endswith("@100%")
    assert [c["config_id"] for c in stats["comparisons"]] == ["s2+dem/simple_cnn@100%"]
    # a run on a share measures its area of applicability against the patches it trained on
    from geofuse.mapping.aoa import training_sample

    for run in (study / "runs").iterdir():
        info = json.loads((run / "run.json").read_text())
        assert len(training_sample(run, info["bands"]).rows) == info["n_train"]


def test_one_share_draws_no_curve() -> None:
    from geofuse.reporting._study_learning import learning_curve_stats

    cells = [{"config_id": "s2/cnn@50%", "overrides": {"train.label_fraction": 0.5}}]
    assert learning_curve_stats(cells, {"s2/cnn@50%": {(0, 0): 0.5}}, None, 0.05,
                                "fold") is None
