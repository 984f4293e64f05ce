"""``geofuse show``: paper-ready views of a PatchSet or a fused stack.

Plot functions return a matplotlib Figure (Agg, no pyplot); :func:`show` writes them as PNG.
True colour uses a per-band 2-98 % percentile stretch; the Sentinel-1 false colour is the
composite of the So2Sat LCZ42 notebook, on linear VV/VH intensities (dB input is converted).

Of a multi-label PatchSet (``multi_hot``), a class's patches are those holding it: the class
balance counts them (a patch counts once under each of its labels) and the sample grids and
band distributions draw from them. A study's fold file (``<study>/folds/fold<k>.h5``), or a
study directory (its first fold file), also gets the class balance per fold from study.json.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from geofuse.data.patchset import UNASSIGNED, PatchSet
from geofuse.errors import GeofuseError
from geofuse.reporting._show_inputs import (
    read_stack_bands,
    resolve_inputs,
    save_figures,
    study_fold_counts,
)
from geofuse.reporting.plots import _new_figure
from geofuse.sensors import sensor_rgb

__all__ = [
    "class_balance_counts", "class_members", "find_rgb", "find_s1", "percentile_stretch",
    "plot_band_distributions", "plot_class_balance", "plot_class_counts", "plot_image",
    "plot_index_map", "plot_sample_grid", "s1_false_colour", "sensor_rgb", "show",
]

_RGB_PATTERNS = (r"(b0?4|.*_r|red)", r"(b0?3|.*_g|green)", r"(b0?2|.*_b|blue)")
_SPLITS = ("train", "val", "test")


def _match(names: Sequence[str], pattern: str) -> int | None:
    regex = re.compile(pattern, re.IGNORECASE)
    for i, name in enumerate(names):
        if regex.fullmatch(name) or regex.fullmatch(name.split("_", 1)[-1]):
            return i
    return None


def find_rgb(band_names: Sequence[str], rgb: Sequence[str] | None = None
             ) -> tuple[int, int, int] | None:
    """Indices of the red, green and blue bands: ``rgb`` by name (see :func:`sensor_rgb`),
    else B4/B04/*_R, B3/B03/*_G, B2/B02/*_B; None when missing."""
    if rgb is not None:
        names = list(band_names)
        if all(b in names for b in rgb):
            return names.index(rgb[0]), names.index(rgb[1]), names.index(rgb[2])
    found = [_match(band_names, p) for p in _RGB_PATTERNS]
    if any(i is None for i in found) or len(set(found)) < 3:
        return None
    return found[0], found[1], found[2]  # type: ignore[return-value]


def find_s1(band_names: Sequence[str]) -> tuple[int, int] | None:
    """Indices of the VV and VH intensity bands (Lee-filtered preferred), or None."""
    def pick(pol: str) -> int | None:
        tokens = [set(re.split(r"[_\-\s]+", n.lower())) for n in band_names]
        for wanted in ({pol, "lee"}, {pol}):
            for i, t in enumerate(tokens):
                if wanted <= t and not t & {"real", "imag", "re", "im"}:
                    return i
        return None

    vv, vh = pick("vv"), pick("vh")
    return None if vv is None or vh is None else (vv, vh)


def percentile_stretch(bands: np.ndarray, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """Stretch each band (axis 0) so its ``low``-``high`` percentiles map to 0-1, clipped.

    NaN is ignored when computing the percentiles and stays NaN; a constant or all-NaN band
    maps to 0.
    """
    arr = np.asarray(bands, dtype=np.float64)
    out = np.zeros(arr.shape, dtype=np.float32)
    for b in range(arr.shape[0]):
        band = arr[b]
        finite = band[np.isfinite(band)]
        if finite.size:
            lo, hi = np.percentile(finite, [low, high])
            scale = hi - lo if hi > lo else np.inf
            out[b] = np.clip((band - lo) / scale, 0.0, 1.0)
        out[b][~np.isfinite(band)] = np.nan
    return out


def s1_false_colour(vv: np.ndarray, vh: np.ndarray) -> np.ndarray:
    """The LCZ42 notebook's enhanced Sentinel-1 composite, (3, ...) in 0-1.

    Each channel is divided by its maximum over the whole input, as the notebook does per image.
    Inputs in dB (median below 0) are converted to linear intensity first; NaN stays NaN.
    """
    vv, vh = (np.asarray(a, dtype=np.float64) for a in (vv, vh))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        if np.nanmedian(vv) < 0 or np.nanmedian(vh) < 0:
            vv, vh = 10 ** (vv / 10), 10 ** (vh / 10)
        c1, c2, c3, c4, c5, c6, c7, c8 = 10e-4, 0.01, 0.02, 0.03, 0.045, 0.05, 0.9, 0.25
        r = c4 + np.log(c1 - np.log(c6 / (c3 + 2.5 * vv)) + np.log(c6 / (c3 + 1.5 * vh)))
        g = c6 + np.exp(c8 * (np.log(c2 + 2 * vv) + np.log(c3 + 7 * vh)))
        b = 0.8 - np.log(c6 / (c5 - c7 * vv))
        out = np.stack([r, g, b]).astype(np.float32)
        for ch in out:
            top = np.nanmax(np.where(np.isfinite(ch), ch, np.nan)) if np.isfinite(ch).any() else 0
            ch[:] = np.clip(ch / top, 0, 1) if top > 0 else 0
    return out


def _display(rgb: np.ndarray) -> np.ndarray:
    """(3, H, W) in 0-1 with NaN -> (H, W, 3) for imshow, nodata shown black."""
    return np.nan_to_num(np.moveaxis(rgb, 0, -1), nan=0.0)


def plot_image(rgb: np.ndarray, title: str) -> Figure:
    """One (3, H, W) 0-1 composite as a figure with a title."""
    h, w = rgb.shape[1:]
    fig = _new_figure(8, max(2.5, 8 * h / max(w, 1)))
    ax = fig.subplots()
    ax.imshow(_display(rgb), interpolation="nearest")
    ax.set_title(title)
    ax.set_axis_off()
    return fig


def plot_index_map(values: np.ndarray, name: str) -> Figure:
    """A spectral index (H, W) map with a colour bar (2-98 % range, NaN blank)."""
    h, w = values.shape
    finite = values[np.isfinite(values)]
    lo, hi = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
    fig = _new_figure(8.8, max(2.5, 8 * h / max(w, 1)))
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="RdYlGn", vmin=lo, vmax=hi,
                      interpolation="nearest")
    fig.colorbar(image, ax=ax, label=name, shrink=0.8)
    ax.set_title(f"{name} (2-98 % range)")
    ax.set_axis_off()
    return fig


def class_members(patches: PatchSet, k: int) -> np.ndarray:
    """Indices of the patches of class ``k``: those holding it in a multi-label set."""
    if patches.multi_hot is not None:
        return np.flatnonzero(patches.multi_hot[:, k] == 1)
    return np.flatnonzero(patches.y == k)


def _pick_samples(patches: PatchSet, per_class: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    picks = []
    for k in range(patches.num_classes):
        idx = class_members(patches, k)
        picks.append(np.sort(rng.choice(idx, min(per_class, idx.size), replace=False)))
    return picks


def plot_sample_grid(patches: PatchSet, kind: str = "true_colour", per_class: int = 8,
                     seed: int = 0) -> Figure:
    """Up to ``per_class`` random patches per class (rows), in true colour or S1 false colour.

    One stretch (or normalisation) is shared by all shown patches so they compare fairly.

    Raises:
        ValueError: the PatchSet lacks the RGB (``kind='true_colour'``) or VV/VH bands.
    """
    bands = (find_rgb(patches.band_names, sensor_rgb(
        patches.modalities, patches.provenance.get("sensors"))) if kind == "true_colour"
             else find_s1(patches.band_names))
    if bands is None:
        raise ValueError(f"no bands for {kind} among {patches.band_names}")
    picks = _pick_samples(patches, per_class, seed)
    chosen = np.concatenate(picks)
    sel = patches.x[chosen][:, list(bands)]  # (n, 2|3, P, P)
    if kind == "true_colour":
        rgb = percentile_stretch(np.moveaxis(sel, 1, 0))
    else:
        rgb = s1_false_colour(sel[:, 0], sel[:, 1])
    rgb = np.moveaxis(rgb, 0, 1)  # (n, 3, P, P)
    ncols, nrows = max(1, max(len(p) for p in picks)), patches.num_classes
    fig = _new_figure(1.1 * ncols + 1.6, 1.1 * nrows + 0.6)
    axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False))
    pos = 0
    for k, pick in enumerate(picks):
        for j in range(ncols):
            ax = axes[k, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(pick):
                ax.imshow(_display(rgb[pos + j]), interpolation="nearest")
            else:
                ax.set_frame_on(False)
        axes[k, 0].set_ylabel(f"{patches.class_names[k]}\n(n={class_members(patches, k).size})",
                              rotation=0, ha="right", va="center", fontsize=8)
        pos += len(pick)
    label = "true colour, 2-98 % stretch" if kind == "true_colour" else "Sentinel-1 false colour"
    fig.suptitle(f"Random patches per class ({label}, seed {seed})")
    return fig


def plot_band_distributions(patches: PatchSet, max_values: int = 20000,
                            seed: int = 0) -> Figure:
    """Box plot per band of each class's pixel values (NaN ignored, subsampled per class)."""
    rng = np.random.default_rng(seed)
    picks = _pick_samples(patches, max(1, max_values // patches.patch_size**2), seed)
    nb = len(patches.band_names)
    ncols = min(4, nb)
    nrows = -(-nb // ncols)
    width = max(3.0, 0.35 * patches.num_classes + 1.2)
    fig = _new_figure(width * ncols, 2.8 * nrows)
    axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for b, name in enumerate(patches.band_names):
        data = []
        for pick in picks:
            values = patches.x[pick, b].ravel()
            values = values[np.isfinite(values)]
            if values.size > max_values:
                values = rng.choice(values, max_values, replace=False)
            data.append(values if values.size else np.array([np.nan]))
        ax = axes[b]
        ax.boxplot(data, showfliers=False, patch_artist=True,
                   boxprops={"facecolor": "tab:blue", "alpha": 0.4})
        ax.set_xticks(range(1, patches.num_classes + 1), patches.class_names, rotation=60,
                      ha="right", fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    for ax in axes[nb:]:
        ax.set_axis_off()
    fig.suptitle("Per-class band distributions (physical values; boxes 25-75 %, whiskers 1.5 IQR)")
    return fig


def class_balance_counts(patches: PatchSet) -> dict[str, tuple[int, dict[str, int]]]:
    """Per split (``all`` when no patch has one; ``unassigned`` for the rest): its number of
    patches and the patches per class (of a multi-label set: the patches holding the class)."""
    assigned = patches.split != UNASSIGNED
    if not assigned.any():
        return {"all": (len(patches), patches.class_counts())}
    out = {name: (len(patches.split_indices(name)), patches.class_counts(name))
           for name in _SPLITS if len(patches.split_indices(name))}
    if not assigned.all():
        rest = patches.subset(~assigned)
        out["unassigned"] = (len(rest), rest.class_counts())
    return out


def plot_class_counts(
    counts: Mapping[str, Mapping[str, int]], class_names: Sequence[str],
    title: str = "Class balance per split", multilabel: bool = False,
    sizes: Mapping[str, int] | None = None,
) -> Figure:
    """Grouped bars: patches per class (x) in each group (split or fold; one bar colour each).

    Args:
        counts: group -> class name -> patches (absent classes count 0).
        class_names: the classes, in axis order.
        title: figure title.
        multilabel: counts are patches holding each class (labels the y axis so).
        sizes: group -> its number of patches, shown in the legend.
    """
    k, groups = len(class_names), list(counts)
    fig = _new_figure(max(5.0, 0.5 * k * max(1, len(groups)) / 2 + 2), 3.8)
    ax = fig.subplots()
    width = 0.8 / max(1, len(groups))
    for i, name in enumerate(groups):
        heights = [int(counts[name].get(c, 0)) for c in class_names]
        label = f"{name} (n={sizes[name]})" if sizes and name in sizes else name
        bars = ax.bar(np.arange(k) + (i - (len(groups) - 1) / 2) * width, heights, width,
                      label=label)
        ax.bar_label(bars, fontsize=6)
    ax.set_xticks(range(k), list(class_names), rotation=45 if k > 6 else 0, ha="right"
                  if k > 6 else "center")
    ax.set(ylabel="patches holding the class" if multilabel else "patches", title=title)
    if groups:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return fig


def plot_class_balance(patches: PatchSet) -> Figure:
    """Patches per class, one bar per split (or all patches if there is no split); of a
    multi-label set, the patches holding each class (:func:`class_balance_counts`)."""
    per_split = class_balance_counts(patches)
    title = "Class balance per split" + (" (multi-label)" if patches.multilabel else "")
    return plot_class_counts({n: c for n, (_, c) in per_split.items()}, patches.class_names,
                             title, patches.multilabel,
                             {n: size for n, (size, _) in per_split.items()})


def _patchset_figures(patches: PatchSet, per_class: int, seed: int) -> dict[str, Figure]:
    figures: dict[str, Figure] = {}
    for kind, what in (("true_colour", "S2 true colour"), ("s1_false_colour", "S1 false colour")):
        try:
            figures[f"samples_{kind}"] = plot_sample_grid(patches, kind, per_class, seed)
        except ValueError:
            if kind == "true_colour":
                warnings.warn(f"skipping the {what} sample grid: no red/green/blue bands "
                              f"(B4/B3/B2 or *_r/*_g/*_b) among {patches.band_names}",
                              stacklevel=2)
    figures["band_distributions"] = plot_band_distributions(patches, seed=seed)
    figures["class_balance"] = plot_class_balance(patches)
    return figures


def _fold_figures(study_dir: Path, multilabel: bool) -> dict[str, Figure]:
    """The class balance per fold of a study (from study.json), if it records one."""
    found = study_fold_counts(study_dir)
    if found is None:
        return {}
    counts, class_names = found
    return {"class_balance_per_fold": plot_class_counts(
        counts, class_names, "Class balance per fold" + (" (multi-label)" if multilabel else ""),
        multilabel)}


def _stack_rgb(path: Path) -> list[str] | None:
    """:func:`sensor_rgb` of a stack, from the sensors its manifest records."""
    from geofuse.raster.manifest import StackManifest, manifest_path

    try:
        man = StackManifest.load(manifest_path(path))
    except (OSError, ValueError, TypeError, GeofuseError):
        return None
    return sensor_rgb(man.modalities, {m: (src or {}).get("sensor")
                                       for m, src in man.sources.items()})


def _stack_figures(path: Path, max_size: int) -> dict[str, Figure]:
    figures: dict[str, Figure] = {}
    names = read_stack_bands(path, [], max_size)[1]
    rgb = find_rgb(names, _stack_rgb(path))
    if rgb is None:
        warnings.warn(f"skipping true colour of {str(path)!r}: no red/green/blue bands "
                      f"(B4/B3/B2 or *_R/*_G/*_B) among {names}", stacklevel=2)
    else:
        data = read_stack_bands(path, list(rgb), max_size)[0]
        figures["true_colour"] = plot_image(percentile_stretch(data),
                                            f"{path.name}: true colour (2-98 % stretch)")
    s1 = find_s1(names)
    if s1 is not None:
        data = read_stack_bands(path, list(s1), max_size)[0]
        figures["s1_false_colour"] = plot_image(s1_false_colour(data[0], data[1]),
                                                f"{path.name}: Sentinel-1 false colour")
    for i, name in enumerate(names):
        if "ndvi" in name.lower():
            data = read_stack_bands(path, [i], max_size)[0][0]
            figures[f"index_{re.sub(r'[^A-Za-z0-9_]+', '_', name)}"] = plot_index_map(data, name)
    return figures


def show(path: Path | None = None, out_dir: Path | None = None, config: Path | None = None,
         per_class: int = 8, seed: int = 0, max_size: int = 2000) -> list[Path]:
    """Write the PNG views of a PatchSet (.h5) or fused stack (.tif), or of a config's outputs.

    Args:
        path: a PatchSet written by ``geofuse extract``, a stack written by ``geofuse prepare``,
            or a study directory (its first fold file and its class balance per fold).
        out_dir: folder for the PNGs (default: ``show`` beside each input; a study's own
            ``show`` folder for a study directory or fold file).
        config: a study YAML instead of ``path``: its stack and PatchSet, those that exist.
        per_class: patches per class in the sample grids.
        seed: seed of the random sample choice.
        max_size: longest side, in pixels, a stack is read at (decimated reads).

    Returns:
        The written PNG paths, named ``<input stem>_<figure>.png``.
    """
    written: list[Path] = []
    for kind, src in resolve_inputs(path, config):
        folder = out_dir if out_dir is not None else src.parent / "show"
        if kind == "patchset":
            patches = PatchSet.load(src)
            figures = _patchset_figures(patches, per_class, seed)
            if src.parent.name == "folds" and (src.parent.parent / "study.json").is_file():
                figures.update(_fold_figures(src.parent.parent, patches.multilabel))
                folder = out_dir if out_dir is not None else src.parent.parent / "show"
        elif kind == "study":
            figures = _fold_figures(src, multilabel=False)
            folder = out_dir if out_dir is not None else src / "show"
        else:
            figures = _stack_figures(src, max_size)
        written += save_figures({f"{src.stem}_{k}": f for k, f in figures.items()}, folder)
    return written
