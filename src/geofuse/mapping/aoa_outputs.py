"""The area of applicability's map products: ``aoa.tif``, ``aoa.png`` and the shares of the
mapped pixels outside it (:mod:`geofuse.mapping.aoa`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from geofuse.mapping.aoa import AoaReference

AOA_BANDS = ["dissimilarity", "inside_aoa"]
STRIP_ROWS = 256


def aoa_bands(ratio: np.ndarray, mapped: np.ndarray) -> np.ndarray:
    """(2, h, w) float32 of a window: ``DI / threshold`` and 1 inside the AOA / 0 outside;
    NaN where the map has no value."""
    keep = mapped & np.isfinite(ratio)
    ratio = np.where(keep, ratio, np.nan).astype(np.float32)
    inside = np.where(keep, (ratio <= 1.0).astype(np.float32), np.nan).astype(np.float32)
    return np.stack([ratio, inside])


def aoa_product(references: list[AoaReference]) -> Any:
    """The ``aoa.tif`` product (:class:`~geofuse.mapping.outputs.Product`)."""
    from geofuse.mapping.outputs import Product

    return Product("aoa", list(AOA_BANDS), "float32", float("nan"), "average", {
        "method": "area of applicability, Meyer & Pebesma 2021: dissimilarity index / "
                  "threshold (above 1 = outside); inside_aoa 1 / 0",
        "threshold_di": "; ".join(f"{r.threshold:.4g}" for r in references)})


def outside_shares(aoa_path: Path, classes_path: Path | None, class_names: list[str]
                   ) -> dict[str, Any]:
    """Mapped pixels outside the AOA: in all, and per class of the class map (if any), read
    in strips."""
    import rasterio
    from rasterio.windows import Window

    k = len(class_names)
    total = np.zeros(2, dtype=np.int64)  # mapped, outside
    per_class = np.zeros((max(k, 1), 2), dtype=np.int64)
    with rasterio.open(aoa_path) as src:
        cls = rasterio.open(classes_path) if classes_path is not None else None
        try:
            for row in range(0, src.height, STRIP_ROWS):
                win = Window(0, row, src.width, min(STRIP_ROWS, src.height - row))
                inside = src.read(2, window=win)
                mapped = np.isfinite(inside)
                outside = mapped & (inside < 0.5)
                total += [int(mapped.sum()), int(outside.sum())]
                if cls is not None:
                    c = cls.read(1, window=win)
                    ok = mapped & (c < k)
                    per_class[:, 0] += np.bincount(c[ok], minlength=k)[:k]
                    per_class[:, 1] += np.bincount(c[ok & outside], minlength=k)[:k]
        finally:
            if cls is not None:
                cls.close()
    out: dict[str, Any] = {"mapped_pixels": int(total[0]), "outside_pixels": int(total[1]),
                           "outside_share": float(total[1] / total[0]) if total[0] else None}
    if classes_path is not None:
        out["outside_share_by_class"] = {
            name: (float(per_class[i, 1] / per_class[i, 0]) if per_class[i, 0] else None)
            for i, name in enumerate(class_names)}
    return out


def aoa_figure(aoa_path: Path, title: str) -> Any:
    """The dissimilarity (0-2, decimated to at most 1024 px a side) with the pixels outside
    the AOA outlined in red."""
    import rasterio
    from matplotlib.figure import Figure
    from rasterio.enums import Resampling

    with rasterio.open(aoa_path) as src:
        factor = max(1, int(np.ceil(max(src.height, src.width) / 1024)))
        shape = (max(1, src.height // factor), max(1, src.width // factor))
        ratio = src.read(1, out_shape=shape, resampling=Resampling.nearest)
    fig = Figure(figsize=(8, 8 * shape[0] / max(shape[1], 1)))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(ratio), cmap="viridis", vmin=0, vmax=2,
                      interpolation="nearest")
    outside = np.where(np.isfinite(ratio) & (ratio > 1), 1.0, np.nan)
    ax.imshow(outside, cmap="autumn", alpha=0.6, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{title}\ndissimilarity index / AOA threshold (red: outside the area of "
                 "applicability)", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.6, label="DI / threshold")
    return fig


def publish_aoa_figure(out: Path, written: dict[str, str], title: str) -> dict[str, str]:
    """``aoa.png`` beside a published ``aoa.tif`` (``{}`` when the map has none)."""
    if "aoa" not in written:
        return {}
    from geofuse.mapping.outputs import save_figure

    fig = aoa_figure(out / written["aoa"], title)
    return {"aoa_quicklook": save_figure(fig, out / "aoa.png").name}
