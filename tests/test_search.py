"""Pilot-fold hyperparameter search, then CV of the winner and the baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from factories import make_config, make_patchset
from geofuse.config import SearchConfig, parse_config
from geofuse.errors import ConfigError
from geofuse.experiments.runner import load_cells
from geofuse.experiments.search import rank_trials, run_search, search_trials


def test_grid_and_random_trials() -> None:
    space = {"train.lr": [0.1, 0.01, 0.001], "train.optimizer": ["adam", "sgd"]}
    grid = search_trials(SearchConfig(space=space), seed=0)
    assert len(grid) == 6 and grid[0] == {"train.lr": 0.1, "train.optimizer": "adam"}
    assert len(search_trials(SearchConfig(space=space, n_trials=4), seed=0)) == 4
    rand = search_trials(SearchConfig(space=space, method="random", n_trials=3), seed=1)
    assert len(rand) == 3 and all(t in grid for t in rand)
    assert len({json.dumps(t) for t in rand}) == 3  # sampled without replacement
    assert rand == search_trials(SearchConfig(space=space, method="random", n_trials=3), 1)
    with pytest.raises(ConfigError, match=r"search\.space is empty"):
        search_trials(SearchConfig(), seed=0)


def test_space_keys_are_checked_when_the_config_loads(tmp_path: Path) -> None:
    data = make_config(tmp_path).model_dump(mode="json")
    data["search"] = {"space": {"train.model.hidden": [8, 16], "train.batch_size": [16]}}
    assert parse_config(data, tmp_path).search.space["train.model.hidden"] == [8, 16]
    data["search"] = {"space": {"train.lr_rate": [0.1]}}
    with pytest.raises(ConfigError, match=r"'train\.lr_rate' is not a config key"):
        parse_config(data, tmp_path)


def test_rank_trials_puts_best_f1_first_and_missing_last() -> None:
    trials = [{"train.lr": 1}, {"train.lr": 2}, {"train.lr": 3}]
    results = [{"config_id": "trial-00", "val": {"f1_macro": 0.5, "accuracy": 0.6}},
               {"config_id": "trial-01", "val": {"f1_macro": 0.9, "accuracy": 0.9}}]
    ranked = rank_trials(trials, results)
    assert [r["trial"] for r in ranked] == ["trial-01", "trial-00", "trial-02"]
    assert ranked[0]["rank"] == 1 and ranked[0]["params"] == {"train.lr": 2}


@pytest.mark.slow
def test_search_then_cross_validates_winner_and_baseline(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, epochs=1, batch_size=16, lr=1e-5, model={"hidden": 16})
    cfg.ablation.folds = 2
    cfg.search.space = {"train.lr": [0.03, 1e-5]}
    cfg.search.fold = 1
    out = run_search(cfg, progress=False, patchset=make_patchset(n=48))
    record = json.loads((out / "search.json").read_text())
    assert [t["params"]["train.lr"] for t in record["trials"]] in ([0.03, 1e-5], [1e-5, 0.03])
    assert record["baseline"]["params"] == {"train.lr": 1e-5} and record["fold"] == 1
    pilot = load_cells(out / "pilot")
    assert {c["fold"] for c in pilot} == {1} and len(pilot) == 2
    best = record["trials"][0]
    assert best["val_f1_macro"] == max(c["val"]["f1_macro"] for c in pilot)
    assert len(pd.read_csv(out / "trials.csv")) == 2
    study = json.loads((out / "study.json").read_text())
    assert study["baseline_config_id"] == "baseline" and study["kind"] == "search"
    cells = load_cells(out)
    # lr 0.03 is tried first: it wins (ties go to the earlier trial), so both configs are run
    assert not record["winner_is_baseline"] and best["params"] == {"train.lr": 0.03}
    assert [c["config_id"] for c in cells] == ["baseline", "baseline", "best", "best"]
    assert [c["overrides"].get("train.lr") for c in cells] == [None, None, 0.03, 0.03]
    assert {c["fold"] for c in cells} == {0, 1}
    with pytest.raises(ConfigError, match=r"search\.fold = 5"):
        cfg.search.fold = 5
        run_search(cfg, progress=False, patchset=make_patchset(n=48))
