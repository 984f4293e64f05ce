"""SimpleCNN shapes and size, and the model registry contract."""

from __future__ import annotations

import pytest
import torch

from geofuse.errors import ConfigError
from geofuse.models.registry import (
    MODELS,
    count_parameters,
    create_model,
    is_segmentation_model,
    list_models,
)
from geofuse.models.simple_cnn import SimpleCNN


def test_simple_cnn_matches_week4_reference_size() -> None:
    model = SimpleCNN(in_channels=6, num_classes=5, patch_size=8)
    # conv1 1760 + bn1 64 + conv2 18496 + bn2 128 + fc1 (64*2*2*128+128) 32896 + fc2 645
    assert count_parameters(model) == 53_989
    assert model(torch.randn(3, 6, 8, 8)).shape == (3, 5)


@pytest.mark.parametrize(
    ("bands", "patch", "classes"), [(1, 4, 2), (6, 5, 5), (8, 8, 3), (13, 15, 10), (3, 32, 4)]
)
def test_simple_cnn_any_band_count_and_patch_size(bands: int, patch: int, classes: int) -> None:
    model = create_model("simple_cnn", in_channels=bands, num_classes=classes, patch_size=patch)
    model.eval()
    out = model(torch.randn(2, bands, patch, patch))
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()


def test_simple_cnn_options_change_the_head() -> None:
    model = create_model("simple_cnn", 4, 3, 8, hidden=16, dropout=0.1)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [lin.out_features for lin in linears] == [16, 3]
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [0.1]


def test_simple_cnn_rejects_tiny_patches() -> None:
    with pytest.raises(ConfigError, match="patch_size=3"):
        SimpleCNN(in_channels=6, num_classes=5, patch_size=3)


def test_unknown_model_name_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as err:
        create_model("resnet9000", in_channels=6, num_classes=5, patch_size=8)
    message = err.value.one_line()
    assert "resnet9000" in message
    assert "simple_cnn" in message
    assert "train.model.name" in message


def test_unknown_model_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="depth"):
        create_model("simple_cnn", in_channels=6, num_classes=5, patch_size=8, depth=3)


def test_every_registered_model_honours_the_contract() -> None:
    assert list_models() == sorted(MODELS)
    for name in list_models():
        seg = is_segmentation_model(name)  # dense: logits per pixel; siamese needs >= 2 dates
        dates = 7 if seg and name != "unet_late" else 1  # unet_late: the modalities of a date
        series = ({"modalities": {"may": 3, "jul": 3, "dem": 1}, "time_series": ["may", "jul"]}
                  if name == "temporal_cnn" else {})  # the dates it reads are modalities
        model = create_model(name, in_channels=7, num_classes=4, patch_size=16,
                             time_steps=dates, **series)
        model.eval()
        want = (2, 4, 16, 16) if seg else (2, 4)
        assert model(torch.randn(2, 7, 16, 16)).shape == want, name


def test_pixel_net_classifies_the_set_of_pixel_spectra_whatever_their_places() -> None:
    from geofuse.models.pixel_net import PixelNet

    torch.manual_seed(0)
    net = PixelNet(in_channels=13, num_classes=10, patch_size=64).eval()
    x = torch.randn(3, 13, 16, 16)
    out = net(x)
    assert out.shape == (3, 10)
    shuffled = x.flatten(2)[:, :, torch.randperm(256)].reshape(3, 13, 16, 16)
    assert torch.allclose(net(shuffled), out, atol=1e-5)  # shapes do not matter
    assert not torch.allclose(net(x * 2), out)  # spectra do
    assert net(torch.randn(2, 13, 7, 7)).shape == (2, 10)  # any patch size
    with pytest.raises(ConfigError, match="pixel_net needs"):
        PixelNet(in_channels=13, num_classes=0, patch_size=8)
    textured = PixelNet(in_channels=13, num_classes=10, patch_size=16, kernel_size=3).eval()
    assert textured(x).shape == (3, 10)
    assert not torch.allclose(textured(shuffled), textured(x), atol=1e-3)  # neighbours count
    with pytest.raises(ConfigError, match="kernel_size=2"):
        PixelNet(in_channels=13, num_classes=10, patch_size=16, kernel_size=2)
