"""The ``dataset`` section: read a published dataset layout instead of prepare + extract."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from geofuse._config_base import IndexName, ModalityConfig, Resampling, _Model

Season = Literal["spring", "summer", "autumn", "winter"]
_SENSORS = {"dem": ("dem", "dem_elevation"), "viirs": ("viirs", "viirs_radiance")}


DatasetName = Literal["so2sat_lcz", "so2sat_pop", "so2sat_lcz42", "eurosat_ms",
                      "bigearthnet_mm"]
#: Datasets whose targets are label sets (multi-label classification).
MULTILABEL_DATASETS = ("bigearthnet_mm",)
#: Datasets read from a city folder (``city_dir``); the others read ``root``.
CITY_DATASETS = ("so2sat_lcz", "so2sat_pop")


class DatasetConfig(_Model):
    """A dataset read straight into a PatchSet by ``geofuse extract`` (no prepare step)."""

    name: DatasetName = Field(
        description="so2sat_lcz: Local Climate Zone patches sampled from a So2Sat-POP city's lcz "
        "label raster; so2sat_pop: one sample per 1 km cell, population class as target, "
        "*_features.csv as tabular input; so2sat_lcz42: the LCZ42 HDF5 file (sen1, sen2, "
        "label); eurosat_ms: class-named folders of 13-band EuroSAT GeoTIFFs; bigearthnet_mm: "
        "BigEarthNet-S2 (and -S1) patch folders with *_labels_metadata.json, multi-label "
        "CORINE targets (see nomenclature)."
    )
    city_dir: str | None = Field(
        None, description="so2sat_lcz / so2sat_pop: city folder (e.g. .../so2sat_pop/gdansk), "
        "relative to the config file."
    )
    test_city_dir: str | None = Field(
        None, description="A second city folder used as the external test set (train on one "
        "city, test on another); its patches are never used for training or model selection."
    )
    root: str | None = Field(
        None, description="so2sat_lcz42: the HDF5 file; eurosat_ms: the folder of class "
        "folders; bigearthnet_mm: a folder searched recursively for patch folders "
        "(BigEarthNet-S2-*/<patch>/, BigEarthNet-S1-*/<patch>/). Relative to the config file."
    )
    test_root: str | None = Field(
        None, description="A separate test file or folder (another split or region) in the "
        "same layout: its samples are the test set, never used for training or model selection. "
        "bigearthnet_mm: read with the same nomenclature, so all its classes are known."
    )
    bands: dict[str, list[str]] | None = Field(
        None, description="Band subset per modality by name, e.g. {s2: [B2, B3, B4, B8]}; "
        "default every band of the dataset. bigearthnet_mm: {s2: [B01..B12, B8A], s1: [VV, "
        "VH]}; a modality left out is not read (s2 only: S2 patches without an S1 partner "
        "are kept; s1 only: S1 patches without an S2 partner are read too)."
    )
    indices: dict[str, list[IndexName]] = Field(
        default_factory=dict, description="Indices per dataset modality, e.g. {s2: [NDVI, "
        "NDBI]} or {s1: [RVI]}: each becomes that modality's 'indices' (companion modality "
        "<name>_idx, computed at extract time)."
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
    block_size_m: float = Field(
        5000.0, gt=0, description="eurosat_ms, bigearthnet_mm: side in metres of the square "
        "spatial blocks (image or patch centres in EPSG:3035) that group images for splits and "
        "k-fold; blocks with overlapping images are merged."
    )
    nomenclature: Literal[19, 43] = Field(
        19, description="bigearthnet_mm: 19 (the classes of Sumbul et al. 2020, BigEarthNet-MM; "
        "11 of the 43 CORINE classes are dropped and patches left without a label are skipped) "
        "or 43 (the original CORINE level-3 classes). All classes of the nomenclature are "
        "listed, in the official order, whether present or not."
    )
    resampling: dict[str, Resampling] = Field(
        default_factory=dict, description="bigearthnet_mm: band -> resampling method onto the "
        "10 m grid (120 x 120 px) for the 20 m bands (B05, B06, B07, B8A, B11, B12) and the "
        "60 m bands (B01, B09), e.g. {B01: nearest}; bands not named use bilinear."
    )
    max_memory_mb: int = Field(
        4096, ge=64, description="so2sat_lcz42: memory budget of reading the HDF5 file (the "
        "float32 patches kept plus the chunk being read); the file is streamed in chunks and "
        "never loaded whole. bigearthnet_mm: budget of the float32 patches read. Too many "
        "patches for it: set max_patches."
    )
    max_patches: int | None = Field(
        None, ge=1, description="so2sat_lcz42: keep at most this many patches (a seeded, "
        "class-stratified random choice, kept in file order); bigearthnet_mm: at most this "
        "many patch folders (a seeded random choice, in name order); default all."
    )
    block_size: int = Field(
        1000, ge=1, description="so2sat_lcz42: the file is ordered by city; groups (for splits "
        "and k-fold) are contiguous blocks of this many patches, block:<index // block_size>."
    )

    @model_validator(mode="after")
    def _distinct(self) -> DatasetConfig:
        for key in ("seasons", "layers"):
            values = getattr(self, key)
            if len(set(values)) != len(values):
                raise ValueError(f"dataset.{key} repeats a value: {values}")
        city = self.name in CITY_DATASETS
        needed, other = ("city_dir", "root") if city else ("root", "city_dir")
        if getattr(self, needed) is None:
            raise ValueError(f"dataset {self.name!r} needs dataset.{needed} (the "
                             f"{'city folder' if city else 'dataset file or folder'})")
        for key in (other, "test_root" if city else "test_city_dir"):
            if getattr(self, key) is not None:
                raise ValueError(f"dataset.{key} is not used by dataset {self.name!r}; use "
                                 f"dataset.{needed}" + ("" if key == other else " and its "
                                 f"test_{'city_dir' if city else 'root'}"))
        return self

    @property
    def source(self) -> str:
        """The dataset's city folder or root, as written in the config."""
        return str(self.city_dir if self.name in CITY_DATASETS else self.root)

    @property
    def test_source(self) -> str | None:
        """The external test folder or file, as written in the config (None: none)."""
        return self.test_city_dir if self.name in CITY_DATASETS else self.test_root

    def modality_configs(self) -> list[ModalityConfig]:
        """The modalities this dataset produces (names, bands, files, physical scale, indices).

        Raises:
            ValueError: ``indices`` names a modality the dataset does not produce.
        """
        out = self._modality_configs()
        names = [m.name for m in out]
        unknown = sorted(set(self.indices) - set(names))
        if unknown:
            raise ValueError(f"dataset.indices names modality {unknown[0]!r}, which dataset "
                             f"{self.name!r} does not produce; its modalities: {names}")
        return [m.model_copy(update={"indices": list(self.indices[m.name])})
                if self.indices.get(m.name) else m for m in out]

    def _modality_configs(self) -> list[ModalityConfig]:
        if self.name not in CITY_DATASETS:
            from geofuse.data.datasets.build import dataset_modalities

            return dataset_modalities(self)
        city = str(self.city_dir).rstrip("/")
        out = [ModalityConfig(
            name=f"s2_{s}", files=[f"{city}/sen2_rgb_{s}/Class_*/*_sen2_rgb_{s}.tif"],
            bands=[f"{s}_{b}" for b in ("R", "G", "B")], sensor="sentinel2", scale=1e-4,
        ) for s in self.seasons]
        for layer in self.layers:
            sensor, band = _SENSORS[layer]
            out.append(ModalityConfig(name=layer, files=[f"{city}/{layer}/Class_*/*_{layer}.tif"],
                                      bands=[band], sensor=sensor))
        return out
