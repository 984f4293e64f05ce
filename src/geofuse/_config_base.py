"""Shared pieces of the study config: the strict base model and one sensor input."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Resampling = Literal[
    "nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average", "mode", "min", "max",
    "med", "q1", "q3", "sum", "rms",
]


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

    @model_validator(mode="after")
    def _name_is_key(self) -> ModalityConfig:
        if not self.name.isidentifier():
            raise ValueError(f"modality name {self.name!r} must be a simple key such as 's2'")
        return self
