"""Shared pieces of the study config: the strict base model and one sensor input."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Resampling = Literal[
    "nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average", "mode", "min", "max",
    "med", "q1", "q3", "sum", "rms",
]
#: Spectral / radar indices a modality can add as bands (see geofuse.data.indices).
IndexName = Literal["NDVI", "NDWI", "NDBI", "SAVI", "EVI", "NBR", "RVI", "VV_VH_RATIO"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


MaskPreset = Literal["s2_scl", "s2_qa60", "landsat_qa_pixel"]


class MaskConfig(_Model):
    """Quality flags of each acquisition (clouds, shadows, bad pixels), read onto the grid."""

    band: int | None = Field(
        None, ge=1, description="1-based band that holds the flags: in each data file (the band "
        "is then not listed in the modality's 'bands'), or in each mask file when 'files' is "
        "given (default there: 1).",
    )
    files: list[str] | None = Field(
        None, description="One mask raster per data file (files or glob patterns, relative to "
        "the config), paired with the data files in sorted order; any CRS and resolution "
        "(read with nearest neighbour).",
    )
    preset: MaskPreset | None = Field(
        None, description="s2_scl: Sentinel-2 scene classification 0, 1, 3, 8, 9, 10 (no data, "
        "defective, cloud shadow, clouds, cirrus); s2_qa60: QA60 bits 10 and 11 (clouds, "
        "cirrus); landsat_qa_pixel: Landsat Collection 2 QA_PIXEL bits 0-4 (fill, dilated "
        "cloud, cirrus, cloud, cloud shadow).",
    )
    invalid_values: list[int] = Field(
        [], description="Flag values that make a pixel invalid (added to the preset's)."
    )
    invalid_bits: list[int] = Field(
        [], description="Bits (0 = least significant) that make a pixel invalid when set "
        "(added to the preset's).",
    )
    threshold: float | None = Field(
        None, description="A probability band (s2cloudless CLP, a cloud probability): values "
        "at or above this are invalid (e.g. 50 for percent, 0.5 for fractions).",
    )
    buffer: int = Field(
        0, ge=0, le=100, description="Grow every flagged area by a disk of this many reference "
        "pixels (cloud edges and thin haze are rarely flagged). The flags are applied after "
        "the data are resampled, so with bilinear or cubic resampling or a coarser sensor give "
        "at least one or two source pixels' worth.",
    )

    @model_validator(mode="after")
    def _complete(self) -> MaskConfig:
        if self.band is None and not self.files:
            raise ValueError("mask needs 'band' (a band of each data file) or 'files' "
                             "(one mask raster per data file)")
        if (self.preset is None and not self.invalid_values and not self.invalid_bits
                and self.threshold is None):
            raise ValueError("mask needs a 'preset' (s2_scl, s2_qa60, landsat_qa_pixel), "
                             "'invalid_values', 'invalid_bits' or a 'threshold'")
        bad = [b for b in self.invalid_bits if not 0 <= b <= 31]
        if bad:
            raise ValueError(f"mask.invalid_bits {bad} must lie within 0-31")
        return self


class ModalityConfig(_Model):
    """One sensor input: its files, band names, scaling and how it is resampled."""

    name: str = Field(description="Short key used everywhere else, e.g. s2, dem, modis, s1, viirs.")
    files: list[str] = Field(
        min_length=1, description="Raster files or glob patterns, relative to the config file."
    )
    bands: list[str] = Field(min_length=1, description="One name per output band, in order.")
    combine: Literal["mosaic", "stack", "median", "mean", "max", "greenest"] = Field(
        "mosaic",
        description="mosaic: files are tiles with the same bands (first valid value wins); "
        "stack: files hold different bands, concatenated in file order; median, mean, max: "
        "files are acquisitions of the same bands, composited per pixel and band over the "
        "valid (unmasked) values; greenest: every band from the acquisition with the highest "
        "NDVI (needs red and near-infrared bands, e.g. B4 and B8).",
    )
    sensor: str | None = Field(
        None, description="Catalogue key (sentinel2, sentinel1, modis_ndvi, dem, viirs, landsat8 "
        "for Landsat 8/9, landsat57 for Landsat 4/5 TM and 7 ETM+) for default valid ranges "
        "and, for Landsat, the band numbers of indices and greenest composites."
    )
    scale: float = Field(1.0, description="Physical value = raw * scale + offset.")
    offset: float = 0.0
    nodata: float | None = Field(None, description="Raw nodata value; default: the file's own.")
    resampling: Resampling = Field(
        "bilinear", description="GDAL resampling onto the reference grid (nearest for classes)."
    )
    valid_range: tuple[float, float] | None = Field(
        None, description="Expected physical range; values outside are counted by the QC report."
    )
    mask: MaskConfig | None = Field(
        None, description="Cloud and quality mask of each file: flagged pixels are nodata "
        "before mosaicking or compositing.",
    )
    indices: list[IndexName] = Field(
        [], description="Indices computed at extract time from the physical values, as the "
        "companion modality <name>_idx with bands <name>_<INDEX> (e.g. s2_idx: s2_NDVI): "
        "NDVI, NDWI, NDBI, SAVI, EVI, NBR (optical), RVI, VV_VH_RATIO (Sentinel-1, linear "
        "power; dB is converted). Bands are found by name (B4/B04/*_R, B8/B08, B11, B12, "
        "VV/VH, VV_lee/VH_lee); with sensor: landsat8 by Landsat 8/9 numbers (B4, B5, B6, B7 "
        "or SR_B4 ...), with sensor: landsat57 by Landsat 4/5/7 numbers (B3, B4, B5, B7)."
    )

    @model_validator(mode="after")
    def _name_is_key(self) -> ModalityConfig:
        if not self.name.isidentifier():
            raise ValueError(f"modality name {self.name!r} must be a simple key such as 's2'")
        if len(set(self.indices)) != len(self.indices):
            raise ValueError(f"modality {self.name!r}: indices repeat a name: {self.indices}")
        if self.combine == "greenest":
            from geofuse.raster.composite import greenest_bands

            if greenest_bands(self.bands, self.sensor) is None:
                hint = {"landsat8": "B4 and B5 (sensor landsat8)",
                        "landsat57": "B3 and B4 (sensor landsat57)"}.get(
                    self.sensor or "", "B4 and B8 (or B04/B08; Landsat: set sensor: landsat8 "
                    "(8/9, B4 and B5) or landsat57 (4/5/7, B3 and B4))")
                raise ValueError(
                    f"modality {self.name!r}: combine: greenest needs a red and a near-infrared "
                    f"band to compute NDVI, but 'bands' are {self.bands}; name them {hint}, or "
                    "use combine: median"
                )
        return self

    @property
    def composite(self) -> bool:
        """Whether the files are acquisitions composited per pixel."""
        return self.combine in ("median", "mean", "max", "greenest")

    @property
    def index_modality(self) -> str:
        """Name of the companion modality holding this modality's indices."""
        return f"{self.name}_idx"

    @property
    def index_bands(self) -> list[str]:
        """Band names of this modality's indices (``<name>_<INDEX>``)."""
        return [f"{self.name}_{ix}" for ix in self.indices]
