"""Segmentation models for time series: LSTM-UNet and the U-Net baselines (tiny, CPU)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from geofuse.errors import ConfigError, DataNotFoundError
from geofuse.models.lstm_unet import ConvLSTM, LSTMUNet
from geofuse.models.registry import (
    SEGMENTATION_MODELS,
    count_parameters,
    create_model,
    describe_models,
    is_segmentation_model,
)

B, T, C = 2, 3, 4
BANDS = ["B02", "B03", "B04", "B08"]  # blue, green, red, NIR
NAMES = [f"{b}@{year}" for year in (2018, 2019, 2020) for b in BANDS]  # time-major
SMALL = {"decoder_channels": (32, 16, 16, 8, 8)}
TINY = {"lstm_unet": {**SMALL, "lstm_hidden_dim": 16}, "unet_early": SMALL,
        "siamese_unet": SMALL, "unet_single": SMALL}
#: the models for time series (unet_late fuses the modalities of one date: test_mask_tiles.py)
TEMPORAL = tuple(n for n in SEGMENTATION_MODELS if n in TINY)


def _model(name: str, num_classes: int = 2, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    opts = {**TINY[name], **kwargs}
    return create_model(name, in_channels=T * C, num_classes=num_classes, patch_size=64,
                        time_steps=T, band_names=NAMES, **opts).eval()


def _run(model: nn.Module, x: torch.Tensor, train: bool = False) -> torch.Tensor:
    """Output without gradients, in eval mode or in train mode (batch-norm batch statistics:
    at initialisation eval-mode activations shrink layer by layer; dropout is 0)."""
    model.train(train)
    with torch.no_grad():
        return model(x)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny convolutions gain nothing from intra-op threads, and lose much on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def binary() -> dict[str, nn.Module]:
    """One tiny binary model per segmentation model, built once."""
    return {name: _model(name) for name in TEMPORAL}


@pytest.fixture(scope="module")
def rgb_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fake 'pretrained' timm resnet18 RGB state dict (with its 1000-class fc) on disk."""
    torch.manual_seed(1)
    net = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    path = tmp_path_factory.mktemp("weights") / "resnet18_rgb.pth"
    torch.save(net.state_dict(), path)
    return path


# -- shapes --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TEMPORAL)
def test_output_shapes_at_any_tile_size(name: str, binary: dict[str, nn.Module]) -> None:
    model, multi = binary[name], _model(name, num_classes=3)
    for size in (32, 40, 64):  # 40: padded to 64 inside, cropped back
        x = torch.randn(B, T * C, size, size)
        out = _run(model, x)
        assert out.shape == (B, 1, size, size) and torch.isfinite(out).all()  # binary logit
    assert _run(multi, torch.randn(B, T * C, 48, 48)).shape == (B, 3, 48, 48)
    assert model.out_channels == 1 and multi.out_channels == 3
    assert _run(model, torch.randn(1, T * C, 32, 48)).shape == (1, 1, 32, 48)


@pytest.mark.parametrize("name", TEMPORAL)
def test_gradient_reaches_the_encoder(name: str, binary: dict[str, nn.Module]) -> None:
    model = binary[name].train()
    model.zero_grad()
    model(torch.randn(B, T * C, 32, 32)).square().mean().backward()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    stem, head = convs[0], convs[-1]
    assert stem.weight.grad is not None and stem.weight.grad.abs().sum() > 0
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


# -- what each model reads of the series ------------------------------------------------------
def test_lstm_unet_uses_the_time_order_and_max_pools_skips_over_time() -> None:
    model = _model("lstm_unet")
    for cell in model.temporal.cells:  # gates in their non-linear range, as after training
        nn.init.normal_(cell.gates.weight, std=0.3)
    x = torch.randn(B, T * C, 32, 32)
    steps = x.reshape(B, T, C, 32, 32)
    reversed_x = steps.flip(1).reshape(B, T * C, 32, 32)
    out, out_rev = _run(model, x, train=True), _run(model, reversed_x, train=True)
    assert (out - out_rev).abs().max() > 1e-3
    model.eval()
    with torch.no_grad():
        skips, last = model.encode(x)
        skips_rev, _ = model.encode(reversed_x)
        per_date = model.encoder(steps.reshape(B * T, C, 32, 32))
    assert last.shape[:2] == (B, T) and len(skips) == len(per_date) - 1 == 4
    for skip, skip_rev, feat in zip(skips, skips_rev, per_date, strict=False):
        torch.testing.assert_close(skip, feat.reshape(B, T, *feat.shape[1:]).amax(dim=1))
        torch.testing.assert_close(skip, skip_rev)  # max over time ignores the order...
    # ...so the order reaches the output through the ConvLSTM at the bottleneck only


