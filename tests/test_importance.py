"""Permutation importance: the only band a model uses gets all the importance."""

from __future__ import annotations

import numpy as np
import pytest

from geofuse.evaluation.importance import aggregate_importance, permutation_importance
from geofuse.evaluation.metrics import classification_metrics

BANDS = ["B2", "B3", "B4", "elevation"]
MODALITIES = {"s2": ["B2", "B3", "B4"], "dem": ["elevation"]}


def _data(n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, len(BANDS), 4, 4)).astype(np.float32)
    y = (x[:, 2].mean(axis=(1, 2)) > 0).astype(np.int64)
    return x, y


def _uses_b4(x: np.ndarray) -> np.ndarray:
    return (x[:, 2].mean(axis=(1, 2)) > 0).astype(np.int64)


def test_only_the_used_band_and_its_modality_matter() -> None:
    x, y = _data()
    out = permutation_importance(_uses_b4, x, y, BANDS, MODALITIES, n_repeats=4, seed=1)
    assert out["baseline"] == 1.0 and out["metric"] == "accuracy"
    # a permuted B4 leaves the label random: accuracy ~0.5, drop ~0.5
    assert 0.35 < out["band"]["B4"]["mean"] < 0.65 and out["band"]["B4"]["std"] > 0
    assert 0.35 < out["modality"]["s2"]["mean"] < 0.65
    for band in ("B2", "B3", "elevation"):
        assert out["band"][band] == {"mean": 0.0, "std": 0.0}
    assert out["modality"]["dem"] == {"mean": 0.0, "std": 0.0}


def test_modality_bands_move_jointly_as_whole_patches() -> None:
    x, y = _data(30)
    seen: list[np.ndarray] = []

    def spy(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.copy())
        return _uses_b4(batch)

    permutation_importance(spy, x, y, BANDS, {"s2": ["B2", "B3", "B4"]}, n_repeats=1)
    permuted = seen[1]  # call 0: baseline; call 1: modality s2
    assert not np.array_equal(permuted, x)
    np.testing.assert_array_equal(permuted[:, 3], x[:, 3])  # other modality untouched
    for i in range(len(x)):
        # sample i received the whole s2 stack (3 bands x 4 x 4) of one single other sample
        sources = [j for j in range(len(x)) if np.array_equal(permuted[i, :3], x[j, :3])]
        assert len(sources) == 1


def test_f1_metric_logit_outputs_batches_and_determinism() -> None:
    x, y = _data(90)

    def logits(batch: np.ndarray) -> np.ndarray:
        score = batch[:, 2].mean(axis=(1, 2))
        return np.stack([-score, score], axis=1)

    kwargs = {"n_repeats": 3, "seed": 7, "metric": "f1_macro"}
    a = permutation_importance(logits, x, y, BANDS, MODALITIES, batch_size=32, **kwargs)
    b = permutation_importance(logits, x, y, BANDS, MODALITIES, **kwargs)
    assert a == b
    assert a["baseline"] == pytest.approx(classification_metrics(y, y, ["0", "1"])["f1_macro"])
    assert a["band"]["B4"]["mean"] > 0.3


def test_bad_arguments_raise() -> None:
    x, y = _data(10)
    with pytest.raises(ValueError, match="NIR"):
        permutation_importance(_uses_b4, x, y, BANDS, {"s2": ["NIR"]})
    with pytest.raises(ValueError, match="metric"):
        permutation_importance(_uses_b4, x, y, BANDS, MODALITIES, metric="auc")
    with pytest.raises(ValueError, match="band names"):
        permutation_importance(_uses_b4, x[:, :2], y, BANDS, MODALITIES)


def test_aggregate_importance_over_runs() -> None:
    runs = [{"modality": {"s2": {"mean": 0.3, "std": 0.01}}, "band": {}},
            {"modality": {"s2": {"mean": 0.1, "std": 0.02}, "dem": {"mean": 0.05, "std": 0.01}}},
            None]
    out = aggregate_importance(runs)
    assert out["modality"]["s2"] == pytest.approx({"mean": 0.2, "std": np.std([0.3, 0.1], ddof=1),
                                                   "n": 2})
    assert out["modality"]["dem"] == {"mean": 0.05, "std": 0.01, "n": 1}
    assert "band" not in out and aggregate_importance([None]) == {}
