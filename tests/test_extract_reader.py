"""StackPatchReader: exact-size patches, in-memory and windowed modes agree with raw reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from geofuse.data.stack_reader import StackPatchReader, centre_limits, window_start
from geofuse.errors import DataNotFoundError, RasterError

C, H, W = 4, 50, 70
TRANSFORM = Affine(20.0, 0.0, 500_000.0, 0.0, -20.0, 4_000_000.0)


@pytest.fixture(scope="module")
def array() -> np.ndarray:
    data = np.random.default_rng(0).normal(size=(C, H, W)).astype(np.float32)
    data[2, 5:9, 10:20] = np.nan
    return data


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, array: np.ndarray) -> Path:
    path = tmp_path_factory.mktemp("reader") / "stack.tif"
    with rasterio.open(path, "w", driver="GTiff", width=W, height=H, count=C, dtype="float32",
                       crs="EPSG:32633", transform=TRANSFORM, nodata=np.nan, tiled=True,
                       blockxsize=16, blockysize=16) as dst:
        dst.write(array)
        dst.descriptions = ("a", "b", "c", "d")
    return path


def raw_patches(array: np.ndarray, rows: np.ndarray, cols: np.ndarray, p: int) -> np.ndarray:
    return np.stack([array[:, r - p // 2:r - p // 2 + p, c - p // 2:c - p // 2 + p]
                     for r, c in zip(rows, cols, strict=True)])


@pytest.mark.parametrize("patch_size", [1, 2, 3, 8, 9, 50])
def test_from_array_matches_raw_slicing(array: np.ndarray, patch_size: int) -> None:
    reader = StackPatchReader.from_array(array)
    rows, cols = reader.random_centres(300, patch_size, np.random.default_rng(patch_size))
    out = reader.read_patches(rows, cols, patch_size)
    assert out.shape == (300, C, patch_size, patch_size) and out.dtype == np.float32
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, raw_patches(array, rows, cols, patch_size))


def test_corner_centres_follow_the_convention(array: np.ndarray) -> None:
    reader = StackPatchReader.from_array(array)
    for p in (4, 5):
        (rlo, rhi), (clo, chi) = centre_limits(H, p), centre_limits(W, p)
        out = reader.read_patches(np.array([rlo, rhi]), np.array([clo, chi]), p)
        np.testing.assert_array_equal(out[0], array[:, :p, :p])  # window starts at 0
        np.testing.assert_array_equal(out[1], array[:, H - p:, W - p:])  # ends at the edge
        assert window_start(rlo, p) == 0 and window_start(rhi, p) + p == H


@pytest.mark.parametrize("patch_size", [4, 7])
def test_file_modes_agree_with_window_reads(stack: Path, array: np.ndarray,
                                            patch_size: int) -> None:
    rng = np.random.default_rng(1)
    with StackPatchReader(stack) as mem, \
            StackPatchReader(stack, max_memory_bytes=0, block_size=16) as win:
        assert mem.in_memory and not win.in_memory
        assert mem.band_names == ["a", "b", "c", "d"] and mem.crs == "EPSG:32633"
        assert mem.transform == TRANSFORM
        rows, cols = mem.random_centres(500, patch_size, rng)
        a = mem.read_patches(rows, cols, patch_size)
        b = win.read_patches(rows, cols, patch_size)
    np.testing.assert_array_equal(a, b)  # NaN positions equal too
    np.testing.assert_array_equal(a, raw_patches(array, rows, cols, patch_size))
    h = patch_size // 2
    with rasterio.open(stack) as src:
        for i in range(0, 500, 50):
            window = Window(cols[i] - h, rows[i] - h, patch_size, patch_size)
            np.testing.assert_array_equal(a[i], src.read(window=window))


def test_finite_nodata_becomes_nan(tmp_path: Path) -> None:
    data = np.arange(2 * 10 * 12, dtype=np.float32).reshape(2, 10, 12)
    data[1, 4, 5] = -9999
    path = tmp_path / "nd.tif"
    with rasterio.open(path, "w", driver="GTiff", width=12, height=10, count=2,
                       dtype="float32", crs="EPSG:32633", transform=TRANSFORM,
                       nodata=-9999) as dst:
        dst.write(data)
    for limit in (10**9, 0):
        with StackPatchReader(path, max_memory_bytes=limit) as reader:
            out = reader.read_patches(np.array([4]), np.array([5]), 3)
        assert np.isnan(out[0, 1, 1, 1]) and np.isnan(out).sum() == 1


def test_centres_too_near_the_border_raise(array: np.ndarray) -> None:
    reader = StackPatchReader.from_array(array)
    with pytest.raises(ValueError, match=r"rows 4\.\.46 and cols 4\.\.66"):
        reader.read_patches(np.array([10, 3]), np.array([10, 10]), 8)
    with pytest.raises(ValueError, match="smaller than one"):
        reader.random_centres(5, 60, np.random.default_rng(0))


def test_sample_random_and_coords(array: np.ndarray) -> None:
    reader = StackPatchReader.from_array(array, transform=TRANSFORM)
    out = reader.sample_random(64, 8, np.random.default_rng(0))
    assert out.shape == (64, C, 8, 8)
    xy = reader.pixel_centre_coords(np.array([0, 2]), np.array([0, 3]))
    np.testing.assert_allclose(xy, [[500_010.0, 3_999_990.0], [500_070.0, 3_999_950.0]])


def test_missing_and_unreadable_stack(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="geofuse prepare"):
        StackPatchReader(tmp_path / "none.tif")
    bad = tmp_path / "bad.tif"
    bad.write_text("not a tiff")
    with pytest.raises(RasterError, match=r"cannot read fused stack .*bad\.tif"):
        StackPatchReader(bad)


def test_closed_reader_refuses_reads(stack: Path) -> None:
    reader = StackPatchReader(stack, max_memory_bytes=0)
    reader.close()
    with pytest.raises(RuntimeError, match="closed"):
        reader.read_patches(np.array([10]), np.array([10]), 4)
