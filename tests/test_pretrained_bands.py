"""Multispectral pretrained weights matched by band name, and vision-transformer backbones."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from typer.testing import CliRunner

from factories import make_config, make_patchset
from geofuse.cli import app
from geofuse.config import dump_config, load_config
from geofuse.errors import ConfigError
from geofuse.models.adapt import (
    PRETRAINED_BAND_SETS,
    match_bands,
    matched_weight,
    resolve_pretrained_bands,
)
from geofuse.models.backbones import METADATA_KEY, BackboneClassifier
from geofuse.models.freeze import frozen_parameter_fraction
from geofuse.models.registry import create_model
from geofuse.training.train import train_model

L1C = list(PRETRAINED_BAND_SETS["sentinel2_l1c"])
#: blue, green, red, NIR, SWIR of a Sentinel-2 modality, then a DEM band no file has
BANDS = ["s2_B02", "s2_B03", "s2_B04", "s2_B08", "s2_B11", "dem_elevation"]
#: where each of BANDS[:5] sits among the 13 SSL4EO-S12 bands
IN_L1C = [1, 2, 3, 7, 11]


def _save(net: torch.nn.Module, path: Path) -> Path:
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def resnet13(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """A 'pretrained' 13-band resnet18 (SSL4EO-S12 layout) and its file."""
    torch.manual_seed(3)
    net = timm.create_model("resnet18", pretrained=False, num_classes=19, in_chans=13).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net, _save(net, tmp_path_factory.mktemp("w") / "resnet18_s2_all.pth")


def _features(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.forward_head(net.forward_features(x), pre_logits=True)


def _as_l1c(x: torch.Tensor) -> torch.Tensor:
    """The 13-band image holding ``x``'s five Sentinel-2 bands, the others zero."""
    full = torch.zeros(x.shape[0], 13, *x.shape[2:])
    for src, dst in enumerate(IN_L1C):
        full[:, dst] = x[:, src]
    return full


