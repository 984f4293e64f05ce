"""The ``dataset`` section: read a published dataset layout instead of prepare + extract."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from geofuse._config_base import IndexName, ModalityConfig, Resampling, _Model

Season = Literal["spring", "summer", "autumn", "winter"]
_SENSORS = {"dem": ("dem", "dem_elevation"), "viirs": ("viirs", "viirs_radiance")}


DatasetName = Literal["so2sat_lcz", "so2sat_pop", "so2sat_lcz42", "eurosat_ms",
                      "bigearthnet_mm", "land_take_synthetic", "eopatch", "temporal_tiles"]
#: Datasets whose targets are label sets (multi-label classification).
MULTILABEL_DATASETS = ("bigearthnet_mm",)
#: Datasets read from a city folder (``city_dir``); the others read ``root``.
CITY_DATASETS = ("so2sat_lcz", "so2sat_pop")
#: Datasets generated in memory: no folder to read.
SYNTHETIC_DATASETS = ("land_take_synthetic",)
#: Datasets of time series (PatchSet.timestamps; channels band@date) with per-pixel masks.
TEMPORAL_DATASETS = ("land_take_synthetic", "eopatch", "temporal_tiles")


class DatasetConfig(_Model):
    """A dataset read straight into a PatchSet by ``geofuse extract`` (no prepare step)."""

    name: DatasetName = Field(
        description="so2sat_lcz: Local Climate Zone patches sampled from a So2Sat-POP city's lcz "
        "label raster; so2sat_pop: one sample per 1 km cell, population class as target, "
        "*_features.csv as tabular input; so2sat_lcz42: the LCZ42 HDF5 file (sen1, sen2, "
        "label); eurosat_ms: class-named folders of 13-band EuroSAT GeoTIFFs; bigearthnet_mm: "
        "BigEarthNet-S2 (and -S1) patch folders with *_labels_metadata.json, multi-label "
        "CORINE targets (see nomenclature); land_take_synthetic: generated multi-temporal "
        "Sentinel-2-like tiles (9 bands, annual steps) with land-take masks, y = change level "
        "(low/moderate/high), for segmentation; eopatch: eo-learn EOPatch folders (data/NDVI, "
        "cloud masks, mask_timeless/LULC) cut into tiles of extract.patch_size px, an NDVI time "
        "series with a LULC mask per pixel, y = each tile's dominant LULC class; "
        "temporal_tiles: one folder per tile of per-date multi-band GeoTIFFs (date in the file "
        "name or in dates.json) and a mask.tif (class per pixel), as exported from Earth "
        "Engine; y = change level (binary masks) or the dominant class."
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
        "(BigEarthNet-S2-*/<patch>/, BigEarthNet-S1-*/<patch>/); eopatch: one EOPatch folder or "
        "a folder of EOPatch folders; temporal_tiles: the folder of tile folders "
        "(<root>/<tile>/<date>.tif + mask.tif). Relative to the config file."
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
        "are kept; s1 only: S1 patches without an S2 partner are read too). "
        "land_take_synthetic: {s2: [B02, B03, B04, B08]} of B02-B08, B11, B12; eopatch: {s2: "
        "[NDVI]}: the single-channel data features read (data/<name>.npy), default NDVI; "
        "temporal_tiles: one modality (its key names it, default s2): with band descriptions "
        "in the GeoTIFFs a subset of them by name, without descriptions one name per band in "
        "file order (default B1..Bn)."
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
    target: Literal["class", "bins", "mask", "population"] = Field(
        "bins", description="so2sat_pop: raw population classes (class), merged bins, or "
        "population = regression of each cell's population count (POP of *_<city>.csv), "
        "stratified for splits and folds by the class bins; "
        "so2sat_lcz: mask = semantic segmentation, each lattice window keeps the LCZ raster "
        "under it as its mask (0 and pixels outside the cell ignored; a window needs "
        "extract.min_labelled of its pixels labelled), for the segmentation models."
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

    n_tiles: int = Field(
        50, ge=1, description="land_take_synthetic: tiles to generate (of extract.patch_size px; "
        "the experiment had 53 of 64 px). The generator is seeded by the study's seed."
    )
    years: int = Field(
        7, ge=2, description="land_take_synthetic: years of the series (2018 onwards)."
    )
    cloud_fraction: float = Field(
        0.15, ge=0, lt=1, description="land_take_synthetic: mean share of an observation "
        "covered by clouds (NaN before compositing; each observation's share is exponential "
        "with this mean, capped at 0.9)."
    )
    composite: Literal["annual", "bitemporal", "all", "dates"] | None = Field(
        None, description="How observations become time steps. annual: one step per year, the "
        "pixel-wise mean of its periods, or the cleanest period alone when one is over "
        "max_missing missing and another under min_clean; bitemporal: the first and last "
        "annual composite; all: every period its own step; dates (eopatch only): every "
        "acquisition day (same-day images merged), thinned by date_stride. Default: annual "
        "for land_take_synthetic and temporal_tiles (T = years), all for eopatch (quarterly "
        "means)."
    )
    periods_per_year: Literal[1, 2, 4, 12] | None = Field(
        None, description="Sub-annual periods that observations are grouped into before "
        "compositing: 1 year, 2 half-years, 4 quarters, 12 months. land_take_synthetic: "
        "observations generated a year (1: Q3, 2: Q2 + Q3 as the experiment, 4), default 2; "
        "eopatch: period means of the cloud-free acquisitions, default 4; temporal_tiles: "
        "period means of a tile's dates, default 4 (periods a tile never observed are left "
        "out, so Q2 + Q3 exports composite as the two quarters of the experiment)."
    )
    max_missing: float = Field(
        0.5, ge=0, le=1, description="annual / bitemporal composites: a period with more than "
        "this share of missing (cloudy) pixels is dropped for the year when another has fewer "
        "than min_clean; the cleanest period is then used alone."
    )
    min_clean: float = Field(
        0.2, ge=0, le=1, description="annual / bitemporal composites: share of missing pixels "
        "below which a period counts as clean (see max_missing); at most max_missing."
    )
    change_thresholds: tuple[float, float] = Field(
        (0.05, 0.30), description="land_take_synthetic, temporal_tiles (binary masks): "
        "land-take shares separating the change levels low / moderate / high (y, used to "
        "stratify splits and folds)."
    )
    date_stride: int = Field(
        1, ge=1, description="eopatch with composite dates: keep every k-th acquisition day."
    )
    block_tiles: int = Field(
        2, ge=1, description="eopatch: groups (for splits and k-fold) are square map blocks of "
        "block_tiles x block_tiles tiles, so neighbouring tiles never straddle a split."
    )
    date_pattern: str | None = Field(
        None, description="temporal_tiles: regular expression searched in each image's file "
        "name (without suffix) for its date: the group 'date', else group 1, else the whole "
        "match; YYYYMMDD and _ separators are accepted (2018_06_15, 2018_Q2). Default: the "
        "first YYYY-MM-DD, YYYYMMDD, YYYY_MM_DD, YYYY-Qn, YYYY-Hn or YYYY-MM in the name "
        "(2018-06-15.tif, S2_20180615.tif, 2018-Q2.tif). A tile's dates.json replaces it."
    )
    mask_file: str = Field(
        "mask.tif", min_length=1, description="temporal_tiles: the single-band mask raster in "
        "each tile folder (class id per pixel; binary 0/1 masks mean no_change / change)."
    )
    mask_nodata: float | None = Field(
        None, description="temporal_tiles: mask value of unlabelled pixels (no loss, no "
        "metric), besides the mask file's own nodata value and 255."
    )
    min_steps: int = Field(
        2, ge=1, description="temporal_tiles: fewest time steps a tile must give after "
        "compositing (2: change detection needs a before and an after)."
    )

    @model_validator(mode="after")
    def _temporal(self) -> DatasetConfig:
        if self.min_clean > self.max_missing:
            raise ValueError(f"dataset.min_clean = {self.min_clean} exceeds dataset.max_missing "
                             f"= {self.max_missing}; set min_clean <= max_missing")
        low, high = self.change_thresholds
        if not 0 < low < high < 1:
            raise ValueError(f"dataset.change_thresholds {[low, high]} must be two increasing "
                             "shares in (0, 1), e.g. [0.05, 0.30]")
        if self.date_pattern is not None:
            try:
                re.compile(self.date_pattern)
            except re.error as err:
                raise ValueError(f"dataset.date_pattern {self.date_pattern!r} is not a regular "
                                 f"expression ({err}); e.g. 'S2_(?P<date>\\d{{8}})'") from None
        if self.name not in TEMPORAL_DATASETS:
            return self
        if self.indices:
            raise ValueError(f"dataset.indices is not available for the time series of dataset "
                             f"{self.name!r}; remove it")
        if self.composite == "dates" and self.name != "eopatch":
            raise ValueError(f"dataset.composite 'dates' is for eopatch; dataset {self.name!r} "
                             "takes annual, bitemporal or all")
        if self.name == "land_take_synthetic" and self.periods_per_year == 12:
            raise ValueError("dataset.periods_per_year 12: land_take_synthetic generates 1, 2 "
                             "or 4 observations a year")
        return self

    @model_validator(mode="after")
    def _distinct(self) -> DatasetConfig:
        for key in ("seasons", "layers"):
            values = getattr(self, key)
            if len(set(values)) != len(values):
                raise ValueError(f"dataset.{key} repeats a value: {values}")
        if self.target == "population" and self.name != "so2sat_pop":
            raise ValueError(f"dataset.target population is for so2sat_pop, not {self.name!r}")
        if self.name in SYNTHETIC_DATASETS:
            for key in ("root", "test_root", "city_dir", "test_city_dir"):
                if getattr(self, key) is not None:
                    raise ValueError(f"dataset.{key} is not used by dataset {self.name!r} (it "
                                     "is generated); remove it")
            return self
        if self.target == "mask" and self.name != "so2sat_lcz":
            raise ValueError(f"dataset.target mask is for so2sat_lcz, not {self.name!r} (time "
                             "series carry their masks; other datasets one label per sample)")
        if self.name in TEMPORAL_DATASETS and self.test_root is not None:
            raise ValueError(f"dataset.test_root is not supported by dataset {self.name!r}; "
                             "hold out a test split with splits.test_fraction")
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
    def segmentation(self) -> bool:
        """Whether this dataset's samples carry pixel masks (time series, LCZ masks)."""
        return self.name in TEMPORAL_DATASETS or self.target == "mask"

    @property
    def regression(self) -> bool:
        """Whether this dataset's samples carry a continuous target (values)."""
        return self.target == "population"

    @property
    def source(self) -> str:
        """The dataset's city folder or root, as written in the config ('.' for a generated
        dataset, which reads nothing)."""
        if self.name in SYNTHETIC_DATASETS:
            return "."
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
