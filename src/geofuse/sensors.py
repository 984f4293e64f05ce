"""Band catalogues of common sensors: band names, RGB bands and expected physical ranges."""

from __future__ import annotations

from dataclasses import dataclass

from geofuse.errors import ConfigError


@dataclass(frozen=True)
class SensorSpec:
    """What geofuse knows about a sensor product."""

    name: str
    bands: tuple[str, ...]
    valid_range: tuple[float, float]
    rgb: tuple[str, str, str] | None = None
    resampling: str = "bilinear"
    description: str = ""


SENSORS: dict[str, SensorSpec] = {
    s.name: s
    for s in [
        SensorSpec(
            "sentinel2",
            ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"),
            (0.0, 1.6), rgb=("B4", "B3", "B2"),
            description="Sentinel-2 MSI surface reflectance (scaled to 0-1)",
        ),
        SensorSpec("sentinel1", ("VV", "VH"), (-50.0, 20.0),
                   description="Sentinel-1 GRD backscatter in dB"),
        SensorSpec("modis_ndvi", ("NDVI",), (-0.2, 1.0),
                   description="MODIS MOD13Q1 NDVI (scaled to -1..1)"),
        SensorSpec("dem", ("elevation",), (-450.0, 8900.0), resampling="cubic",
                   description="Digital elevation model in metres (SRTM, Copernicus)"),
        SensorSpec("viirs", ("radiance",), (0.0, 1000.0),
                   description="VIIRS night-time lights radiance (nW/cm2/sr)"),
        SensorSpec("landsat8", ("B1", "B2", "B3", "B4", "B5", "B6", "B7"), (0.0, 1.6),
                   rgb=("B4", "B3", "B2"),
                   description="Landsat 8/9 OLI surface reflectance (B2 blue ... B7 SWIR 2)"),
        SensorSpec("landsat57", ("B1", "B2", "B3", "B4", "B5", "B7"), (0.0, 1.6),
                   rgb=("B3", "B2", "B1"),
                   description="Landsat 4/5 TM and 7 ETM+ surface reflectance (B1 blue ... "
                   "B4 near infrared, B5 and B7 SWIR)"),
        SensorSpec("label", ("label",), (0.0, 65535.0), resampling="nearest",
                   description="Categorical label raster (always nearest)"),
    ]
}


def get_sensor(name: str) -> SensorSpec:
    """Look up a sensor; raises with the list of known sensors."""
    try:
        return SENSORS[name]
    except KeyError:
        raise ConfigError(
            f"unknown sensor {name!r}; known sensors: {', '.join(sorted(SENSORS))}"
        ) from None


def sensor_rgb(modalities: dict[str, list[str]], sensors: dict[str, str | None] | None
               ) -> list[str] | None:
    """The red, green and blue band names of the first modality whose sensor numbers them
    otherwise than Sentinel-2's B4, B3, B2 (``landsat57``: B3, B2, B1), or None."""
    default = SENSORS["sentinel2"].rgb
    for modality, bands in modalities.items():
        spec = SENSORS.get((sensors or {}).get(modality) or "")
        if spec is None or spec.rgb is None or spec.rgb == default:
            continue
        lower = {b.lower(): b for b in bands}
        picked = [next((b for low, b in lower.items()
                        if low == want.lower() or low.endswith(f"_{want.lower()}")), None)
                  for want in spec.rgb]
        if all(picked):
            return picked  # type: ignore[return-value]
    return None