def _answers_as_file(model: torch.nn.Module, net: torch.nn.Module, side: int, atol: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Check that ``model`` on BANDS with the DEM at zero gives ``net``'s features on the same
    image in the file's 13 bands; returns the image and the features."""
    x = torch.randn(2, 6, side, side)
    x[:, 5] = 0
    with torch.no_grad():
        got = model.features(x)
    torch.testing.assert_close(got, _features(net, _as_l1c(x)), rtol=1e-4, atol=atol)
    return x, got


# -- matching --------------------------------------------------------------------------------
def test_band_names_match_without_prefix_date_case_or_zero_padding() -> None:
    assert match_bands(BANDS, L1C) == [*IN_L1C, None]
    assert match_bands(["b8a@2020-06", "S2_b8", "s2_idx_NDVI"], ["B8", "B8A", "NDVI"]) == [1, 0, 2]
    with pytest.raises(ConfigError, match=r"\['s2_B4', 'l8_B4'\] all match.*'B4'.*prefix"):
        match_bands(["s2_B4", "l8_B4"], ["B4", "B3"])
    assert match_bands(["s2_B4", "l8_B4"], ["s2_B4", "l8_B4"]) == [0, 1]  # named with prefix
    # the dates of a band share its kernel; a file recorded with dates matches them exactly
    assert match_bands(["B02@2018", "B04@2018", "B02@2019"], ["B2", "B4"]) == [0, 1, 0]
    assert match_bands(["B02@2018", "B02@2019"], ["B02@2018", "B02@2019"]) == [0, 1]
    assert match_bands(["s2_B08A"], L1C) == [8]


def test_presets_and_bad_band_lists() -> None:
    assert resolve_pretrained_bands("sentinel2_l1c") == L1C and len(L1C) == 13
    assert "B10" not in resolve_pretrained_bands("sentinel2_l2a")
    assert resolve_pretrained_bands(None) is None
    with pytest.raises(ConfigError, match="unknown pretrained_bands preset 'sentinel2'"):
        resolve_pretrained_bands("sentinel2")
    with pytest.raises(ConfigError, match=r"repeated: \['B04', 'B4'\]"):
        resolve_pretrained_bands(["B4", "B04", "B3"])


def test_matched_weight_copies_named_kernels_and_starts_the_rest_small() -> None:
    w = torch.randn(8, 13, 3, 3)
    new = matched_weight(w, BANDS, L1C, generator=torch.Generator().manual_seed(0))
    assert new.shape == (8, 6, 3, 3)
    for dst, src in enumerate(IN_L1C):
        torch.testing.assert_close(new[:, dst], w[:, src])
    assert 0 < new[:, 5].std() < 0.3 * w.std()
    with pytest.raises(ConfigError, match=r"names 3 bands.*takes 13"):
        matched_weight(w, BANDS, ["B2", "B3", "B4"])
    with pytest.warns(UserWarning, match="starts from scratch"):
        matched_weight(w, ["dem_elevation"], L1C)
    dated = matched_weight(w, ["B04@2018", "B04@2019", "B08@2019"], L1C)
    torch.testing.assert_close(dated[:, 0], w[:, 3] / 2)  # two dates of B4: half each
    torch.testing.assert_close(dated[:, 2], w[:, 7])


# -- CNN backbones ---------------------------------------------------------------------------
def test_13_band_resnet_responds_as_the_file_on_the_matched_bands(resnet13) -> None:
    net, path = resnet13
    model = BackboneClassifier(6, 4, 32, backbone="resnet18", band_names=BANDS,
                               pretrained_path=path, pretrained_bands="sentinel2_l1c").eval()
    x, got = _answers_as_file(model, net, 32, atol=1e-5)
    with torch.no_grad():  # the DEM band is live
        x[:, 5] = 1.0
        assert not torch.allclose(model.features(x), got, atol=1e-4)


def test_multispectral_file_without_band_names_is_refused(resnet13) -> None:
    _, path = resnet13
    with pytest.raises(ConfigError, match=r"first layer for 13 bands.*pretrained_bands.*"
                                          r"sentinel2_l1c"):
        BackboneClassifier(6, 4, 32, band_names=BANDS, pretrained_path=path)
    with pytest.raises(ConfigError, match="reduce feeds a 3-band"):
        BackboneClassifier(6, 4, 32, band_names=BANDS, pretrained_path=path,
                           pretrained_bands=L1C, input_adaptation="reduce")
    with pytest.raises(ConfigError, match="names 12 bands"):
        BackboneClassifier(6, 4, 32, band_names=BANDS, pretrained_path=path,
                           pretrained_bands="sentinel2_l2a")


def test_rgb_weights_in_another_order_are_matched_by_name(tmp_path: Path) -> None:
    torch.manual_seed(0)
    bgr = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    path = _save(bgr, tmp_path / "bgr.pth")
    model = BackboneClassifier(6, 4, 32, band_names=BANDS, pretrained_path=path,
                               pretrained_bands=["B2", "B3", "B4"])
    conv = model.backbone.conv1.weight.detach()
    torch.testing.assert_close(conv[:, :3], bgr.conv1.weight.detach())


def test_pretrain_file_of_all_bands_fine_tunes_a_subset(resnet13, tmp_path: Path) -> None:
    """A ``geofuse pretrain`` file records its bands: a run on fewer bands matches them."""
    net, _ = resnet13
    made_for = [*BANDS[:5], "s2_B12", "s2_B05", "s2_B06", "s2_B07", "s2_B8A", "s2_B01",
                "s2_B09", "s2_B10"]
    path = tmp_path / "pretrained.pt"
    torch.save({"state_dict": net.state_dict(), METADATA_KEY: {"band_names": made_for}}, path)
    model = BackboneClassifier(2, 4, 32, band_names=["s2_B04", "s2_B08"], pretrained_path=path)
    conv = model.backbone.conv1.weight.detach()
    torch.testing.assert_close(conv[:, 0], net.conv1.weight.detach()[:, 2])
    torch.testing.assert_close(conv[:, 1], net.conv1.weight.detach()[:, 3])


# -- vision transformers ---------------------------------------------------------------------
@pytest.mark.parametrize(("name", "dim"), [("vit_small_patch16_224", 384),
                                           ("vit_base_patch16_224", 768)])
def test_larger_vits_build_for_small_patches(name: str, dim: int) -> None:
    model = create_model(name, in_channels=6, num_classes=3, patch_size=32).eval()
    assert model.feature_dim == dim and model.backbone.patch_embed.proj.kernel_size == (8, 8)
    with torch.no_grad():
        assert model(torch.randn(2, 6, 32, 32)).shape == (2, 3)


def test_vit_token_size_defaults_and_errors() -> None:
    sizes = {p: create_model("vit_tiny_patch16_224", in_channels=2, num_classes=2,
                             patch_size=p).backbone.patch_embed.proj.kernel_size[0]
             for p in (8, 10, 32, 64, 128)}
    assert sizes == {8: 2, 10: 2, 32: 8, 64: 16, 128: 16}
    with pytest.raises(ConfigError, match="vit_patch_size=6 does not divide the 32 px"):
        create_model("vit_tiny_patch16_224", in_channels=2, num_classes=2, patch_size=32,
                     vit_patch_size=6)
    # a CNN in the same ablation grid ignores the ViT's token size
    cnn = create_model("resnet18", in_channels=2, num_classes=2, patch_size=32, vit_patch_size=8)
    assert cnn.backbone.conv1.in_channels == 2


def test_vit_at_the_files_size_responds_as_the_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10,
                            in_chans=13, img_size=64).eval()
    path = _save(net, tmp_path / "vit13_64.pth")
    model = BackboneClassifier(6, 4, 64, backbone="vit_tiny_patch16_224", band_names=BANDS,
                               pretrained_path=path, pretrained_bands="sentinel2_l1c").eval()
    _answers_as_file(model, net, 64, atol=1e-4)


