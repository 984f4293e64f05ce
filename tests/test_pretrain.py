"""SimCLR pretraining (geofuse pretrain): loss, views, the weight file and loading it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from factories import make_config, make_patchset
from geofuse.cli import app
from geofuse.config import dump_config
from geofuse.errors import ConfigError, DataNotFoundError
from geofuse.models.backbones import METADATA_KEY
from geofuse.models.simple_cnn import SimpleCNN
from geofuse.training.ssl import PretrainResult, SimCLRViews, nt_xent_loss, pretrain
from geofuse.training.train import build_task

runner = CliRunner()
Pretrained = tuple[Path, PretrainResult]


def _hand_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """The SimCLR paper's formula, anchor by anchor."""
    z = [F.normalize(v, dim=0) for v in torch.cat([z1, z2])]
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denom = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / t) / denom)
    return total / (2 * n)


def test_nt_xent_matches_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    assert float(nt_xent_loss(z1, z2, 0.5)) == pytest.approx(_hand_nt_xent(z1, z2, 0.5),
                                                             rel=1e-5)


def test_nt_xent_lower_for_aligned_views() -> None:
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(16, 8, generator=g)
    aligned = nt_xent_loss(z1, z1 + 0.05 * torch.randn(16, 8, generator=g))
    unrelated = nt_xent_loss(z1, torch.randn(16, 8, generator=g))
    assert float(aligned) < float(unrelated)
    with pytest.raises(ValueError):
        nt_xent_loss(z1[:1], z1[:1])


def test_two_views_differ_with_same_shape() -> None:
    x = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    views = SimCLRViews(generator=torch.Generator().manual_seed(3))
    a, b = views(x), views(x)
    assert a.shape == b.shape == x.shape
    assert not torch.allclose(a, b)
    same = SimCLRViews(generator=torch.Generator().manual_seed(3))(x)
    assert torch.equal(a, same)  # seeded: reproducible


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Pretrained:
    """A 2-epoch pretraining on a small PatchSet, written by the default route."""
    root = tmp_path_factory.mktemp("pre")
    patches = make_patchset(200, 8, seed=0)
    cfg = make_config(root, epochs=1)
    cfg.pretrain.batch_size = 64
    patches.save(cfg.patches_path)
    return root, pretrain(cfg, epochs=2, progress=False)


def test_pretraining_lowers_the_loss_and_writes_the_file(pretrained: Pretrained) -> None:
    root, result = pretrained
    assert result.path == root / "work" / "pretrained" / "simple_cnn_simclr.pt"
    assert len(result.losses) == 2 and result.losses[1] < result.losses[0]
    assert result.splits == ["train", "val"] and result.n_patches == 180  # no test split
    assert result.config_line == ("train.model.pretrained_path: "
                                  "work/pretrained/simple_cnn_simclr.pt")
    obj = torch.load(result.path, weights_only=True)
    meta = obj[METADATA_KEY]
    assert meta["labels_used"] is False and meta["method"] == "simclr"
    assert len(meta["band_mean"]) == len(meta["band_names"]) == 6
    assert all(k.startswith("features.") for k in obj["state_dict"])


def test_same_seed_same_weights(pretrained: Pretrained, tmp_path: Path) -> None:
    root, result = pretrained
    cfg = make_config(root, epochs=1)
    cfg.pretrain.batch_size = 64
    again = pretrain(cfg, epochs=2, out=tmp_path / "again.pt", progress=False)
    assert again.losses == result.losses
    a = torch.load(result.path, weights_only=True)["state_dict"]
    b = torch.load(again.path, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_starts_from_the_encoder_weights(pretrained: Pretrained) -> None:
    root, result = pretrained
    cfg = make_config(root, model={"name": "simple_cnn", "pool": "avg",
                                   "pretrained_path": "work/pretrained/simple_cnn_simclr.pt"})
    task = build_task(cfg, make_patchset(200, 8, seed=0))
    saved = torch.load(result.path, weights_only=True)["state_dict"]
    assert torch.equal(task.model.features[0][0].weight, saved["features.0.0.weight"])
    assert torch.equal(task.model.features[1][1].running_var, saved["features.1.1.running_var"])


def test_include_test_and_unsupported_model(tmp_path: Path) -> None:
    patches = make_patchset(40, 8, seed=1)
    cfg = make_config(tmp_path, model={"name": "late_fusion"})
    with pytest.raises(ConfigError, match="late_fusion"):
        pretrain(cfg, epochs=1, patchset=patches, progress=False)
    cfg = make_config(tmp_path)
    cfg.pretrain.batch_size = 16
    result = pretrain(cfg, epochs=1, patchset=patches, include_test=True, progress=False)
    assert result.splits == ["train", "val", "test"] and result.n_patches == 40


def test_loading_errors_are_specific(pretrained: Pretrained, tmp_path: Path) -> None:
    _, result = pretrained
    with pytest.raises(DataNotFoundError, match="does not exist"):
        SimpleCNN(6, 4, 8, pretrained_path=tmp_path / "none.pt")
    with pytest.raises(ConfigError, match=r"6 input bands .* has 4 \(expected \(32, 4, 3, 3\)\)"):
        SimpleCNN(4, 4, 8, pretrained_path=result.path)
    with pytest.raises(ConfigError, match="were made for bands"):
        SimpleCNN(6, 4, 8, pretrained_path=result.path, band_names=list("abcdef"))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match=r"features\.\*"):
        SimpleCNN(6, 4, 8, pretrained_path=tmp_path / "other.pt")


