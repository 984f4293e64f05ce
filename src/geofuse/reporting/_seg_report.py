"""Run report sections of a segmentation run: pixel metrics, per-tile spread, mask figure."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from geofuse.data.patchset import MASK_IGNORE, PatchSet

EVAL_SPLITS = ("val", "test")


def is_segmentation(metrics: dict[str, Any]) -> bool:
    """Whether metrics.json belongs to a segmentation run."""
    return any(metrics.get(split, {}).get("segmentation") for split in EVAL_SPLITS)


def seg_metrics_lines(metrics: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the pooled pixel metrics per split (best checkpoint)."""
    header = ["split", "tiles", "labelled pixels", "IoU", "F1", "precision", "recall",
              "mean IoU", "pixel accuracy", "tile-mean IoU"]
    rows = []
    for split in EVAL_SPLITS:
        if (m := metrics.get(split)) is None:
            continue
        tiles = m.get("per_tile", {})
        tile_iou = tiles.get("iou_mean")
        rows.append([split, m["n"], m.get("n_pixels", "?"),
                     *[f"{m[k]:.3f}" for k in ("iou", "f1", "precision", "recall", "mean_iou",
                                               "accuracy")],
                     "n/a" if tile_iou is None else f"{tile_iou:.3f}"])
    return header, rows


def seg_metrics_note(metrics: dict[str, Any]) -> list[str]:
    """What the headline figures are: the change class of a binary mask, else averages."""
    m = next(metrics[s] for s in EVAL_SPLITS if s in metrics)
    names = list(m["per_class"])
    if len(names) == 2:
        return [f"IoU, F1, precision and recall are those of class {names[1]!r}, pooled over "
                "the labelled pixels of the split; the tile-mean IoU averages tiles (a tile "
                "with no such pixel in truth and prediction counts 1).", ""]
    return ["IoU is the mean IoU over the classes present; F1, precision and recall are "
            "macro averages, pooled over the labelled pixels of the split.", ""]


def per_class_rows(m: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Per mask class: IoU, F1, precision, recall, labelled and predicted pixels."""
    header = ["class", "IoU", "F1", "precision", "recall", "pixels", "predicted"]
    rows = [[name, *[f"{c[k]:.3f}" for k in ("iou", "f1", "precision", "recall")],
             c["support"], c["predicted"]] for name, c in m["per_class"].items()]
    return header, rows


def _display(image: np.ndarray, band_names: Sequence[str], rgb: Sequence[str]) -> np.ndarray:
    """An (H, W, 3) or (H, W) image in [0, 1] of one time step: RGB when the bands are
    there, else the first band; 2-98% stretched per band."""
    picks = [band_names.index(b) for b in rgb if b in band_names]
    layers = image[picks] if len(picks) == 3 else image[:1]
    out = np.zeros(layers.shape, dtype=np.float32)
    for i, band in enumerate(layers):
        finite = band[np.isfinite(band)]
        lo, hi = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
        out[i] = np.clip((np.nan_to_num(band, nan=lo) - lo) / max(hi - lo, 1e-9), 0, 1)
    return np.moveaxis(out, 0, -1) if len(out) == 3 else out[0]


def plot_mask_examples(patches: PatchSet, rows: np.ndarray, pred: np.ndarray | dict[str, Any],
                       rgb: Sequence[str] = ("B04", "B03", "B02"), max_tiles: int = 4
                       ) -> Figure:
    """For a few tiles (the most changed first): the first and last date, the true mask and
    the predicted mask (or one column per model when ``pred`` maps names to masks of the same
    tiles); unlabelled pixels in grey."""
    preds = pred if isinstance(pred, dict) else {"predicted mask": pred}
    true = patches.masks[rows] if patches.masks is not None else \
        np.zeros_like(next(iter(preds.values())))
    share = [(t == 1).mean() for t in true]
    order = np.argsort(share)[::-1][:max_tiles]
    steps, per_step = patches.time_steps, len(patches.band_names) // patches.time_steps
    bands = patches.step_bands
    stamps = patches.timestamps or [""]
    colours = ListedColormap(["#f2f2f2", "#d7301f", "#2b8cbe", "#31a354", "#756bb1",
                              "#fdae6b", "#636363", "#e7ba52", "#9ecae1", "#a1d99b"]
                             [:max(2, len(patches.mask_names))])
    columns = 3 + len(preds)
    # a fixed grid of images: plain margins instead of the constrained layout, which costs
    # about half a second per figure here
    fig = Figure(figsize=(2.5 * columns, 2.6 * len(order)))
    axes = fig.subplots(len(order), columns, squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.95, wspace=0.05, hspace=0.25)
    for r, tile in enumerate(order):
        x = patches.x[rows[tile]].reshape(steps, per_step, *patches.x.shape[2:])
        panels = [(_display(x[0], bands, rgb), f"{stamps[0]}", False),
                  (_display(x[-1], bands, rgb), f"{stamps[-1]}", False),
                  (true[tile], "true mask", True),
                  *[(p[tile], name, True) for name, p in preds.items()]]
        for c, (img, title, is_mask) in enumerate(panels):
            ax = axes[r, c]
            if is_mask:
                shown = np.ma.masked_equal(img.astype(np.int64), MASK_IGNORE)
                ax.imshow(shown, cmap=colours, vmin=0, vmax=colours.N - 1,
                          interpolation="nearest")
            else:
                ax.imshow(img, cmap=None if img.ndim == 3 else "viridis")
            ax.set_title(f"{patches.groups[rows[tile]]}: {title}" if c == 0 else title,
                         fontsize=8)
            ax.set_axis_off()
    return fig


def study_mask_comparison(study_path: Path, cells: Sequence[dict[str, Any]],
                          config_ids: Sequence[str]) -> Figure | None:
    """The validation tiles of the first fold that every configuration in ``config_ids`` was
    evaluated on (same seed): dates, truth and each configuration's predicted mask."""
    by_config: dict[str, dict[str, Any]] = {}
    for cell in sorted(cells, key=lambda c: (c["fold"], c["seed"])):
        if cell["config_id"] in config_ids and cell.get("run_dir"):
            by_config.setdefault(cell["config_id"], cell)
    if not by_config:
        return None
    first = next(iter(by_config.values()))
    same = {cid: c for cid, c in by_config.items()
            if (c["fold"], c["seed"]) == (first["fold"], first["seed"])}
    preds: dict[str, np.ndarray] = {}
    rows: np.ndarray | None = None
    for cid in config_ids:
        cell = same.get(cid)
        saved = load_split_masks(study_path / cell["run_dir"], "val") if cell else None
        if saved is None or (rows is not None and not np.array_equal(saved[0], rows)):
            continue
        rows, preds[cid] = saved
    if rows is None or not preds:
        return None
    run = json.loads((study_path / first["run_dir"] / "run.json").read_text())
    try:
        patches = PatchSet.load(run["patches_path"]).select_bands(run["bands"])
    except (OSError, ValueError, KeyError):
        return None
    return plot_mask_examples(patches, rows, preds)


def load_split_masks(run_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """PatchSet rows and predicted masks saved by the evaluation, or None."""
    path = Path(run_dir) / f"{split}_masks.npz"
    if not path.is_file():
        return None
    with np.load(path) as data:
        return data["indices"], data["pred"]