def test_conv_lstm_returns_the_last_hidden_state_and_is_order_sensitive() -> None:
    torch.manual_seed(0)
    lstm = ConvLSTM(in_channels=5, hidden_channels=6, num_layers=2)
    seq = torch.randn(2, 4, 5, 3, 3)
    with torch.no_grad():
        out, flipped, prefix = lstm(seq), lstm(seq.flip(1)), lstm(seq[:, :3])
    assert out.shape == (2, 6, 3, 3)
    assert not torch.allclose(out, flipped) and not torch.allclose(out, prefix)
    assert len(lstm.cells) == 2 and lstm.cells[1].gates.in_channels == 12


def _with_step(x: torch.Tensor, step: int) -> torch.Tensor:
    """``x`` with date ``step`` replaced by noise."""
    out = x.clone()
    out[:, step * C:(step + 1) * C] = torch.randn(B, C, *x.shape[-2:])
    return out


@pytest.mark.parametrize(("name", "ignored", "read"), [
    ("siamese_unet", [1], [0, 2]), ("unet_single", [0, 1], [2]), ("unet_early", [], [0, 1, 2]),
    ("lstm_unet", [], [0, 1, 2]),
])
def test_which_dates_each_model_reads(
    name: str, ignored: list[int], read: list[int], binary: dict[str, nn.Module]
) -> None:
    model = binary[name]
    torch.manual_seed(3)
    x = torch.randn(B, T * C, 32, 32)
    ref = _run(model, x, train=True)
    for step in ignored:
        torch.testing.assert_close(_run(model, _with_step(x, step), train=True), ref)
    for step in read:
        changed = _run(model, _with_step(x, step), train=True)
        assert (changed - ref).abs().max() > 1e-3, step


def test_siamese_absdiff_is_symmetric_and_concat_is_not(binary: dict[str, nn.Module]) -> None:
    x = torch.randn(B, T * C, 32, 32)
    swapped = x.reshape(B, T, C, 32, 32).flip(1).reshape(B, T * C, 32, 32)
    diff, concat = binary["siamese_unet"], _model("siamese_unet", skip_fusion="concat")
    torch.testing.assert_close(_run(diff, x, True), _run(diff, swapped, True))
    assert (_run(concat, x, True) - _run(concat, swapped, True)).abs().max() > 1e-3


# -- pretrained weights and input adaptation --------------------------------------------------
def test_lstm_unet_band_aware_puts_rgb_kernels_on_b04_b03_b02(rgb_weights: Path) -> None:
    state = torch.load(rgb_weights, weights_only=True)
    model = _model("lstm_unet", pretrained_path=str(rgb_weights))
    assert model.input_adaptation == "band_aware"  # the default with weights and RGB bands
    conv = model.encoder.conv1.weight.detach()
    assert conv.shape == (64, C, 7, 7)  # one date's bands: the encoder is shared over time
    rgb = state["conv1.weight"]
    torch.testing.assert_close(conv[:, 2], rgb[:, 0])  # B04 = red
    torch.testing.assert_close(conv[:, 1], rgb[:, 1])  # B03 = green
    torch.testing.assert_close(conv[:, 0], rgb[:, 2])  # B02 = blue
    assert conv[:, 3].std() < 0.5 * rgb.std()  # NIR: small random start
    torch.testing.assert_close(model.encoder.layer3[0].conv1.weight.detach(),
                               state["layer3.0.conv1.weight"])


def test_unet_early_repeats_the_adapted_kernel_for_every_date(rgb_weights: Path) -> None:
    rgb = torch.load(rgb_weights, weights_only=True)["conv1.weight"]
    model = _model("unet_early", pretrained_path=str(rgb_weights))
    conv = model.net.unet.encoder.conv1.weight.detach()
    assert model.input_adaptation == "band_aware" and conv.shape == (64, T * C, 7, 7)
    for t in range(T):
        torch.testing.assert_close(conv[:, t * C + 2], rgb[:, 0] / T)  # red of every date
        torch.testing.assert_close(conv[:, t * C], rgb[:, 2] / T)
    single = _model("unet_single", pretrained_path=str(rgb_weights))
    torch.testing.assert_close(single.net.unet.encoder.conv1.weight.detach()[:, 1], rgb[:, 1])


