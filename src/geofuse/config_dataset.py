"""The ``dataset`` section: read a published dataset layout instead of prepare + extract."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from geofuse._config_base import ModalityConfig, _Model

Season = Literal["spring", "summer", "autumn", "winter"]
_SENSORS = {"dem": ("dem", "dem_elevation"), "viirs": ("viirs", "viirs_radiance")}


class DatasetConfig(_Model):
    """A dataset read straight into a PatchSet by ``geofuse extract`` (no prepare step)."""

    name: Literal["so2sat_lcz", "so2sat_pop"] = Field(
        description="so2sat_lcz: Local Climate Zone patches sampled from a So2Sat-POP city's lcz "
        "label raster; so2sat_pop: one sample per 1 km cell, population class as target, "
        "*_features.csv as tabular input."
    )
    city_dir: str = Field(description="City folder (e.g. .../so2sat_pop/gdansk), relative to "
                          "the config file.")
    test_city_dir: str | None = Field(
        None, description="A second city folder used as the external test set (train on one "
        "city, test on another); its patches are never used for training or model selection."
    )
    seasons: list[Season] = Field(
        ["spring", "summer", "autumn", "winter"], min_length=1,
        description="Sentinel-2 seasons, as modalities s2_<season> (bands <season>_R/_G/_B).",
    )
    layers: list[Literal["dem", "viirs"]] = Field(
        [], description="Extra layers: dem (dem_elevation, m), viirs (viirs_radiance)."
    )
    stride: int | None = Field(
        None, ge=1, description="so2sat_lcz: spacing of patch centres in pixels (default "
        "extract.patch_size: no overlap)."
    )
    min_cells_per_class: int = Field(
        1, ge=1, description="so2sat_lcz: classes found in fewer cells are dropped (grouped "
        "k-fold needs each class in at least k cells)."
    )
    target: Literal["class", "bins"] = Field(
        "bins", description="so2sat_pop: raw population classes or merged bins."
    )
    class_bins: dict[str, list[int]] | None = Field(
        None, description="so2sat_pop with target bins: bin name -> population classes."
    )

    @model_validator(mode="after")
    def _distinct(self) -> DatasetConfig:
        for key in ("seasons", "layers"):
            values = getattr(self, key)
            if len(set(values)) != len(values):
                raise ValueError(f"dataset.{key} repeats a value: {values}")
        return self

    def modality_configs(self) -> list[ModalityConfig]:
        """The modalities this dataset produces (names, bands, files, physical scale)."""
        city = self.city_dir.rstrip("/")
        out = [ModalityConfig(
            name=f"s2_{s}", files=[f"{city}/sen2_rgb_{s}/Class_*/*_sen2_rgb_{s}.tif"],
            bands=[f"{s}_{b}" for b in ("R", "G", "B")], sensor="sentinel2", scale=1e-4,
        ) for s in self.seasons]
        for layer in self.layers:
            sensor, band = _SENSORS[layer]
            out.append(ModalityConfig(name=layer, files=[f"{city}/{layer}/Class_*/*_{layer}.tif"],
                                      bands=[band], sensor=sensor))
        return out