def test_vit_224_16_weights_resample_to_a_small_patch(tmp_path: Path) -> None:
    """ViT-S/16-style weights (14 x 14 tokens of 16 px) on 32 px patches with 8 px tokens:
    position embedding interpolated to 4 x 4, kernels resized, the blocks loaded as they are."""
    from timm.layers import resample_abs_pos_embed

    torch.manual_seed(2)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10,
                            in_chans=13).eval()
    path = _save(net, tmp_path / "vit13_224.pth")
    model = BackboneClassifier(6, 4, 32, backbone="vit_tiny_patch16_224", band_names=BANDS,
                               pretrained_path=path, pretrained_bands=L1C).eval()
    vit = model.backbone
    assert vit.patch_embed.proj.weight.shape == (192, 6, 8, 8)
    want = resample_abs_pos_embed(net.pos_embed.detach(), new_size=(4, 4), num_prefix_tokens=1)
    torch.testing.assert_close(vit.pos_embed.detach(), want)
    torch.testing.assert_close(vit.blocks[5].mlp.fc1.weight, net.blocks[5].mlp.fc1.weight)
    # a constant image: the resized kernel sums what the 16 px kernel summed, per band
    old = net.patch_embed.proj.weight.detach()[:, IN_L1C].sum(dim=(2, 3))
    new = vit.patch_embed.proj.weight.detach()[:, :5].sum(dim=(2, 3))
    assert torch.corrcoef(torch.stack([old.ravel(), new.ravel()]))[0, 1] > 0.99


def test_freezing_a_fraction_of_a_vit_freezes_its_first_layers_only() -> None:
    model = create_model("vit_tiny_patch16_224", in_channels=4, num_classes=2, patch_size=32,
                         freeze_fraction=0.1)
    vit = model.backbone
    assert not vit.pos_embed.requires_grad and not vit.patch_embed.proj.weight.requires_grad
    assert vit.blocks[-1].mlp.fc2.weight.requires_grad and vit.norm.weight.requires_grad
    assert 0 < frozen_parameter_fraction(model) < 0.2
    staged = create_model("vit_tiny_patch16_224", in_channels=4, num_classes=2, patch_size=32,
                          freeze_stages=["patch_embed", "blocks.0"])
    assert staged.stage_names()[:2] == ["patch_embed", "blocks.0"]
    assert staged.stage_names()[-1] == "norm"
    assert not staged.backbone.blocks[0].attn.qkv.weight.requires_grad
    assert staged.backbone.blocks[1].attn.qkv.weight.requires_grad
    # the patch_embed stage holds the class token and position embedding (as freeze_fraction)
    assert not staged.backbone.pos_embed.requires_grad
    assert not staged.backbone.cls_token.requires_grad
    assert set(staged.state_dict()) == set(model.state_dict())


