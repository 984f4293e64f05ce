"""Quality masks of optical acquisitions: which pixels are clouds, shadows or bad data.

A modality's ``mask`` names where each file's quality flags are (a band of the file itself, or
one mask raster per file) and which flags make a pixel invalid: class codes (Sentinel-2 SCL),
bits (Sentinel-2 QA60, Landsat Collection 2 QA_PIXEL) or a preset of either. Flags are read
with nearest-neighbour resampling onto the reference grid, and ``buffer`` grows every flagged
area by a disk of that many reference pixels (cloud edges are brighter than the ground but
rarely flagged). The buffer reads a halo around each window, so the result does not depend on
``prepare.block_size``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window
from scipy.ndimage import binary_dilation

from geofuse.errors import RasterError
from geofuse.raster.io import Grid, RasterInfo, read_warped


@dataclass(frozen=True)
class MaskRule:
    """Flags that make a pixel invalid: any of ``values``, any of ``bits`` set, or a value of
    at least ``threshold`` (a cloud probability band)."""

    values: tuple[int, ...] = ()
    bits: tuple[int, ...] = ()
    threshold: float | None = None

    def invalid(self, flags: np.ndarray) -> np.ndarray:
        """Boolean array: pixels whose flag matches the rule (NaN = not covered: valid)."""
        known = np.isfinite(flags)
        out = np.zeros(flags.shape, bool)
        if self.threshold is not None:
            out |= np.where(known, flags, -np.inf) >= self.threshold
        if not self.values and not self.bits:
            return out
        codes = np.where(known, flags, 0).astype(np.int64)
        if self.values:
            out |= np.isin(codes, self.values)
        if self.bits:
            out |= (codes & sum(1 << b for b in self.bits)) != 0
        return out & known


#: Ready-made rules; ``invalid_values`` and ``invalid_bits`` of the config add to them.
PRESETS: dict[str, MaskRule] = {
    # Scene classification (L2A): no data, saturated or defective, cloud shadow, cloud of
    # medium and high probability, thin cirrus.
    "s2_scl": MaskRule(values=(0, 1, 3, 8, 9, 10)),
    # QA60 (L1C and L2A before 2022): bit 10 opaque clouds, bit 11 cirrus.
    "s2_qa60": MaskRule(bits=(10, 11)),
    # Landsat Collection 2 QA_PIXEL: fill, dilated cloud, cirrus, cloud, cloud shadow.
    "landsat_qa_pixel": MaskRule(bits=(0, 1, 2, 3, 4)),
}


def rule_of(preset: str | None, values: list[int], bits: list[int],
            threshold: float | None = None) -> MaskRule:
    """The preset's rule extended by explicit ``values``, ``bits`` and ``threshold``."""
    base = PRESETS[preset] if preset else MaskRule()
    return MaskRule(
        tuple(sorted(set(base.values) | set(values))), tuple(sorted(set(base.bits) | set(bits))),
        threshold,
    )


@dataclass(frozen=True)
class MaskSource:
    """Where one data file's flags are: band ``band`` (1-based) of ``info``."""

    info: RasterInfo
    band: int


def disk(radius: int) -> np.ndarray:
    """Boolean disk of ``radius`` pixels (the structuring element of the buffer)."""
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return (x * x + y * y) <= radius * radius


def invalid_pixels(
    source: MaskSource, rule: MaskRule, grid: Grid, window: Window, buffer: int
) -> np.ndarray:
    """Boolean ``(h, w)`` of ``window``: pixels the flags mark invalid, grown by ``buffer``."""
    if buffer == 0:
        return rule.invalid(_flags(source, rule, grid, window))
    halo = _with_halo(grid, window, buffer)
    flags = _flags(source, rule, grid, halo)
    grown = binary_dilation(rule.invalid(flags), structure=disk(buffer))
    r0 = int(window.row_off - halo.row_off)
    c0 = int(window.col_off - halo.col_off)
    return grown[r0 : r0 + int(window.height), c0 : c0 + int(window.width)]


def _flags(source: MaskSource, rule: MaskRule, grid: Grid, window: Window) -> np.ndarray:
    """The flag band on ``window`` (float64: 32-bit flags stay exact); flag values and bits
    need whole numbers, so a fractional band (a probability) raises with the fix."""
    flags = read_warped(source.info, grid, window, "nearest", None, [source.band],
                        dtype="float64")[0]
    if rule.values or rule.bits:
        finite = flags[np.isfinite(flags)]
        odd = finite[finite != np.round(finite)]
        if odd.size:
            raise RasterError(
                f"mask band {source.band} of {str(source.info.path)!r} holds fractional value "
                f"{float(odd[0]):g}, but invalid_values and invalid_bits (and presets) compare "
                "whole-number flags; for a probability band set mask.threshold (e.g. 0.5) "
                "instead, or give the flag band"
            )
    return flags


def _with_halo(grid: Grid, window: Window, pad: int) -> Window:
    """``window`` grown by ``pad`` pixels on every side, clipped to the grid."""
    col0 = max(0, int(window.col_off) - pad)
    row0 = max(0, int(window.row_off) - pad)
    col1 = min(grid.width, int(window.col_off + window.width) + pad)
    row1 = min(grid.height, int(window.row_off + window.height) + pad)
    return Window(col0, row0, col1 - col0, row1 - row0)
