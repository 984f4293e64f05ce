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


class ModalityConfig(_Model):
    """One sensor input: its files, band names, scaling and how it is resampled."""

    name: str = Field(description="Short key used everywhere else, e.g. s2, dem, modis, s1, viirs.")
    files: list[str] = Field(
        min_length=1, description="Raster files or glob patterns, relative to the config file."
    )
    bands: list[str] = Field(min_length=1, description="One name per output band, in order.")
    combine: Literal["mosaic", "stack"] = Field(
        "mosaic",
        description="mosaic: files are tiles with the same bands; stack: files hold different "
        "bands, concatenated in file order.",
    )
    sensor: str | None = Field(
        None, description="Catalogue key (sentinel2, sentinel1, modis_ndvi, dem, viirs, landsat8) "
        "for default valid ranges."
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
    indices: list[IndexName] = Field(
        [], description="Indices computed at extract time from the physical values, as the "
        "companion modality <name>_idx with bands <name>_<INDEX> (e.g. s2_idx: s2_NDVI): "
        "NDVI, NDWI, NDBI, SAVI, EVI, NBR (optical), RVI, VV_VH_RATIO (Sentinel-1, linear "
        "power; dB is converted). Bands are found by name (B4/B04/*_R, B8/B08, B11, B12, "
        "VV/VH, VV_lee/VH_lee)."
    )

    @model_validator(mode="after")
    def _name_is_key(self) -> ModalityConfig:
        if not self.name.isidentifier():
            raise ValueError(f"modality name {self.name!r} must be a simple key such as 's2'")
        if len(set(self.indices)) != len(self.indices):
            raise ValueError(f"modality {self.name!r}: indices repeat a name: {self.indices}")
        return self

    @property
    def index_modality(self) -> str:
        """Name of the companion modality holding this modality's indices."""
        return f"{self.name}_idx"

    @property
    def index_bands(self) -> list[str]:
        """Band names of this modality's indices (``<name>_<INDEX>``)."""
        return [f"{self.name}_{ix}" for ix in self.indices]
