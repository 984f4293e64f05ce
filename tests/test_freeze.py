"""Freezing by fraction and by stage, frozen batch norm, and per-group learning rates."""

from __future__ import annotations

import pytest
import torch

from geofuse.errors import ConfigError
from geofuse.models.backbones import BackboneClassifier
from geofuse.models.freeze import (
    freeze_by_fraction,
    frozen_fraction,
    frozen_parameter_fraction,
    parameter_layers,
)
from geofuse.training.task import ClassificationTask


def _frozen(module: torch.nn.Module) -> bool:
    return not any(p.requires_grad for p in module.parameters())


def test_fraction_freezes_the_first_layers_in_forward_order() -> None:
    model = BackboneClassifier(5, 3, 32, backbone="resnet18", freeze_fraction=0.5)
    layers = parameter_layers(model.backbone)
    assert [name for name, _ in layers[:3]] == ["conv1", "bn1", "layer1.0.conv1"]
    half = round(0.5 * len(layers))
    assert all(_frozen(m) for _, m in layers[:half])
    assert not any(_frozen(m) for _, m in layers[half:])
    assert not _frozen(model.head)
    total = len(parameter_layers(model))  # backbone layers + the head's linear layer
    assert frozen_fraction(model) == pytest.approx(half / total)
    # the early layers are small: far fewer than half of the parameter *elements* are frozen
    assert 0 < frozen_parameter_fraction(model) < 0.3


def test_fraction_one_freezes_the_backbone_but_never_the_head() -> None:
    with pytest.warns(UserWarning, match="collapsed"):
        model = BackboneClassifier(4, 3, 32, backbone="mobilenetv2_100", freeze_fraction=1.0)
    assert _frozen(model.backbone)
    assert not _frozen(model.head)
    assert frozen_fraction(model) == pytest.approx(1 - 1 / len(parameter_layers(model)))


def test_fraction_out_of_range_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"freeze_fraction must be between 0 and 1, got 1\.5"):
        freeze_by_fraction(torch.nn.Linear(2, 2), 1.5)


def test_named_stages_resnet_and_efficientnet() -> None:
    model = BackboneClassifier(4, 3, 32, backbone="resnet18", freeze_stages=["conv1", "layer1"])
    assert model.stage_names() == ["conv1", "layer1", "layer2", "layer3", "layer4"]
    assert _frozen(model.backbone.conv1) and _frozen(model.backbone.bn1)
    assert _frozen(model.backbone.layer1)
    assert not _frozen(model.backbone.layer2)
    eff = BackboneClassifier(4, 3, 32, backbone="efficientnet_b0", freeze_stages=["blocks.0"])
    assert eff.stage_names()[:2] == ["conv_stem", "blocks.0"]
    assert eff.stage_names()[-1] == "conv_head"
    assert _frozen(eff.backbone.blocks[0]) and not _frozen(eff.backbone.blocks[1])


def test_unknown_stage_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match="layer9") as err:
        BackboneClassifier(4, 3, 32, backbone="resnet18", freeze_stages=["layer9"])
    assert "layer4" in str(err.value) and "freeze_stages" in str(err.value)


def test_frozen_batchnorm_keeps_running_stats_while_training() -> None:
    model = BackboneClassifier(4, 3, 32, backbone="resnet18", freeze_stages=["conv1"])
    model.eval()
    model.train()
    frozen_bn, live_bn = model.backbone.bn1, model.backbone.layer2[0].bn1
    assert not frozen_bn.training and live_bn.training
    before = frozen_bn.running_mean.clone(), live_bn.running_mean.clone()
    conv_before = model.backbone.conv1.weight.clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = model(torch.randn(4, 4, 32, 32) * 3 + 1).sum()
    loss.backward()
    opt.step()
    torch.testing.assert_close(frozen_bn.running_mean, before[0])
    assert not torch.equal(live_bn.running_mean, before[1])
    torch.testing.assert_close(model.backbone.conv1.weight, conv_before)
    assert model.backbone.conv1.weight.grad is None


def test_parameter_groups_cover_every_parameter_once() -> None:
    model = BackboneClassifier(6, 3, 32, input_adaptation="reduce", backbone_lr_scale=0.1)
    groups = model.parameter_groups()
    assert [g["name"] for g in groups] == ["head", "adapter", "backbone"]
    assert [g["lr_scale"] for g in groups] == [1.0, 1.0, 0.1]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_task_optimizer_uses_scaled_backbone_lr() -> None:
    task = ClassificationTask("resnet18", in_channels=4, num_classes=3, patch_size=32,
                              model_kwargs={"backbone_lr_scale": 0.1}, lr=1e-3)
    optimizer = task.configure_optimizers()["optimizer"]
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"head": pytest.approx(1e-3), "backbone": pytest.approx(1e-4)}
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)  # history's lr = base lr
