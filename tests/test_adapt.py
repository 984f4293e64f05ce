"""Input adaptation of pretrained first convolutions, and loading local pretrained weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from timm.models import adapt_input_conv

from geofuse.errors import ConfigError, DataNotFoundError
from geofuse.models.adapt import band_aware_weight, cycle_weight, rgb_indices
from geofuse.models.backbones import BackboneClassifier, load_state_dict_file

BANDS = ["B2", "B3", "B4", "B8", "B11", "elevation"]  # blue, green, red, NIR, SWIR, DEM


@pytest.fixture(scope="module")
def rgb_net() -> torch.nn.Module:
    """A resnet18 'pretrained' RGB network: random weights, BN statistics made non-trivial."""
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture(scope="module")
def weights(rgb_net: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "resnet18_rgb.pth"
    torch.save(rgb_net.state_dict(), path)  # includes a 1000-class fc head
    return path


def _rgb_features(rgb_net: torch.nn.Module, rgb: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return rgb_net.forward_head(rgb_net.forward_features(rgb), pre_logits=True)


# -- weight functions -----------------------------------------------------------------------
def test_cycle_weight_is_timms_rule() -> None:
    w = torch.randn(8, 3, 7, 7)
    out = cycle_weight(w, 5)
    assert out.shape == (8, 5, 7, 7)
    torch.testing.assert_close(out[:, 3], w[:, 0] * 3 / 5)
    torch.testing.assert_close(out[:, 4], w[:, 1] * 3 / 5)
    torch.testing.assert_close(out, adapt_input_conv(5, w.clone()))
    torch.testing.assert_close(cycle_weight(w, 3), w)
    torch.testing.assert_close(cycle_weight(w, 1), w.sum(dim=1, keepdim=True))


def test_band_aware_weight_puts_rgb_kernels_on_rgb_bands() -> None:
    w = torch.randn(16, 3, 3, 3)
    out = band_aware_weight(w, BANDS, generator=torch.Generator().manual_seed(0))
    assert out.shape == (16, 6, 3, 3)
    torch.testing.assert_close(out[:, 2], w[:, 0])  # B4 = red
    torch.testing.assert_close(out[:, 1], w[:, 1])  # B3 = green
    torch.testing.assert_close(out[:, 0], w[:, 2])  # B2 = blue
    others = out[:, 3:]
    assert 0 < others.std() < 0.3 * w.std()  # small random start, not zero, not RGB copies


def test_rgb_indices_default_prefixed_and_explicit() -> None:
    assert rgb_indices(BANDS) == [2, 1, 0]
    assert rgb_indices(["s2_B2", "s2_B3", "s2_B4", "dem"]) == [2, 1, 0]
    assert rgb_indices(["r", "g", "b", "nir"], ["r", "g", "b"]) == [0, 1, 2]


@pytest.mark.parametrize(
    ("bands", "rgb", "match"),
    [(["B8", "B11"], None, "'B4'"), (["r", "g", "b"], ["r", "g"], "exactly 3"),
     (["r", "g", "b"], ["r", "r", "g"], "'r'")],
)
def test_rgb_indices_errors_name_the_band(
    bands: list[str], rgb: list[str] | None, match: str
) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        rgb_indices(bands, rgb)
    assert "rgb_bands" in str(err.value)


# -- adapted models behave like the RGB network ---------------------------------------------
def test_band_aware_model_matches_rgb_network_on_rgb_input(
    rgb_net: torch.nn.Module, weights: Path
) -> None:
    model = BackboneClassifier(6, 4, 32, backbone="resnet18", band_names=BANDS,
                               pretrained_path=weights, input_adaptation="band_aware").eval()
    rgb = torch.randn(2, 3, 32, 32)
    x = torch.zeros(2, 6, 32, 32)
    x[:, 2], x[:, 1], x[:, 0] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    with torch.no_grad():
        got = model.features(x)
    torch.testing.assert_close(got, _rgb_features(rgb_net, rgb), rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # the extra bands are live: they change the features
        x[:, 3] = 1.0
        assert not torch.allclose(model.features(x), got, atol=1e-4)


def test_cycle_on_three_bands_is_the_rgb_network(rgb_net: torch.nn.Module, weights: Path) -> None:
    model = BackboneClassifier(3, 4, 32, backbone="resnet18", pretrained_path=weights).eval()
    rgb = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.features(rgb), _rgb_features(rgb_net, rgb))


def test_cycle_on_six_bands_scales_the_rgb_response(
    rgb_net: torch.nn.Module, weights: Path
) -> None:
    model = BackboneClassifier(6, 4, 32, backbone="resnet18", pretrained_path=weights).eval()
    rgb = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # R,G,B,R,G,B scaled by 3/6 sums back to the RGB conv response
        got = model.features(torch.cat([rgb, rgb], dim=1))
    torch.testing.assert_close(got, _rgb_features(rgb_net, rgb), rtol=1e-4, atol=1e-5)


def test_reduce_keeps_the_rgb_network_behind_a_1x1_conv(
    rgb_net: torch.nn.Module, weights: Path
) -> None:
    model = BackboneClassifier(6, 4, 32, backbone="resnet18", pretrained_path=weights,
                               input_adaptation="reduce").eval()
    assert model.adapter.weight.shape == (3, 6, 1, 1)
    assert model.backbone.conv1.weight.shape[1] == 3
    with torch.no_grad():  # make the adapter select B4, B3, B2: the RGB network must remain
        model.adapter.weight.zero_()
        model.adapter.bias.zero_()
        for out_c, band in enumerate((2, 1, 0)):
            model.adapter.weight[out_c, band] = 1.0
    x = torch.randn(2, 6, 32, 32)
    with torch.no_grad():
        got = model.features(x)
    torch.testing.assert_close(got, _rgb_features(rgb_net, x[:, [2, 1, 0]]))


# -- loading --------------------------------------------------------------------------------
def test_wrapped_and_prefixed_state_dicts_load(rgb_net: torch.nn.Module, tmp_path: Path) -> None:
    wrapped = {"state_dict": {f"model.{k}": v for k, v in rgb_net.state_dict().items()},
               "epoch": 3}
    torch.save(wrapped, tmp_path / "ckpt.pth")
    state = load_state_dict_file(tmp_path / "ckpt.pth")
    assert "conv1.weight" in state and "fc.weight" in state
    model = BackboneClassifier(3, 5, 32, pretrained_path=tmp_path / "ckpt.pth").eval()
    torch.testing.assert_close(model.backbone.conv1.weight, rgb_net.conv1.weight)
    assert model.head[1].weight.shape == (5, 512)  # the 1000-class fc was dropped


def test_missing_weights_file_is_data_not_found(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match=r"nope\.pth") as err:
        BackboneClassifier(3, 4, 32, pretrained_path=tmp_path / "nope.pth")
    assert "pretrained_path" in str(err.value)


def test_incompatible_weights_name_keys(weights: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="do not fit timm resnet50") as err:
        BackboneClassifier(3, 4, 32, backbone="resnet50", pretrained_path=weights)
    assert "conv3" in str(err.value) or "shape mismatch" in str(err.value)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a torch state dict"):
        BackboneClassifier(3, 4, 32, pretrained_path=tmp_path / "junk.pth")


def test_band_aware_needs_band_names(weights: Path) -> None:
    with pytest.raises(ConfigError, match="band_names"):
        BackboneClassifier(6, 4, 32, pretrained_path=weights, input_adaptation="band_aware")
    with pytest.raises(ConfigError, match="input_adaptation"):
        BackboneClassifier(6, 4, 32, input_adaptation="mean")  # type: ignore[arg-type]
