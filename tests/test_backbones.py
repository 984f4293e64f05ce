"""timm backbones: registry entries, shapes, upsampling, config wiring and one-epoch training."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import timm
import torch
from typer.testing import CliRunner

from factories import CLASSES, make_config, make_patchset
from geofuse.cli import app
from geofuse.config import load_config
from geofuse.data.datamodule import PatchDataModule
from geofuse.errors import ConfigError
from geofuse.models.backbones import BACKBONES, BackboneClassifier
from geofuse.models.registry import MODELS, create_model, describe_models
from geofuse.training.train import build_task, model_kwargs, train_model

FEATURE_DIMS = {"resnet18": 512, "resnet50": 2048, "mobilenetv2_100": 1280,
                "efficientnet_b0": 1280, "vit_tiny_patch16_224": 192,
                "vit_small_patch16_224": 384, "vit_base_patch16_224": 768}
# the larger ViTs train like vit_tiny; building them is checked in test_pretrained_bands.py
TRAINED = [b for b in BACKBONES if b not in ("vit_small_patch16_224", "vit_base_patch16_224")]


@pytest.mark.parametrize("name", TRAINED)
def test_backbone_trains_one_epoch_and_predicts(name: str, tmp_path: Path) -> None:
    patches = make_patchset(n=20, patch_size=32, seed=1)
    patches = patches._replace(split=np.repeat(np.uint8([0, 1]), [16, 4]))  # 2 train batches
    cfg = make_config(tmp_path, model={"name": name, "dropout": 0.2}, batch_size=8)
    L.seed_everything(0, verbose=False)
    task = build_task(cfg, patches)
    assert isinstance(task.model, BackboneClassifier)
    before = [p.detach().clone() for p in task.model.parameters()]
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(task, datamodule=PatchDataModule(patches, batch_size=8, seed=0))
    changed = sum(not torch.equal(a, b) for a, b in zip(before, task.model.parameters(),
                                                        strict=True))
    assert changed > len(before) // 2  # the whole network trained, not just the head
    task.eval()
    x = torch.randn(3, 6, 32, 32)
    with torch.no_grad():
        logits, feats = task(x), task.model.features(x)
    assert logits.shape == (3, len(CLASSES)) and torch.isfinite(logits).all()
    assert feats.shape == (3, FEATURE_DIMS[name]) == (3, task.model.feature_dim)


@pytest.mark.parametrize("bands", [1, 2, 13])
def test_any_band_count(bands: int) -> None:
    model = create_model("efficientnet_b0", in_channels=bands, num_classes=5, patch_size=32)
    model.eval()
    assert model(torch.randn(2, bands, 32, 32)).shape == (2, 5)
    assert model.backbone.conv_stem.in_channels == bands


def test_backbones_are_registered_with_their_options() -> None:
    described = describe_models()
    for name in BACKBONES:
        assert name in MODELS
        assert described[name]["input_adaptation"] == "cycle"
        assert described[name]["freeze_fraction"] == 0.0
        assert "band_names" not in described[name] and "backbone" not in described[name]
    assert described["simple_cnn"] == {"hidden": 128, "dropout": 0.5, "pool": "flatten",
                                       "band_stats": False, "pretrained_path": None}


def test_models_command_prints_the_table() -> None:
    result = CliRunner().invoke(app, ["models"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "efficientnet_b0" in result.output and "backbone_lr_scale=1.0" in result.output


def test_upsampling_warns_and_feeds_the_larger_size() -> None:
    with pytest.warns(UserWarning, match="no new information"):
        model = BackboneClassifier(6, 3, 8, backbone="resnet18", upsample_to=32)
    seen: list[tuple[int, ...]] = []
    model.backbone.conv1.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    model.eval()
    assert model(torch.randn(2, 6, 8, 8)).shape == (2, 3)
    assert seen == [(2, 6, 32, 32)]
    with pytest.raises(ConfigError, match="upsample_to=8 must exceed patch_size=8"):
        BackboneClassifier(6, 3, 8, upsample_to=8)


def test_model_kwargs_pass_only_what_the_model_takes(tmp_path: Path) -> None:
    patches = make_patchset(n=8, patch_size=8)
    simple = model_kwargs(make_config(tmp_path), patches)
    assert {"hidden", "dropout"} <= set(simple) and "freeze_fraction" not in simple
    assert simple["pretrained_path"] is None  # simple_cnn loads geofuse pretrain files
    task = build_task(make_config(tmp_path), patches)
    assert type(task.model).__name__ == "SimpleCNN"
    with pytest.raises(ConfigError, match=r"does not take option\(s\) \['freeze_fraction'\]"):
        build_task(make_config(tmp_path, model={"freeze_fraction": 0.5}), patches)
    with pytest.raises(ConfigError, match=r"resnet9000.*resnet18"):
        build_task(make_config(tmp_path, model={"name": "resnet9000"}), patches)
    kw = model_kwargs(make_config(tmp_path, model={"name": "resnet18",
                                                   "pretrained_path": "w/r18.pth"}), patches)
    assert kw["pretrained_path"] == str((tmp_path / "w" / "r18.pth").resolve())
    assert kw["band_names"] == list(patches.band_names) and "hidden" not in kw
    assert kw.get("rgb_bands") is None  # no sensor: the models' own B4, B3, B2
    # Landsat 4/5/7 bands: band-aware weights take red B3, green B2, blue B1
    tm = make_config(tmp_path, model={"name": "resnet18"})
    tm.modalities[0].sensor = "landsat57"
    assert model_kwargs(tm, patches).get("rgb_bands") is None  # no B3/B2/B1 among s2_r ...
    ls = ["l7_B1", "l7_B2", "l7_B3", "l7_B4"]
    patches.band_names = [*ls, *patches.modalities["dem"]]
    patches.modalities = {"s2": ls, "dem": patches.modalities["dem"]}
    assert model_kwargs(tm, patches)["rgb_bands"] == ["l7_B3", "l7_B2", "l7_B1"]


def test_train_band_aware_from_relative_weights_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    rgb = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    torch.save({"state_dict": rgb.state_dict()}, tmp_path / "weights" / "r18.pth")
    cfg_path = tmp_path / "study.yaml"
    cfg = make_config(tmp_path, batch_size=8, model={
        "name": "resnet18", "pretrained_path": "weights/r18.pth", "input_adaptation": "band_aware",
        "rgb_bands": ["s2_r", "s2_g", "s2_b"], "freeze_stages": ["conv1"],
        "backbone_lr_scale": 0.1,
    })
    from geofuse.config import dump_config

    dump_config(cfg, cfg_path)
    cfg = load_config(cfg_path)
    assert cfg.train.model.input_adaptation == "band_aware"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = train_model(cfg, progress=False, epochs=1,
                          patchset=make_patchset(n=32, patch_size=32, seed=2))
    assert (run / "metrics.json").is_file()
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    conv1 = ckpt["state_dict"]["model.backbone.conv1.weight"]
    assert conv1.shape == (64, 6, 7, 7)
    torch.testing.assert_close(conv1[:, 2], rgb.conv1.weight[:, 0])  # frozen, red kernel kept
