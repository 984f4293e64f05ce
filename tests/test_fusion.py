"""Late and decision fusion: shapes, the probability mix, bad options, and training runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from factories import make_config, make_patchset
from geofuse.errors import ConfigError
from geofuse.models.fusion import DecisionFusion, LateFusion
from geofuse.models.registry import create_model
from geofuse.rundir import RunDir
from geofuse.training.train import train_model

MODS = {"s2": 4, "dem": 2}
CASES: list[tuple[str, dict[str, Any]]] = [
    ("early_fusion", {}),
    ("late_fusion", {"modalities": MODS}),
    ("late_fusion", {"modalities": MODS, "merge": "attention"}),
    ("late_fusion", {"modalities": MODS, "encoders": {"s2": "simple_cnn"}}),
    ("decision_fusion", {"modalities": MODS}),
    ("decision_fusion", {"modalities": MODS, "weights": {"s2": 0.6, "dem": 0.4}}),
]


@pytest.mark.parametrize(("name", "kwargs"), CASES)
@pytest.mark.parametrize("patch", [8, 32])
def test_fusion_models_map_patches_to_logits_and_backprop(
    name: str, kwargs: dict[str, Any], patch: int
) -> None:
    torch.manual_seed(0)
    model = create_model(name, in_channels=6, num_classes=4, patch_size=patch, **kwargs)
    x = torch.randn(5, 6, patch, patch)
    out = model(x)
    assert out.shape == (5, 4)
    loss = torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 3, 0]))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_late_fusion_builds_one_encoder_per_modality_on_its_own_bands() -> None:
    model = LateFusion(6, 4, 8, modalities=MODS, encoders={"s2": "simple_cnn"})
    assert set(model.encoders) == {"s2", "dem"}
    assert model.encoders["dem"].body[0][0].in_channels == 2  # small_cnn on the 2 DEM bands
    assert model.encoders["s2"].feature_dim == 64 * 2 * 2  # simple_cnn features, flattened
    model.eval()
    x = torch.randn(3, 6, 8, 8)
    changed = x.clone()
    changed[:, 4:] += 5.0  # only the DEM bands move
    with torch.no_grad():
        s2_a, s2_b = model.encoders["s2"](x[:, :4]), model.encoders["s2"](changed[:, :4])
        assert torch.equal(s2_a, s2_b)
        assert not torch.allclose(model(x), model(changed))


@pytest.mark.parametrize("merge", ["concat", "attention"])
def test_late_fusion_runs_with_a_modality_zeroed(merge: str) -> None:
    model = LateFusion(6, 4, 8, modalities=MODS, merge=merge).eval()
    x = torch.randn(4, 6, 8, 8)
    x[:, 4:] = 0.0  # DEM missing (normalised to its mean)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (4, 4) and torch.isfinite(out).all()
    if merge == "attention":
        assert model.last_weights is not None and model.last_weights.shape == (4, 2)
        torch.testing.assert_close(model.last_weights.sum(dim=1), torch.ones(4))


def test_decision_fusion_fixed_weights_equal_hand_computed_mixture() -> None:
    torch.manual_seed(1)
    model = DecisionFusion(6, 3, 8, modalities=MODS, weights={"s2": 3.0, "dem": 2.0}).eval()
    x = torch.randn(4, 6, 8, 8)
    with torch.no_grad():
        parts = model.modality_logits(x)
        expected = 0.6 * parts["s2"].softmax(1) + 0.4 * parts["dem"].softmax(1)
        out = model(x)
    torch.testing.assert_close(out.exp(), expected)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(4))
    # the task's cross-entropy on these "logits" is the NLL of the mixture
    target = torch.tensor([0, 1, 2, 0])
    nll = -expected[torch.arange(4), target].log().mean()
    torch.testing.assert_close(torch.nn.functional.cross_entropy(out, target), nll)


def test_decision_fusion_zero_weight_ignores_a_modality_and_learned_weights_start_equal() -> None:
    fixed = DecisionFusion(6, 3, 8, modalities=MODS, weights={"s2": 1.0, "dem": 0.0}).eval()
    x = torch.randn(2, 6, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fixed(x), fixed.modality_logits(x)["s2"].log_softmax(1))
    learned = DecisionFusion(6, 3, 8, modalities=MODS)
    torch.testing.assert_close(learned.modality_weights, torch.tensor([0.5, 0.5]))
    learned(x).logsumexp(1).sum().backward()
    assert learned.weight_logits is not None and learned.weight_logits.grad is not None


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (LateFusion, {"modalities": {"s2": 4, "dem": 1}}, r"do not split 6 input bands"),
        (LateFusion, {"modalities": MODS, "encoders": {"s1": "small_cnn"}}, r"'s1'.*encoders"),
        (LateFusion, {"modalities": MODS, "encoders": {"dem": "nope"}}, r"unknown encoder 'nope'"),
        (LateFusion, {"modalities": MODS, "encoders": {"dem": "late_fusion"}}, r"no \.features"),
        (LateFusion, {"modalities": MODS, "merge": "sum"}, r"merge='sum'"),
        (DecisionFusion, {"modalities": MODS, "weights": {"s2": 1.0}}, r"every modality"),
        (DecisionFusion, {"modalities": MODS, "weights": {"s2": 1, "dem": -1}}, r"weights"),
    ],
)
def test_bad_fusion_options_are_config_errors(
    cls: type[torch.nn.Module], kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        cls(6, 4, 8, **kwargs)


@pytest.mark.parametrize(
    ("name", "extra"),
    [("late_fusion", {"merge": "attention"}), ("decision_fusion", {"weights": {"s2": 0.7,
                                                                              "dem": 0.3}})],
)
def test_fusion_model_trains_through_train_model(
    tmp_path: Path, name: str, extra: dict[str, Any]
) -> None:
    cfg = make_config(tmp_path, epochs=1, model={"name": name, **extra})
    run = RunDir(train_model(cfg, patchset=make_patchset(n=80), progress=False))
    info = json.loads(run.run_json.read_text())
    assert info["status"] == "finished" and info["epochs_trained"] == 1
    ckpt = torch.load(run.best_ckpt, map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["model_kwargs"]["modalities"] == {"s2": 4, "dem": 2}
    metrics = json.loads(run.metrics.read_text())
    assert 0.0 <= metrics["val"]["accuracy"] <= 1.0


def test_fusion_option_on_a_model_without_it_is_a_config_error(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, epochs=1, model={"name": "simple_cnn", "merge": "attention"})
    with pytest.raises(ConfigError, match="merge"):
        train_model(cfg, patchset=make_patchset(n=40), progress=False)
