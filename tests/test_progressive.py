"""Progressive fusion: SE blocks, per-stage fusion, back-projection passes and a training run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from factories import make_config, make_patchset
from geofuse.errors import ConfigError
from geofuse.models.encoders import SEBlock
from geofuse.models.progressive import ProgressiveFusion
from geofuse.models.registry import count_parameters
from geofuse.rundir import RunDir
from geofuse.training.train import train_model

MODS = {"s2": 4, "dem": 2}


def test_se_block_gates_channels_with_reduced_bottleneck() -> None:
    block = SEBlock(64, reduction=16)
    assert block.gate[1].out_channels == 4  # 64 // 16
    assert SEBlock(8, reduction=16).gate[1].out_channels == 1  # at least one unit
    x = torch.rand(2, 64, 4, 4) + 0.1
    scale = block(x) / x
    assert ((scale > 0) & (scale < 1)).all()
    # one gate value per channel: constant over the spatial positions
    torch.testing.assert_close(scale, scale[..., :1, :1].expand_as(scale))


@pytest.mark.parametrize("patch", [8, 32, 5])
@pytest.mark.parametrize("passes", [0, 1, 2])
def test_progressive_fusion_shapes_and_backprop(patch: int, passes: int) -> None:
    torch.manual_seed(0)
    model = ProgressiveFusion(6, 4, patch, modalities=MODS, refinement_passes=passes)
    out = model(torch.randn(3, 6, patch, patch))
    assert out.shape == (3, 4)
    out.sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values() if g is not None)
    assert grads["streams.dem.0.body.0.weight"] is not None  # every modality stream learns
    used = grads["backproject.0.0.weight"] is not None
    assert used == (passes > 0)  # back-projection layers only act in refinement passes


def test_every_encoder_stage_fuses_both_modalities() -> None:
    model = ProgressiveFusion(6, 4, 8, modalities=MODS)
    assert [f[0][0].in_channels for f in model.fuse] == [2 * 32, 2 * 64, 2 * 128]
    assert [blocks[0].body[0].in_channels for blocks in model.streams.values()] == [4, 2]
    assert model.fuse[1][1].gate[1].out_channels == 64 // 16
    assert ProgressiveFusion(6, 4, 8, modalities=MODS, se_reduction=8).fuse[1][1].gate[1] \
        .out_channels == 64 // 8


def test_refinement_passes_share_weights_and_change_the_output() -> None:
    torch.manual_seed(0)
    base = ProgressiveFusion(6, 4, 8, modalities=MODS, refinement_passes=0).eval()
    more = ProgressiveFusion(6, 4, 8, modalities=MODS, refinement_passes=3).eval()
    assert count_parameters(base) == count_parameters(more)
    more.load_state_dict(base.state_dict())
    x = torch.randn(2, 6, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(base(x), more(x))
        # with the back-projection zeroed, refinement reproduces the single pass
        for layer in more.backproject:
            torch.nn.init.zeros_(layer[1].weight)
            torch.nn.init.zeros_(layer[1].bias)
        torch.testing.assert_close(base(x), more(x))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"se_reduction": 0}, "se_reduction=0"), ({"refinement_passes": -1}, "refinement_passes"),
     ({"patch_size": 3}, "patch_size=3"), ({"modalities": {"s2": 5}}, "do not split")],
)
def test_bad_progressive_options_are_config_errors(kwargs: dict[str, object], match: str) -> None:
    args = {"in_channels": 6, "num_classes": 4, "patch_size": 8, "modalities": MODS, **kwargs}
    with pytest.raises(ConfigError, match=match):
        ProgressiveFusion(**args)  # type: ignore[arg-type]


def test_progressive_fusion_trains_through_train_model(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, epochs=1,
                      model={"name": "progressive_fusion", "se_reduction": 8})
    run = RunDir(train_model(cfg, patchset=make_patchset(n=80), progress=False))
    info = json.loads(run.run_json.read_text())
    assert info["status"] == "finished" and info["epochs_trained"] == 1
    ckpt = torch.load(run.best_ckpt, map_location="cpu", weights_only=True)
    kwargs = ckpt["hyper_parameters"]["model_kwargs"]
    assert kwargs["modalities"] == MODS and kwargs["se_reduction"] == 8
    assert kwargs["refinement_passes"] == 1
    assert "val" in json.loads(run.metrics.read_text())
