"""PatchSet with pixel masks and a time axis: validation, subsets and the HDF5 round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geofuse.data.patchset import MASK_IGNORE, PatchSet, temporal_band_names


def _temporal(n: int = 6, steps: int = 3, bands: tuple[str, ...] = ("B04", "B08")) -> PatchSet:
    rng = np.random.default_rng(0)
    stamps = [f"{2018 + t}" for t in range(steps)]
    names = temporal_band_names(list(bands), stamps)
    masks = rng.integers(0, 2, (n, 8, 8)).astype(np.uint8)
    masks[0, 0, 0] = MASK_IGNORE
    return PatchSet(
        x=rng.normal(size=(n, len(names), 8, 8)), y=np.arange(n) % 3, band_names=names,
        modalities={"s2": names}, class_names=["low", "moderate", "high"],
        groups=[f"tile:{i}" for i in range(n)], coords=np.zeros((n, 2)),
        masks=masks, mask_names=["no_change", "land_take"], timestamps=stamps,
    )


def test_time_series_views_and_round_trip(tmp_path: Path) -> None:
    ps = _temporal()
    assert ps.segmentation and ps.time_steps == 3 and ps.step_bands == ["B04", "B08"]
    assert ps.band_names[:3] == ["B04@2018", "B08@2018", "B04@2019"]
    back = PatchSet.load(ps.save(tmp_path / "p.h5"))
    np.testing.assert_array_equal(back.masks, ps.masks)
    assert back.timestamps == ps.timestamps and back.mask_names == ps.mask_names
    sub = back.subset(np.array([1, 4]))
    np.testing.assert_array_equal(sub.masks, ps.masks[[1, 4]])
    assert sub.time_steps == 3


def test_single_date_sets_have_one_step() -> None:
    ps = _temporal()._replace(timestamps=None, band_names=["a", "b", "c", "d", "e", "f"],
                              modalities={"s2": ["a", "b", "c", "d", "e", "f"]})
    assert ps.time_steps == 1 and ps.step_bands == ["a", "b", "c", "d", "e", "f"]


def test_inconsistent_masks_and_dates_are_refused() -> None:
    ps = _temporal()
    with pytest.raises(ValueError, match="masks must be"):
        ps._replace(masks=ps.masks[:, :4])
    with pytest.raises(ValueError, match="one name each"):
        ps._replace(mask_names=["only"])
    with pytest.raises(ValueError, match="time steps"):
        ps._replace(timestamps=["2018", "2019", "2020", "2021"])
    with pytest.raises(ValueError, match="band@date"):
        ps._replace(timestamps=["2018", "2020", "2019"])
