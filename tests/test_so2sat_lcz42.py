"""So2Sat LCZ42 HDF5 reader: bands, chunked reading, memory bound, groups, errors, ready study.

Files are generated with exactly the real keys, shapes and dtypes (sen1 N x 32 x 32 x 8, sen2
N x 32 x 32 x 10 float64, label N x 17 one-hot float64).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from geofuse.cli import app
from geofuse.config import load_config
from geofuse.data.datasets import so2sat_lcz42 as lcz42
from geofuse.data.datasets.so2sat_lcz42 import (
    CLASS_NAMES,
    MODALITIES,
    load_so2sat_lcz42,
    write_synthetic_lcz42,
)
from geofuse.data.external_test import external_test_mask
from geofuse.data.patchset import SPLIT_CODES, PatchSet
from geofuse.errors import ConfigError

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "so2sat_lcz42.yaml"
N = 400  # classes 0, 3, 10, 16 (LCZ 1, 4, A, G) in runs of 50: 100 patches each


@pytest.fixture(scope="module")
def lcz_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_lcz42(tmp_path_factory.mktemp("lcz42") / "train.h5", N)


def _config(tmp_path: Path, root: Path, **dataset: Any) -> Path:
    """The ready config pointed at ``root``, with a work dir under tmp_path."""
    data = yaml.safe_load(CONFIG.read_text())
    data["workdir"] = str(tmp_path / "work")
    data["dataset"].update(root=str(root), block_size=10, **dataset)
    path = tmp_path / "lcz42.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _copy(src: Path, dst: Path, **replace: np.ndarray | None) -> Path:
    """``src`` rewritten with some keys replaced (None: dropped)."""
    with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
        for key in f:
            value = replace.get(key, f[key][()])
            if value is not None:
                g[key] = value
    return dst


def test_band_names_classes_and_modalities(lcz_file: Path, tmp_path: Path) -> None:
    assert MODALITIES["s1"] == ["VH_real", "VH_imag", "VV_real", "VV_imag", "VH_lee", "VV_lee",
                                "VHVV_cov_real", "VHVV_cov_imag"]
    assert MODALITIES["s2"] == ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]
    assert len(CLASS_NAMES) == 17 == len(set(CLASS_NAMES))
    assert CLASS_NAMES[0] == "compact_highrise" and CLASS_NAMES[9] == "heavy_industry"
    assert CLASS_NAMES[10] == "dense_trees" and CLASS_NAMES[16] == "water"
    p = load_so2sat_lcz42(lcz_file)
    assert p.x.shape == (N, 18, 32, 32) and p.x.dtype == np.float32
    assert p.modalities == MODALITIES and p.band_names == [*MODALITIES["s1"], *MODALITIES["s2"]]
    assert p.class_names == ["compact_highrise", "open_highrise", "dense_trees", "water"]
    assert np.bincount(p.y).tolist() == [100, 100, 100, 100]
    assert p.provenance["lcz_codes"] == {"compact_highrise": 1, "open_highrise": 4,
                                         "dense_trees": 11, "water": 17}
    cfg = load_config(_config(tmp_path, lcz_file))
    mods = {m.name: m for m in cfg.modalities}
    assert list(mods) == ["s1", "s2"] and mods["s2"].sensor == "sentinel2"
    assert mods["s1"].sensor == "sentinel1" and mods["s1"].files == [str(lcz_file)]


def test_chunked_read_equals_a_full_read(lcz_file: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    with h5py.File(lcz_file, "r") as f:  # the notebook's way: everything in memory
        full = np.concatenate([np.array(f["sen1"]), np.array(f["sen2"])], axis=-1)
        labels = np.array(f["label"]).argmax(axis=1)
    monkeypatch.setattr(lcz42, "chunk_patches", lambda *_: 7)
    p = load_so2sat_lcz42(lcz_file)
    np.testing.assert_array_equal(p.x, full.transpose(0, 3, 1, 2).astype(np.float32))
    codes = [CLASS_NAMES.index(c) for c in p.class_names]
    np.testing.assert_array_equal(np.array(codes)[p.y], labels)


def test_reads_are_chunked_within_the_memory_budget(lcz_file: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[tuple[str, int]] = []
    original = h5py.Dataset.__getitem__

    def spy(self: h5py.Dataset, key: Any) -> Any:
        out = original(self, key)
        reads.append((self.name, len(out)))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    chunk = lcz42.chunk_patches(64)
    assert chunk * 32 * 32 * 10 * 8 <= 64 * 2**20 / 6
    monkeypatch.setattr(lcz42, "chunk_patches", lambda *_: 30)  # 400 patches: 14 reads a key
    load_so2sat_lcz42(lcz_file, max_memory_mb=64)
    for key in ("/sen1", "/sen2"):
        sizes = [n for name, n in reads if name == key]
        assert len(sizes) == 14 and max(sizes) == 30 and sum(sizes) == N


def test_memory_budget_asks_for_max_patches(tmp_path: Path) -> None:
    big = write_synthetic_lcz42(tmp_path / "big.h5", 900)  # 900 x 73.7 kB > 64 MB budget
    with pytest.raises(ConfigError, match=r"dataset\.max_patches"):
        load_so2sat_lcz42(big, max_memory_mb=64)
    p = load_so2sat_lcz42(big, max_memory_mb=64, max_patches=200, seed=3)
    assert len(p) == 200 and p.provenance["patches_in_file"] == 900
    idx = p.coords[:, 0].astype(int)
    assert (np.diff(idx) > 0).all()  # file order
    counts = np.bincount(p.y)
    assert counts.min() >= 200 * 0.2 and counts.sum() == 200  # stratified (~50 each)
    again = load_so2sat_lcz42(big, max_memory_mb=64, max_patches=200, seed=3)
    np.testing.assert_array_equal(again.coords, p.coords)
    with h5py.File(big, "r") as f:
        np.testing.assert_array_equal(p.x[:, 8:], np.array(f["sen2"])[idx].transpose(0, 3, 1, 2)
                                      .astype(np.float32))


def test_groups_are_contiguous_index_blocks(lcz_file: Path) -> None:
    p = load_so2sat_lcz42(lcz_file, block_size=64)
    assert p.coords[:, 0].tolist() == list(range(N)) and not p.coords[:, 1].any()
    assert p.groups.tolist() == [f"block:{i // 64}" for i in range(N)]


def test_band_subset_and_centre_crop(lcz_file: Path, tmp_path: Path) -> None:
    bands = {"s1": ["VV_lee", "VH_lee"], "s2": ["B4", "B8"]}
    p = load_so2sat_lcz42(lcz_file, bands, patch_size=16)
    assert p.band_names == ["VV_lee", "VH_lee", "B4", "B8"] and p.x.shape == (N, 4, 16, 16)
    with h5py.File(lcz_file, "r") as f:
        np.testing.assert_array_equal(p.x[:, 0], f["sen1"][:, 8:24, 8:24, 5].astype(np.float32))
        np.testing.assert_array_equal(p.x[:, 3], f["sen2"][:, 8:24, 8:24, 6].astype(np.float32))
    cfg = load_config(_config(tmp_path, lcz_file, bands={"s2": ["B4", "B8"]}))
    assert [(m.name, m.bands) for m in cfg.modalities] == [("s1", MODALITIES["s1"]),
                                                           ("s2", ["B4", "B8"])]


def test_external_test_file(lcz_file: Path, tmp_path: Path) -> None:
    test = write_synthetic_lcz42(tmp_path / "testing.h5", 120, classes=(0, 3, 5), seed=1)
    result = CliRunner().invoke(app, ["extract", "-c", str(
        _config(tmp_path, lcz_file, test_root=str(test)))])
    assert result.exit_code == 0, result.output
    p = PatchSet.load(tmp_path / "work" / "patches.h5")
    mask = external_test_mask(p)
    assert mask is not None and mask.sum() == 100  # LCZ 6 (20 patches) is not in training
    assert (p.split[mask] == SPLIT_CODES["test"]).all()
    assert not (p.split[~mask] == SPLIT_CODES["test"]).any()
    assert all(g.startswith("testing.h5/block:") for g in p.groups[mask])
    assert p.provenance["external_test"]["dropped_classes"] == {"open_lowrise": 20}


def _bad(tmp: Path, src: Path, case: str) -> tuple[dict[str, Any], str]:
    """Dataset overrides of a bad input case and a fragment of its message."""
    with h5py.File(src, "r") as f:
        label = f["label"][()]
    if case == "missing":
        return {"root": str(tmp / "nope.h5")}, "does not exist"
    if case == "not_hdf5":
        (tmp / "text.h5").write_text("not an hdf5 file")
        return {"root": str(tmp / "text.h5")}, "not a readable HDF5 file"
    if case == "missing_key":
        root = _copy(src, tmp / "k.h5", sen1=None)
        return {"root": str(root)}, "lacks the dataset key(s) ['sen1']"
    if case == "sen2_9_channels":
        with h5py.File(src, "r") as f:
            sen2 = f["sen2"][..., :9]
        root = _copy(src, tmp / "s.h5", sen2=sen2)
        return {"root": str(root)}, "sen2 has shape (400, 32, 32, 9)"
    if case == "not_one_hot":
        label[17, 5] = 1.0
        return {"root": str(_copy(src, tmp / "l.h5", label=label))}, "label row 17 is not one-hot"
    if case == "test_other_shapes":
        with h5py.File(src, "r") as f:
            sen1 = f["sen1"][:, :16, :16]
        test = _copy(src, tmp / "t.h5", sen1=sen1)
        return {"test_root": str(test)}, "sen1 has shape (400, 16, 16, 8)"
    assert case == "unknown_band"
    return {"bands": {"s2": ["B4", "B13"]}}, "dataset.bands.s2 names band(s) ['B13']"


@pytest.mark.parametrize("case", ["missing", "not_hdf5", "missing_key", "sen2_9_channels",
                                  "not_one_hot", "test_other_shapes", "unknown_band"])
def test_bad_input_exits_2_with_one_line(case: str, lcz_file: Path, tmp_path: Path) -> None:
    overrides, fragment = _bad(tmp_path, lcz_file, case)
    root = Path(overrides.pop("root", lcz_file))
    result = CliRunner().invoke(app, ["extract", "-c", str(_config(tmp_path, root,
                                                                    **overrides))])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert fragment in lines[0], lines[0]
    if case != "unknown_band":
        named = overrides.get("test_root", root)
        assert str(named) in lines[0]
    else:
        assert "valid s2 bands" in lines[0] and "B8A" in lines[0]


def test_ready_config_validates_and_runs_one_epoch(lcz_file: Path, tmp_path: Path) -> None:
    cfg = load_config(CONFIG)
    assert cfg.dataset is not None and cfg.dataset.name == "so2sat_lcz42"
    assert cfg.ablation.sensors == [["s2"], ["s1"], ["s1", "s2"]]
    assert [m if isinstance(m, str) else m.label for m in cfg.ablation.models] == [
        "simple_cnn_stats", "late_fusion", "random_forest"]
    assert cfg.ablation.baseline == "s2/simple_cnn_stats" and cfg.train.loss.class_weights is None
    assert cfg.train.baseline.features == "pixels" and cfg.extract.patch_size == 32
    data = yaml.safe_load(_config(tmp_path, lcz_file).read_text())
    data["train"].update(epochs=1, batch_size=64)
    data["train"]["baseline"]["n_estimators"] = 10
    data["ablation"].update(folds=2, sensors=[["s2"], ["s1", "s2"]],
                            models=["late_fusion", "random_forest"], baseline=None)
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(data))
    runner = CliRunner()
    result = runner.invoke(app, ["config", "--check", str(path)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["extract", "-c", str(path)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["ablate", "-c", str(path), "--name", "smoke"])
    assert result.exit_code == 0, result.output
    study = tmp_path / "work" / "studies" / "smoke"
    cells = [json.loads(f.read_text()) for f in sorted((study / "cells").glob("*.json"))]
    assert len(cells) == 8  # 2 sensor sets x 2 models x 2 folds
    assert all(c["val"]["accuracy"] is not None for c in cells)
    assert (study / "report.md").is_file()


def test_benchmark_script_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(CONFIG.parents[1] / "benchmarks" / "lcz42_reader.py"), "--gb",
         "0.01", "--max-memory-mb", "64"], capture_output=True, text=True, timeout=300,
        check=True,
    ).stdout
    assert "geofuse stream / notebook" in out and "iter_chunks" in out