# -- segmentation encoders -------------------------------------------------------------------
def test_unet_encoders_take_13_band_weights_by_name(resnet13) -> None:
    net, path = resnet13
    names = [f"{b}@{year}" for year in (2018, 2019) for b in BANDS[:5]]
    early = create_model("unet_early", in_channels=10, num_classes=2, patch_size=32,
                         time_steps=2, band_names=names, pretrained_path=str(path),
                         pretrained_bands="sentinel2_l1c", decoder_channels=(16, 8, 8, 8, 8))
    conv = early.net.unet.encoder.conv1.weight.detach()
    src = net.conv1.weight.detach()
    for t in range(2):  # every date gets the matched kernels, divided by the dates
        for dst, i in enumerate(IN_L1C):
            torch.testing.assert_close(conv[:, t * 5 + dst], src[:, i] / 2)
    late_bands = ["s2_B04", "s2_B08", "dem_elevation"]
    with pytest.warns(UserWarning, match=r"\['dem_elevation'\] is among.*starts from scratch"):
        late = create_model("unet_late", in_channels=3, num_classes=2, patch_size=32,
                            modalities={"s2": 2, "dem": 1}, band_names=late_bands,
                            pretrained_path=str(path), pretrained_bands=L1C,
                            decoder_channels=(16, 8, 8, 8, 8))
    s2 = late.streams["s2"].unet.encoder.conv1.weight.detach()
    torch.testing.assert_close(s2[:, 1], src[:, 7])
    torch.testing.assert_close(late.streams["dem"].unet.encoder.layer1[0].conv1.weight,
                               net.layer1[0].conv1.weight)  # the body is pretrained too


# -- from the config -------------------------------------------------------------------------
def test_train_from_13_band_weights_via_config(resnet13, tmp_path: Path) -> None:
    net, _ = resnet13
    (tmp_path / "weights").mkdir()
    torch.save({"state_dict": net.state_dict()}, tmp_path / "weights" / "ssl4eo.pth")
    patches = make_patchset(n=32, patch_size=32, seed=2)
    s2 = ["s2_B02", "s2_B03", "s2_B04", "s2_B08"]  # the factory's s2_b, s2_g, s2_r, s2_nir
    patches.band_names = [*s2, *patches.modalities["dem"]]
    patches.modalities = {"s2": s2, "dem": patches.modalities["dem"]}
    cfg = make_config(tmp_path, batch_size=8, model={
        "name": "resnet18", "pretrained_path": "weights/ssl4eo.pth",
        "pretrained_bands": "sentinel2_l1c", "freeze_stages": ["conv1"]})
    cfg.modalities[0].bands = [b.removeprefix("s2_") for b in s2]
    dump_config(cfg, tmp_path / "study.yaml")
    cfg = load_config(tmp_path / "study.yaml")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = train_model(cfg, progress=False, epochs=1, patchset=patches)
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    conv1 = ckpt["state_dict"]["model.backbone.conv1.weight"]
    assert conv1.shape == (64, 6, 7, 7)
    torch.testing.assert_close(conv1[:, 3], net.conv1.weight[:, 7])  # frozen B8 kernel kept
    assert np.isfinite(conv1.numpy()).all()


def test_config_check_refuses_a_band_list_that_matches_nothing(resnet13, tmp_path: Path) -> None:
    _, path = resnet13
    patches = make_patchset(n=40, patch_size=32, seed=1)
    (tmp_path / "work").mkdir()
    patches.save(tmp_path / "work" / "patches.h5")
    cfg = make_config(tmp_path, model={"name": "resnet18", "pretrained_path": str(path),
                                       "pretrained_bands": "sentinel2_l1c"})
    dump_config(cfg, tmp_path / "study.yaml")
    res = CliRunner().invoke(app, ["config", "--check", str(tmp_path / "study.yaml")])
    assert res.exit_code == 2
    assert "train.model.pretrained_bands" in res.output and "none of the run's bands" in res.output
    data = (tmp_path / "study.yaml").read_text().replace("sentinel2_l1c", "sentinel2")
    (tmp_path / "bad.yaml").write_text(data)
    res = CliRunner().invoke(app, ["config", "--check", str(tmp_path / "bad.yaml")])
    assert res.exit_code == 2 and "unknown pretrained_bands preset 'sentinel2'" in res.output


