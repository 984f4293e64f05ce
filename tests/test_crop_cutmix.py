"""Random resized crops and CutMix: geometry shared across modalities, losses blended by area."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from factories import make_config, make_patchset
from geofuse.config import TrainConfig
from geofuse.data.datamodule import PatchDataModule
from geofuse.data.transforms import RandomResizedCrop, resize_window
from geofuse.training._batch_mix import cutmix_images
from geofuse.training.train import build_task


def test_resized_crop_keeps_the_shape_and_crops_every_raster_at_the_same_place() -> None:
    torch.manual_seed(0)
    ramp = torch.arange(16.0).repeat(16, 1)  # column index as value
    sample = {"image": torch.stack([ramp, ramp * 2]), "mask": ramp.long(), "label": 3}
    crop = RandomResizedCrop(0.3)
    for _ in range(20):
        out = crop(sample)
        assert out["image"].shape == (2, 16, 16) and out["mask"].shape == (16, 16)
        assert out["mask"].dtype == torch.long and out["label"] == 3
        torch.testing.assert_close(out["image"][1], out["image"][0] * 2)
        # the mask (nearest) lies inside the image's (bilinear) column range
        assert out["mask"].min() >= out["image"][0].min().floor() - 1
        assert out["mask"].max() <= out["image"][0].max().ceil() + 1


def test_resized_crop_window_respects_the_scale_range() -> None:
    torch.manual_seed(1)
    crop = RandomResizedCrop(0.5)
    areas = []
    for _ in range(200):
        row, col, rows, cols = crop.window(32, 32)
        assert row >= 0 and row + rows <= 32 and col >= 0 and col + cols <= 32
        areas.append(rows * cols / 1024)
    assert min(areas) >= 0.4 and max(areas) <= 1.0
    assert max(areas) - min(areas) > 0.3  # it really varies


def test_resize_window_of_the_whole_patch_is_the_identity() -> None:
    x = torch.randn(3, 8, 8)
    torch.testing.assert_close(resize_window(x, (0, 0, 8, 8), (8, 8)), x)


def test_crop_applies_to_training_patches_only(tmp_path: Path) -> None:
    patches = make_patchset(n=40)
    dm = PatchDataModule(patches, batch_size=8, augment=False, crop=0.4)
    plain = PatchDataModule(patches, batch_size=8, augment=False)
    torch.manual_seed(0)
    assert not torch.equal(dm.dataset("train")[0]["image"], plain.dataset("train")[0]["image"])
    torch.testing.assert_close(dm.dataset("val")[0]["image"], plain.dataset("val")[0]["image"])


def test_cutmix_pastes_one_box_and_returns_the_kept_share() -> None:
    torch.manual_seed(2)
    image = torch.stack([torch.full((2, 10, 10), float(i)) for i in range(4)])
    perm = torch.tensor([1, 2, 3, 0])
    mixed, kept = cutmix_images(image, perm, 1.0)
    for i in range(4):
        own = (mixed[i] == i).float().mean().item()
        partner = (mixed[i] == int(perm[i])).float().mean().item()
        assert own == pytest.approx(kept) and own + partner == pytest.approx(1.0)
        torch.testing.assert_close(mixed[i, 0], mixed[i, 1])  # every band the same box


def test_cutmix_blends_the_loss_by_area_on_training_batches(tmp_path: Path) -> None:
    patches = make_patchset(n=16)
    task = build_task(make_config(tmp_path, cutmix=1.0, model={"hidden": 8}), patches).eval()
    batch = {"image": torch.from_numpy((patches.x[:8] - 1500) / 800).nan_to_num(),
             "label": torch.from_numpy(patches.y[:8])}
    torch.manual_seed(5)
    got = task._shared_step(batch, "train")
    torch.manual_seed(5)
    perm = torch.randperm(8)
    mixed, kept = cutmix_images(batch["image"], perm, 1.0)
    logits = task(mixed)
    want = kept * F.cross_entropy(logits, batch["label"]) + (1 - kept) * F.cross_entropy(
        logits, batch["label"][perm])
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(task._shared_step(batch, "val"),
                               F.cross_entropy(task(batch["image"]), batch["label"]))


def test_crop_and_cutmix_settings_are_validated() -> None:
    assert TrainConfig.model_validate({"crop": 0.5, "cutmix": 1.0}).crop == 0.5
    with pytest.raises(ValueError, match="crop"):
        TrainConfig.model_validate({"crop": 1.5})
    with pytest.raises(ValueError, match="cutmix"):
        TrainConfig.model_validate({"cutmix": -1})