def _write_study(root: Path, **train: object) -> Path:
    cfg = make_config(root, **train)
    path = root / "study.yaml"
    dump_config(cfg, path)
    return path


def _one_line_error(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error:")
    return lines[0]


def test_cli_pretrain_then_errors(tmp_path: Path) -> None:
    config = _write_study(tmp_path, epochs=1)
    patches = make_patchset(80, 8, seed=2)
    patches.save(tmp_path / "work" / "patches.h5")
    out = tmp_path / "w.pt"
    res = runner.invoke(app, ["pretrain", "-c", str(config), "--epochs", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.is_file() and "pretrained weights:" in res.output
    assert "train.model.pretrained_path: w.pt" in res.output

    missing = _write_study(tmp_path, epochs=1, model={"pretrained_path": "nope.pt"})
    res = runner.invoke(app, ["train", "-c", str(missing)])
    assert res.exit_code == 2
    assert "nope.pt" in _one_line_error(res.output)

    fewer = _write_study(tmp_path, epochs=1, modalities=["s2"],
                         model={"pretrained_path": "w.pt"})
    res = runner.invoke(app, ["train", "-c", str(fewer)])
    assert res.exit_code == 2
    line = _one_line_error(res.output)
    # caught by the preflight, before a run directory is written
    assert "w.pt" in line and "was pretrained on bands" in line and "s2_nir']" in line
    assert not (tmp_path / "work" / "runs").exists() or not any(
        (tmp_path / "work" / "runs").iterdir())


def _write_stack(path: Path, bands: list[str], size: int = 64, nodata_cols: int = 0) -> None:
    """A float32 stack with named bands; the first ``nodata_cols`` columns are nodata."""
    import rasterio
    from rasterio.transform import from_origin

    data = np.random.default_rng(5).normal(1500, 800, (len(bands), size, size)).astype("f4")
    data[:, :, :nodata_cols] = np.nan
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=len(bands),
                       dtype="float32", crs="EPSG:32633", nodata=np.nan,
                       transform=from_origin(500000, 6000000, 10, 10)) as dst:
        dst.write(data)
        dst.descriptions = tuple(bands)


def test_pretraining_also_learns_from_unlabelled_windows_of_the_stack(tmp_path: Path) -> None:
    from geofuse.training.ssl.stack_windows import stack_windows

    patches = make_patchset(80, 8, seed=1)
    bands = list(patches.band_names)
    # the stack stores the bands in another order; its left half is nodata
    _write_stack(tmp_path / "stack.tif", bands[::-1], nodata_cols=32)
    windows = stack_windows(tmp_path / "stack.tif", bands, 8, 50, np.random.default_rng(0))
    assert windows.shape == (50, len(bands), 8, 8)
    assert (np.isfinite(windows).mean(axis=(1, 2, 3)) >= 0.9).all()  # nodata windows skipped
    with pytest.raises(ConfigError, match=r"no band \['s2_NDVI'\]"):
        stack_windows(tmp_path / "stack.tif", [*bands, "s2_NDVI"], 8, 5,
                      np.random.default_rng(0))

    cfg = make_config(tmp_path, epochs=1)
    cfg.pretrain.batch_size = 64
    cfg.pretrain.stack_patches = 120
    patches.save(cfg.patches_path)
    with pytest.raises(DataNotFoundError, match="run 'geofuse prepare"):
        pretrain(cfg, epochs=1, progress=False)
    _write_stack(cfg.stack_path, bands[::-1], nodata_cols=32)
    result = pretrain(cfg, epochs=1, progress=False, out=tmp_path / "w.pt")
    assert result.n_stack_windows == 120
    meta = torch.load(result.path, weights_only=False)[METADATA_KEY]
    assert meta["stack_windows"] == 120 and meta["stack"] == str(cfg.stack_path.resolve())
    assert meta["n_patches"] == result.n_patches == int((patches.split != 2).sum())
    dump_config(cfg, tmp_path / "study.yaml")
    res = runner.invoke(app, ["pretrain", "-c", str(tmp_path / "study.yaml"), "--epochs", "1",
                              "--out", str(tmp_path / "w2.pt")])
    assert res.exit_code == 0, res.output
    assert "+ 120 unlabelled windows of the stack" in " ".join(res.output.split())