def test_pretrain_a_vit_then_fine_tune_it_on_one_sensor(tmp_path: Path) -> None:
    """`geofuse pretrain` on every band, then `train` on the Sentinel-2 bands alone: the
    recorded bands are matched by name (a simple_cnn file is refused instead: test_pretrain)."""
    model = {"name": "vit_tiny_patch16_224", "dropout": 0.1}
    cfg = make_config(tmp_path, epochs=1, batch_size=16, model=model)
    dump_config(cfg, tmp_path / "study.yaml")
    make_patchset(48, 16, seed=2).save(tmp_path / "work" / "patches.h5")
    runner = CliRunner()
    res = runner.invoke(app, ["pretrain", "-c", str(tmp_path / "study.yaml"), "--epochs", "1",
                              "--out", str(tmp_path / "vit.pt")])
    assert res.exit_code == 0, res.output
    cfg = make_config(tmp_path, epochs=1, batch_size=16, modalities=["s2"],
                      model={**model, "pretrained_path": "vit.pt"})
    dump_config(cfg, tmp_path / "s2.yaml")
    res = runner.invoke(app, ["train", "-c", str(tmp_path / "s2.yaml"), "--run-name", "s2"])
    assert res.exit_code == 0, res.output
    pretrained = torch.load(tmp_path / "vit.pt", weights_only=True)["state_dict"]
    ckpt = torch.load(tmp_path / "work" / "runs" / "s2" / "checkpoints" / "last.ckpt",
                      weights_only=True)["state_dict"]
    assert ckpt["model.backbone.patch_embed.proj.weight"].shape[1] == 4  # s2 bands only
    for key in ("pos_embed", "blocks.3.attn.qkv.weight"):  # the body came from the file
        pair = torch.stack([ckpt[f"model.backbone.{key}"].ravel(),
                            pretrained[f"backbone.{key}"].ravel()])
        assert torch.corrcoef(pair)[0, 1] > 0.9  # one epoch from it (a fresh start: about 0)