def test_without_rgb_band_names_the_default_is_cycle(rgb_weights: Path) -> None:
    names = [f"b{i}" for i in range(T * C)]
    torch.manual_seed(0)
    model = create_model("lstm_unet", T * C, 2, 32, time_steps=T, band_names=names,
                         pretrained_path=str(rgb_weights), **TINY["lstm_unet"])
    assert model.input_adaptation == "cycle"
    rgb = torch.load(rgb_weights, weights_only=True)["conv1.weight"]
    torch.testing.assert_close(model.encoder.conv1.weight.detach()[:, 3], rgb[:, 0] * 3 / C)


def test_reduce_and_missing_weights(rgb_weights: Path, tmp_path: Path) -> None:
    model = _model("siamese_unet", pretrained_path=str(rgb_weights), input_adaptation="reduce")
    assert model.net.unet.encoder.conv1.in_channels == 3
    assert _run(model, torch.randn(1, T * C, 32, 32)).shape == (1, 1, 32, 32)
    with pytest.raises(DataNotFoundError, match="never downloads"):
        _model("lstm_unet", pretrained_path=str(tmp_path / "nope.pth"))
    with pytest.raises(ConfigError, match="do not fit encoder resnet50"):
        _model("lstm_unet", encoder="resnet50", pretrained_path=str(rgb_weights))


# -- validation and registry ------------------------------------------------------------------
@pytest.mark.parametrize("name", SEGMENTATION_MODELS)
def test_time_steps_must_divide_the_channels(name: str) -> None:
    with pytest.raises(ConfigError, match=r"in_channels=10 .*time_steps=3"):
        create_model(name, in_channels=10, num_classes=2, patch_size=32, time_steps=3)


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="time_steps >= 2"):
        create_model("siamese_unet", in_channels=4, num_classes=2, patch_size=32, time_steps=1)
    band_major = [f"{b}@{y}" for b in BANDS for y in (2018, 2019, 2020)]
    with pytest.raises(ConfigError, match="time-major"):
        create_model("lstm_unet", T * C, 2, 32, time_steps=T, band_names=band_major)
    with pytest.raises(ConfigError, match="decoder_channels"):
        create_model("unet_early", T * C, 2, 32, time_steps=T, decoder_channels=(8, 8))
    with pytest.raises(ConfigError, match="encoder"):
        create_model("lstm_unet", T * C, 2, 32, time_steps=T, encoder="no_such_net")


def test_registry_tells_segmentation_models_apart() -> None:
    assert set(SEGMENTATION_MODELS) <= set(describe_models())
    assert all(is_segmentation_model(n) for n in SEGMENTATION_MODELS)
    assert not is_segmentation_model("resnet18") and not is_segmentation_model("simple_cnn")
    with pytest.raises(ConfigError, match="unknown model"):
        is_segmentation_model("nope")
    assert "time_steps" not in describe_models()["lstm_unet"]  # supplied, not an option
    classifier = create_model("simple_cnn", in_channels=12, num_classes=3, patch_size=16,
                              time_steps=3)  # ignored by models that do not take it
    assert classifier(torch.randn(2, 12, 16, 16)).shape == (2, 3)


@pytest.mark.parametrize("name", TEMPORAL)
def test_models_build_from_the_config_defaults(name: str) -> None:
    """Every ``train.model`` field a model takes, at its config default (as 'geofuse train'
    passes them: decoder_channels null = the model's own, input_adaptation, dropout ...)."""
    from geofuse.config import ModelConfig
    from geofuse.models.registry import model_options

    accepted = model_options(name)
    opts = {k: v for k, v in ModelConfig(name=name).model_dump(exclude={"name"}).items()
            if k in accepted}
    assert "decoder_channels" in opts and "encoder" in opts
    opts.update(decoder_channels=None, **({"lstm_hidden_dim": 16} if name == "lstm_unet" else {}))
    model = create_model(name, T * C, 2, 32, time_steps=T, band_names=NAMES, **opts)
    assert _run(model, torch.randn(1, T * C, 32, 32)).shape == (1, 1, 32, 32)


def test_resnet50_lstm_unet_has_tens_of_millions_of_parameters() -> None:
    model = LSTMUNet(in_channels=7 * 9, num_classes=2, patch_size=64, time_steps=7,
                     encoder="resnet50", lstm_hidden_dim=256)
    n = count_parameters(model)
    # measured 54.4M (encoder 23.5M, ConvLSTM 26.0M, decoder 4.9M); the experiment quotes ~70M
    assert 40e6 < n < 80e6, n
