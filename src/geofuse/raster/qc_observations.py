"""QC of masked and composited modalities: what the masks removed, clear acquisitions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from geofuse.raster.align import WindowObservations


class ObservationStats:
    """What a modality's masks removed, and clear acquisitions per covered pixel (composites)."""

    def __init__(self) -> None:
        self.seen = 0
        self.flagged = 0
        self.clear_hist = np.zeros(0, np.int64)

    def update(self, observed: WindowObservations, covered: np.ndarray) -> None:
        self.seen += observed.seen
        self.flagged += observed.flagged
        if observed.clear is not None:
            counts = np.bincount(observed.clear[covered].ravel())
            if len(counts) > len(self.clear_hist):
                counts[: len(self.clear_hist)] += self.clear_hist
                self.clear_hist = counts
            else:
                self.clear_hist[: len(counts)] += counts

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "observed_pixels": self.seen, "flagged_pixels": self.flagged,
            "masked_fraction": self.flagged / self.seen if self.seen else None,
        }
        total = int(self.clear_hist.sum())
        if total:
            values = np.arange(len(self.clear_hist))
            cum = np.cumsum(self.clear_hist)
            out["clear_observations"] = {
                "min": int(values[self.clear_hist > 0][0]),
                "median": int(np.searchsorted(cum, (total + 1) / 2)),
                "mean": float((values * self.clear_hist).sum() / total),
                "max": int(values[self.clear_hist > 0][-1]),
                "none_fraction": float(self.clear_hist[0] / total),
                "histogram": self.clear_hist.tolist(),
            }
        return out


#: A mask that flags more than this share of the observed pixels is probably the wrong rule.
MASKED_WARN_FRACTION = 0.95


def mask_warnings(coverage: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """(modality, message) for masks that removed most pixels, or left pixels without any
    clear acquisition."""
    out = []
    for name, c in coverage.items():
        obs = c.get("observations") or {}
        masked = obs.get("masked_fraction")
        if masked is not None and masked > MASKED_WARN_FRACTION:
            out.append((name,
                f"modality {name!r}: its mask flags {masked:.1%} of the observed pixels; check "
                "mask.preset, invalid_values and invalid_bits against the flag band (values "
                "of a class band such as SCL are not bits), and mask.buffer"
            ))
        if masked == 0 and obs.get("observed_pixels"):
            out.append((name,
                f"modality {name!r}: its mask flagged no pixel at all; check that mask.band "
                "or mask.files give the flag band (QA60 is empty in Sentinel-2 products since "
                "processing baseline 04.00, January 2022: use the SCL band)"))
        none = (obs.get("clear_observations") or {}).get("none_fraction", 0.0)
        if none > 0:
            out.append((name,
                f"modality {name!r}: {none:.1%} of its covered pixels have no clear "
                "acquisition (every one masked or nodata), so they are NaN in the stack; add "
                "acquisitions to its files (or lower mask.buffer if set)"
            ))
    return out


def observation_lines(modalities: dict[str, dict[str, Any]]) -> list[str]:
    """Masks and composites: the share of observed pixels flagged, clear acquisitions."""
    rows = []
    for name, c in modalities.items():
        obs = c.get("observations")
        if not obs:
            continue
        masked = obs["masked_fraction"]
        clear = obs.get("clear_observations")
        per_pixel = (f"{clear['min']} / {clear['median']} / {clear['mean']:.1f} / {clear['max']}"
                     if clear else "n/a")
        none = f"{clear['none_fraction']:.1%}" if clear else "n/a"
        rows.append(f"| {name} | {'n/a' if masked is None else f'{masked:.1%}'} | {per_pixel} "
                    f"| {none} |")
    if not rows:
        return []
    return ["", "| modality | masked (of observed pixels) | clear acquisitions per pixel "
            "(min / median / mean / max) | pixels without any |", "|---|---|---|---|", *rows,
            "", "Composites: the clear acquisitions of every pixel are in `stack_clear.tif` "
            "beside the stack (band `<modality>_clear_acquisitions`)."]