def test_a_vit_run_maps_a_scene_as_it_classifies_patches(tmp_path: Path) -> None:
    """`geofuse predict` with a ViT run (channels-last batches of sliding windows) gives the
    classes the run gives each patch alone."""
    from geofuse.data.normalize import BandStats, normalize
    from geofuse.data.stack_reader import StackPatchReader
    from geofuse.evaluation.evaluate import load_task
    from test_predict import PATCH, read, train_run, write_stack

    stack = write_stack(tmp_path / "stack.tif")
    run = train_run(tmp_path, stack, name="vit",
                    model={"name": "vit_tiny_patch16_224", "dropout": 0.1})
    res = CliRunner().invoke(app, ["predict", str(run), "--stack", str(stack), "-o",
                                   str(tmp_path / "map"), "--stride", "3"])
    assert res.exit_code == 0, res.output
    classes = read(tmp_path / "map" / "classes.tif", 1)
    rows, cols = np.nonzero(classes != 255)
    pick = np.random.default_rng(0).choice(len(rows), 60, replace=False)
    rows, cols = rows[pick], cols[pick]
    with StackPatchReader(stack) as reader:  # each pixel takes the class of its cell's centre
        x = reader.read_patches(rows // 3 * 3 + 1, cols // 3 * 3 + 1, PATCH)
    whole = ~np.isnan(x).any(axis=(1, 2, 3))
    task, _ = load_task(run / "checkpoints" / "best.ckpt")
    stats = BandStats.load(run / "normalization.json")
    with torch.inference_mode():
        alone = [int(task(torch.from_numpy(normalize(x[i:i + 1], stats))).argmax())
                 for i in np.flatnonzero(whole)]
    assert whole.sum() > 30 and (classes[rows, cols][whole] == np.array(alone)).all()


def _checked(tmp_path: Path, patches, modalities: list[dict], **model) -> list[str]:
    """Preflight problems (``train``) of a config over ``patches`` with ``model``."""
    from geofuse.config import parse_config
    from geofuse.preflight import check_config

    (tmp_path / "work").mkdir(exist_ok=True)
    patches.save(tmp_path / "work" / "patches.h5")
    cfg = parse_config({"name": "t", "workdir": "work", "modalities": modalities,
                        "train": {"model": model}}, tmp_path)
    return [f"{p.key}: {p.reason}" for p in check_config(cfg, "train")]


def test_preflight_takes_time_series_and_per_modality_streams(resnet13, tmp_path: Path) -> None:
    """Dates of a band, and two modalities of the same bands in unet_late, are not ambiguous."""
    from geofuse.data.patchset import PatchSet

    _, path = resnet13
    rng = np.random.default_rng(0)
    names = [f"{b}@{y}" for y in (2018, 2019) for b in ("B02", "B04")]
    series = PatchSet(x=rng.random((8, 4, 16, 16), dtype=np.float32), y=np.arange(8) % 2,
                      band_names=names, modalities={"s2": names}, class_names=["a", "b"],
                      groups=[f"tile:{i}" for i in range(8)], coords=np.zeros((8, 2)),
                      split=np.uint8([0, 0, 0, 0, 0, 1, 1, 2]),
                      masks=np.zeros((8, 16, 16), dtype=np.uint8), mask_names=["a", "b"],
                      timestamps=["2018", "2019"])
    s2 = [{"name": "s2", "files": ["s2.tif"], "bands": ["B02", "B04"]}]
    assert _checked(tmp_path, series, s2, name="unet_early", pretrained_path=str(path),
                    pretrained_bands="sentinel2_l1c") == []
    bands = ["spring_B04", "spring_B08", "summer_B04", "summer_B08"]
    two = [{"name": "spring", "files": ["a.tif"], "bands": bands[:2]},
           {"name": "summer", "files": ["b.tif"], "bands": bands[2:]}]
    late = series._replace(x=series.x, band_names=bands,
                           modalities={"spring": bands[:2], "summer": bands[2:]},
                           timestamps=None)
    assert _checked(tmp_path, late, two, name="unet_late", pretrained_path=str(path),
                    pretrained_bands="sentinel2_l1c") == []
    problems = _checked(tmp_path, late, two, name="unet_early", pretrained_path=str(path),
                        pretrained_bands="sentinel2_l1c")  # one encoder: ambiguous
    assert len(problems) == 1 and "all match" in problems[0]


def test_preflight_refuses_sentinel2_presets_on_landsat_bands(resnet13, tmp_path: Path) -> None:
    from geofuse.data.patchset import PatchSet

    _, path = resnet13
    bands = ["l8_B2", "l8_B3", "l8_B4", "l8_B5"]
    patches = PatchSet(x=np.random.default_rng(0).random((8, 4, 16, 16), dtype=np.float32),
                       y=np.arange(8) % 2, band_names=bands, modalities={"l8": bands},
                       class_names=["a", "b"], groups=[f"polygon:{i}" for i in range(8)],
                       coords=np.zeros((8, 2)), split=np.uint8([0, 0, 0, 0, 0, 1, 1, 2]))
    l8 = [{"name": "l8", "files": ["l8.tif"], "bands": ["B2", "B3", "B4", "B5"],
           "sensor": "landsat8"}]
    problems = _checked(tmp_path, patches, l8, name="resnet18", pretrained_path=str(path),
                        pretrained_bands="sentinel2_l1c")
    assert len(problems) == 1 and "modality 'l8' (sensor landsat8)" in problems[0]
    assert "modality prefix" in problems[0]


def test_a_pretrain_file_on_other_bands_is_refused_for_segmentation(resnet13,
                                                                    tmp_path: Path) -> None:
    """Only the timm backbones match a pretrain file's recorded bands by name."""
    net, _ = resnet13
    file = tmp_path / "w.pt"
    torch.save({"state_dict": net.state_dict(),
                METADATA_KEY: {"band_names": [f"s2_B{i}" for i in range(13)]}}, file)
    patches = make_patchset(n=8, patch_size=16)
    patches = patches._replace(masks=np.zeros((8, 16, 16), dtype=np.uint8),
                               mask_names=list(patches.class_names))
    mods = [{"name": "s2", "files": ["s2.tif"], "bands": ["b", "g", "r", "nir"]},
            {"name": "dem", "files": ["dem.tif"], "bands": ["elev", "slope"]}]
    problems = _checked(tmp_path, patches, mods, name="unet_single", pretrained_path=str(file))
    assert len(problems) == 1 and "was pretrained on bands" in problems[0]
