"""One output window -> class probabilities, for every kind of model and for ensembles.

- Patch classifiers (networks and per-patch forests): the window is read once with its halo
  and normalised; patches are fancy-indexed, a batch at a time, out of a zero-copy
  ``sliding_window_view`` of it (never a Python loop over pixels), and networks run them in
  channels-last memory format (same logits; on CPU the SimpleCNN's max pooling is ~15x faster
  in it, the whole pass 1.8-2.2x). Centres whose patch leaves
  the scene, or holds more nodata than the run accepted in training, get no class.
- Dense networks: overlapping model tiles cut by ``torch.Tensor.unfold`` from the haloed
  window, their probabilities weighted by :func:`~geofuse.mapping.windows.blend_weights` and
  summed (see :mod:`geofuse.mapping.windows`).
- Per-pixel forests: the features of every valid pixel, as in training.

An ensemble averages its members' probabilities; their spread is the mean over classes of the
standard deviation of the members' probabilities (``member_std``), and the vote disagreement is
the share of members whose own class is not the ensemble's (``vote_disagreement``). Monte Carlo
dropout (``mc_dropout`` N) runs every network N times, each pass with its own fixed dropout
masks (:mod:`geofuse.mapping.passes`); each pass counts as a member. With an area of
applicability (``--aoa``, :mod:`geofuse.mapping.aoa`) every patch member also measures how far
each patch lies from its training data (a network in the forward pass that classifies; with
TTA or Monte Carlo dropout in one more pass on the patch as it is, dropout off).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from geofuse.data.normalize import MIN_STD, BandStats, normalize
from geofuse.errors import ConfigError
from geofuse.mapping.aoa import AoaReference
from geofuse.mapping.aoa_members import forward_with_features, load_references, member_features
from geofuse.mapping.members import MemberSpec
from geofuse.mapping.passes import McDropout, member_passes, resolve_device
from geofuse.mapping.scene import SceneSource
from geofuse.mapping.windows import (
    MapWindow,
    blend_weights,
    box_share,
    cell_centres,
    dense_tile_starts,
    expand_cells,
    patch_halo,
)

PIXEL_CHUNK = 2**16  #: pixels a per-pixel forest predicts at once


@dataclass
class LoadedMember:
    """A member ready to predict: its spec, normalisation statistics and model."""

    spec: MemberSpec
    stats: BandStats
    model: Any  # ClassificationTask (eval mode) or a fitted scikit-learn estimator
    mc: McDropout | None = None  # Monte Carlo dropout masks of a network
    scaler: Any = None  # a regression forest's TargetScaler (networks carry their own)
    aoa: AoaReference | None = None  # its training data, for the area of applicability

    @property
    def per_patch(self) -> bool:
        return self.spec.normalization == "per_patch"

    @property
    def num_classes(self) -> int:
        """Outputs per pixel: the classes, or 1 (the value) of a regression model."""
        return 1 if self.spec.regression else len(self.spec.class_names)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device if self.is_network else torch.device("cpu")

    @property
    def is_network(self) -> bool:
        return self.spec.kind in ("patch", "dense")


def _scene_stats(moments: dict[str, list[float]], spec: MemberSpec) -> BandStats:
    """The mapped scene's own band statistics (``test_area``), pooled over the dates."""
    where = {b: i for i, b in enumerate(moments["bands"])}
    idx = [where[b] for b in spec.bands]
    n, s, q = (np.asarray(moments[k], dtype=np.float64)[idx] for k in ("count", "sum", "sumsq"))
    if spec.time_steps > 1:
        n, s, q = (np.tile(v.reshape(spec.time_steps, -1).sum(axis=0), spec.time_steps)
                   for v in (n, s, q))
    mean = np.divide(s, n, out=np.zeros_like(s), where=n > 0)
    var = np.divide(q, n, out=np.ones_like(q), where=n > 0) - mean ** 2
    std = np.sqrt(np.clip(var, 0.0, None))
    return BandStats(bands=list(spec.bands), mean=mean, std=np.where(std < MIN_STD, 1.0, std))


def load_member(spec: MemberSpec, moments: dict[str, list[float]] | None = None,
                device: str = "cpu", mc_dropout: int = 0) -> LoadedMember:
    """Load a member's model and statistics (``moments``: the scene's, for test_area runs)
    onto ``device``, with dropout active when ``mc_dropout``.

    Raises:
        ConfigError: the checkpoint holds a multi-label model, or MC dropout without dropout.
    """
    from pathlib import Path

    run = Path(spec.run_dir)
    stats = BandStats.load(run / "normalization.json")
    if spec.normalization == "test_area" and moments is not None:
        stats = _scene_stats(moments, spec)
    if spec.kind in ("patch_forest", "pixel_forest"):
        import joblib

        return LoadedMember(spec, stats, joblib.load(spec.model_file),
                            scaler=_scaler(spec) if spec.regression else None)
    from geofuse.evaluation.evaluate import load_task

    task, _ = load_task(Path(spec.model_file))
    if task.multilabel:
        raise ConfigError(f"run {spec.run_dir!r} is multi-label; 'geofuse predict' maps "
                          "single-label and segmentation runs only")
    task = task.to(device)
    if spec.kind == "patch":  # 1.8-2.2x faster SimpleCNN passes on CPU (max pooling above all)
        task = task.to(memory_format=torch.channels_last)
    mc = McDropout(task, f"run {spec.run_dir!r}") if mc_dropout else None
    return LoadedMember(spec, stats, task, mc)


def _scaler(spec: MemberSpec) -> Any:
    from geofuse.training._regression import TargetScaler

    return TargetScaler(**spec.target_scaler)


def pixel_nodata(raw: np.ndarray, time_steps: int) -> np.ndarray:
    """(H, W) nodata mask of raw bands (C, H, W): any band NaN; of a time series (T dates),
    a band without a value at any date (a cloudy date alone is expected and filled)."""
    nan = np.isnan(raw)
    if time_steps <= 1:
        return nan.any(axis=0)
    return nan.reshape(time_steps, -1, *raw.shape[1:]).all(axis=0).any(axis=0)


def _channels(member: LoadedMember, bands: list[str], raw: np.ndarray) -> np.ndarray:
    where = {b: i for i, b in enumerate(bands)}
    return raw[[where[b] for b in member.spec.bands]]


def _dihedral_np(x: np.ndarray, k: int, flip: bool) -> np.ndarray:
    out = np.rot90(x, k, axes=(-2, -1))
    return out[..., ::-1] if flip else out


@torch.inference_mode()
def _patch_batch(member: LoadedMember, x: np.ndarray, tta: bool,
                 aoa: list[np.ndarray] | None = None) -> np.ndarray:
    """(B, K) probabilities of patches (B, C, P, P): normalised for networks, raw for forests;
    of a regression model (B, 1) values in the target's unit (TTA: their mean). With ``aoa``
    (a network without TTA) the same forward pass appends the patches' ``DI / threshold``."""
    from geofuse.evaluation.tta import DIHEDRAL, dihedral

    if member.spec.kind == "patch_forest":
        from geofuse.models.forest import patch_features
        from geofuse.models.pixel_forest import class_probabilities

        means = np.asarray(member.stats.mean)
        views = [_dihedral_np(x, k, f) for k, f in DIHEDRAL] if tta else [x]
        feats = [patch_features(np.ascontiguousarray(v), member.spec.features, means)
                 for v in views]
        if member.scaler is not None:
            return np.mean([member.scaler.decode_numpy(member.model.predict(f))[:, None]
                            for f in feats], axis=0)
        return np.mean([class_probabilities(member.model, f, member.num_classes)
                        for f in feats], axis=0)
    from geofuse.data.transforms import standardize_patches
    from geofuse.evaluation.tta import tta_probabilities

    image = torch.from_numpy(x).to(member.device)
    if member.per_patch:
        image = standardize_patches(image)
    image = image.contiguous(memory_format=torch.channels_last)
    task = member.model
    if aoa is not None and member.aoa is not None:  # one pass: output and its features
        out, feats = forward_with_features(task, image)
        aoa.append(member.aoa.dissimilarity(feats.cpu().numpy()))
        out = task.scaler.decode(out[:, 0])[:, None] if member.spec.regression else \
            out.softmax(dim=1)
        return out.float().cpu().numpy()
    if member.spec.regression:
        views = DIHEDRAL if tta else DIHEDRAL[:1]
        values = torch.stack([task.scaler.decode(task(dihedral(image, k, f))[:, 0])
                              for k, f in views]).mean(dim=0)
        return values[:, None].float().cpu().numpy()
    probs = tta_probabilities(task, image) if tta else task(image).softmax(dim=1)
    return probs.float().cpu().numpy()


def _patch_engine(members: list[LoadedMember], bands: list[str], raw: np.ndarray,
                  origin: tuple[int, int], rows: np.ndarray, cols: np.ndarray,
                  valid: np.ndarray, params: EngineParams
                  ) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Per member and pass, probabilities (K, n_rows, n_cols) of the patches centred on the
    grid ``rows`` x ``cols`` (NaN where not ``valid``), and with AOA references the members'
    mean ``DI / threshold`` (n_rows, n_cols) of those patches."""
    batch, tta = params.batch_size, params.tta
    size = members[0].spec.patch_size
    before, _ = patch_halo(size)
    vi, vj = np.nonzero(valid)
    top, left = rows[vi] - before - origin[0], cols[vj] - before - origin[1]
    out, ratios = [], []
    for m in members:
        x = _channels(m, bands, raw)
        if m.spec.kind != "patch_forest":
            x = normalize(x, m.stats)
        hwc = np.ascontiguousarray(np.moveaxis(x, 0, -1))
        view = sliding_window_view(hwc, (size, size), axis=(0, 1))  # (R, C', C, P, P)
        # a network without TTA or dropout passes measures in its own forward pass
        fused = m.aoa is not None and m.spec.kind == "patch" and not tta and m.mc is None
        if m.aoa is not None:
            ratio = np.full((len(rows), len(cols)), np.nan, dtype=np.float32)
            for s in range(0, 0 if fused else len(vi), batch):
                feats = member_features(m, view[top[s:s + batch], left[s:s + batch]])
                ratio[vi[s:s + batch], vj[s:s + batch]] = m.aoa.dissimilarity(feats)
            ratios.append(ratio)
        for k in range(member_passes(m.spec.kind, params.mc_dropout)):
            if m.mc is not None:
                m.mc.set_pass(k)
            probs = np.full((m.num_classes, len(rows), len(cols)), np.nan, dtype=np.float32)
            for s in range(0, len(vi), batch):
                found: list[np.ndarray] | None = [] if fused else None
                p = _patch_batch(m, np.ascontiguousarray(view[top[s:s + batch],
                                                              left[s:s + batch]]), tta, found)
                probs[:, vi[s:s + batch], vj[s:s + batch]] = p.T
                if found:
                    ratio[vi[s:s + batch], vj[s:s + batch]] = found[0]
            out.append(probs)
    return out, (np.mean(ratios, axis=0) if ratios else None)


@torch.inference_mode()
def _dense_member(m: LoadedMember, x: np.ndarray, tile: int, batch: int, tta: bool,
                  skip: np.ndarray) -> np.ndarray:
    """Blended probabilities (K, R, C') of a dense network over a normalised region x
    (C, R, C') whose sides are whole hops plus a tile (of a dense regression network the
    value (1, R, C') in the target's unit); tiles flagged in ``skip`` are not run."""
    from geofuse.data.transforms import standardize_patches
    from geofuse.evaluation.dense_evaluate import dense_values
    from geofuse.evaluation.seg_evaluate import mask_probabilities

    hop = tile // 2
    tiles = torch.from_numpy(x).unfold(1, tile, hop).unfold(2, tile, hop)  # C, nR, nC, T, T
    weights = torch.from_numpy(blend_weights(tile))
    acc = torch.zeros((m.num_classes, *x.shape[1:]))
    wsum = torch.zeros(x.shape[1:])
    todo = [(i, j) for i in range(tiles.shape[1]) for j in range(tiles.shape[2])
            if not skip[i, j]]
    for s in range(0, len(todo), batch):
        part = todo[s:s + batch]
        image = torch.stack([tiles[:, i, j] for i, j in part]).to(m.device)
        if m.per_patch:
            image = standardize_patches(image)
        probs = (dense_values(m.model, image, tta)[:, None] if m.spec.regression
                 else mask_probabilities(m.model, image, tta)).float().cpu()
        for (i, j), p in zip(part, probs, strict=True):
            acc[:, i * hop:i * hop + tile, j * hop:j * hop + tile] += p * weights
            wsum[i * hop:i * hop + tile, j * hop:j * hop + tile] += weights
    return (acc / wsum.clamp(min=1e-12)).numpy()


def _pixel_forest(m: LoadedMember, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(K, H, W) probabilities of a per-pixel forest over raw bands x (C, H, W)."""
    from geofuse.models.pixel_forest import class_probabilities, pixel_features

    values = np.moveaxis(x, 0, -1)[valid]
    probs = np.full((m.num_classes, *valid.shape), np.nan, dtype=np.float32)
    out = np.empty((len(values), m.num_classes), dtype=np.float32)
    for s in range(0, len(values), PIXEL_CHUNK):
        feats = pixel_features(values[s:s + PIXEL_CHUNK], np.asarray(m.stats.mean),
                               m.spec.time_steps, m.spec.features)
        out[s:s + PIXEL_CHUNK] = (
            class_probabilities(m.model, feats, m.num_classes) if m.scaler is None
            else m.scaler.decode_numpy(m.model.predict(feats))[:, None])  # a value per pixel
    probs[:, valid] = out.T
    return probs


@dataclass(frozen=True)
class EngineParams:
    """How windows are mapped: stride (patch classifiers), model tile side (dense models),
    batch size (patches or tiles per forward pass), test-time augmentation, Monte Carlo
    dropout passes (0 = off) and the networks' torch device."""

    stride: int
    tile: int
    batch_size: int
    tta: bool
    mc_dropout: int = 0
    device: str = "cpu"


class WindowEngine:
    """Maps windows of one stack with one or more loaded members."""

    def __init__(self, members: list[LoadedMember], source: SceneSource,
                 params: EngineParams) -> None:
        self.members = members
        self.source = source
        self.params = params
        self.kind = members[0].spec.kind
        self.height, self.width = source.info.grid.height, source.info.grid.width
        #: ``DI / threshold`` (h, w) of the last window mapped, with AOA references
        self.dissimilarity: np.ndarray | None = None

    def member_probabilities(self, w: MapWindow) -> tuple[list[np.ndarray], np.ndarray]:
        """Per member (K, h, w) probabilities (NaN = no class) and the (h, w) nodata mask."""
        if self.kind in ("patch", "patch_forest"):
            return self._patches(w)
        steps = self.members[0].spec.time_steps
        if self.kind == "pixel_forest":
            raw = self.source.read(w.row, w.col, w.height, w.width)
            nodata = pixel_nodata(raw, steps)
            bands = self.source.bands
            return [_pixel_forest(m, _channels(m, bands, raw), ~nodata)
                    for m in self.members], nodata
        return self._dense(w)

    def _patches(self, w: MapWindow) -> tuple[list[np.ndarray], np.ndarray]:
        spec, s = self.members[0].spec, self.params.stride
        size = spec.patch_size
        before, after = patch_halo(size)
        rows, cols = cell_centres(w.row, w.height, s), cell_centres(w.col, w.width, s)
        r0, c0 = min(w.row, int(rows[0]) - before), min(w.col, int(cols[0]) - before)
        r1 = max(w.row + w.height, int(rows[-1]) + after + 1)
        c1 = max(w.col + w.width, int(cols[-1]) + after + 1)
        raw = self.source.read(r0, c0, r1 - r0, c1 - c0)
        nodata = pixel_nodata(raw, spec.time_steps)
        share = box_share(nodata, size)[np.ix_(rows - before - r0, cols - before - c0)]
        inside_r = (rows - before >= 0) & (rows + after < self.height)
        inside_c = (cols - before >= 0) & (cols + after < self.width)
        valid = inside_r[:, None] & inside_c[None, :] & (share <= spec.max_nodata + 1e-9)
        cells, ratio = _patch_engine(self.members, self.source.bands, raw, (r0, c0), rows,
                                     cols, valid, self.params)
        probs = [expand_cells(p, s, w.height, w.width) for p in cells]
        self.dissimilarity = (None if ratio is None else
                              expand_cells(ratio[None], s, w.height, w.width)[0])
        window_nodata = nodata[w.row - r0:w.row - r0 + w.height, w.col - c0:w.col - c0 + w.width]
        return probs, window_nodata

    def _dense(self, w: MapWindow) -> tuple[list[np.ndarray], np.ndarray]:
        tile, steps = self.params.tile, self.members[0].spec.time_steps
        starts_r = dense_tile_starts(w.row, w.row + w.height, tile)
        starts_c = dense_tile_starts(w.col, w.col + w.width, tile)
        r0, c0 = int(starts_r[0]), int(starts_c[0])
        raw = self.source.read(r0, c0, int(starts_r[-1]) + tile - r0,
                               int(starts_c[-1]) + tile - c0)
        nodata = pixel_nodata(raw, steps)
        hop = tile // 2
        skip = np.array([[nodata[i * hop:i * hop + tile, j * hop:j * hop + tile].all()
                          for j in range(len(starts_c))] for i in range(len(starts_r))])
        crop = (slice(w.row - r0, w.row - r0 + w.height), slice(w.col - c0, w.col - c0 + w.width))
        probs = []
        for m in self.members:
            x = normalize(_channels(m, self.source.bands, raw), m.stats)
            for k in range(member_passes(m.spec.kind, self.params.mc_dropout)):
                if m.mc is not None:
                    m.mc.set_pass(k)
                p = _dense_member(m, x, tile, self.params.batch_size, self.params.tta, skip)
                probs.append(p[:, crop[0], crop[1]])
        return probs, nodata[crop]


def summarise(member_probs: list[np.ndarray], nodata: np.ndarray) -> dict[str, np.ndarray]:
    """Classes (uint8, 255 = nodata), probabilities (uint8 percent, 255 = nodata) and
    uncertainty bands (float32, NaN = nodata) of a window from its members' probabilities.

    Uncertainty bands: predictive entropy of the mean probabilities divided by ln K (0 = sure,
    1 = uniform), 1 - max probability and, with several members, ``member_std`` and
    ``vote_disagreement`` (see the module docstring).
    """
    stack = np.stack(member_probs).astype(np.float32)  # (M, K, h, w)
    mean = stack.mean(axis=0)
    invalid = nodata | ~np.isfinite(mean).all(axis=0)
    safe = np.where(invalid[None], 1.0 / mean.shape[0], mean)
    classes = safe.argmax(axis=0).astype(np.uint8)
    k = mean.shape[0]
    entropy = -(safe * np.log(np.clip(safe, 1e-12, None))).sum(axis=0)
    bands = [entropy / math.log(k) if k > 1 else np.zeros_like(entropy),
             1.0 - safe.max(axis=0)]
    if len(member_probs) > 1:
        finite = np.where(invalid[None, None], 0.0, stack)
        bands.append(finite.std(axis=0).mean(axis=0))
        votes = (finite.argmax(axis=1) == classes[None]).mean(axis=0)
        bands.append(1.0 - votes)
    uncertainty = np.stack(bands).astype(np.float32)
    uncertainty[:, invalid] = np.nan
    percent = np.rint(np.clip(safe, 0, 1) * 100).astype(np.uint8)
    percent[:, invalid] = 255
    classes[invalid] = 255
    return {"classes": classes, "probabilities": percent, "uncertainty": uncertainty}


def uncertainty_names(n_members: int, regression: bool = False) -> list[str]:
    """Band names of ``uncertainty.tif`` (a regression map: the members' spread alone, and
    none for one member)."""
    if regression:
        return ["member_std"] if n_members > 1 else []
    names = ["entropy", "one_minus_max_probability"]
    return [*names, "member_std", "vote_disagreement"] if n_members > 1 else names


#: Loaded engines of this process, by context key (a worker loads its models once).
_ENGINES: dict[str, WindowEngine] = {}


def compute_window(ctx: dict[str, Any], cell: dict[str, Any]) -> dict[str, Any]:
    """Worker entry point: map one window (``cell``: :meth:`MapWindow.to_dict`) with the
    members and stack of ``ctx``; returns the window and its :func:`summarise` arrays."""
    from geofuse.mapping.scene import DerivedBand, SceneSpec, scene_info

    if ctx.get("threads"):
        torch.set_num_threads(int(ctx["threads"]))
    engine = _ENGINES.get(ctx["key"])
    if engine is None:
        release_engines()
        params = EngineParams(**ctx["params"])  # its device resolved on this machine
        params = replace(params, device=resolve_device(params.device))
        specs = [MemberSpec(**s) for s in ctx["members"]]
        members = [load_member(s, ctx.get("moments"), params.device, params.mc_dropout)
                   for s in specs]
        if ctx.get("aoa"):  # the references file the command wrote
            for m, ref in zip(members, load_references(ctx["aoa"]), strict=True):
                m.aoa = ref
        scene = SceneSpec(**ctx["scene"])
        source = SceneSource(scene, scene_info(scene), list(ctx["bands"]),
                             [DerivedBand(**d) for d in ctx.get("derived") or []])
        engine = WindowEngine(members, source, params)
        _ENGINES[ctx["key"]] = engine
    window = MapWindow.from_dict(cell)
    probs, nodata = engine.member_probabilities(window)
    if engine.members[0].spec.regression:
        from geofuse.mapping.values import summarise_values

        out = {"window": window.to_dict(), **summarise_values(probs, nodata)}
        mapped = np.isfinite(out["values"][0])
    else:
        out = {"window": window.to_dict(), **summarise(probs, nodata)}
        mapped = out["classes"] != 255
    if engine.dissimilarity is not None:
        from geofuse.mapping.aoa_outputs import aoa_bands

        out["aoa"] = aoa_bands(engine.dissimilarity, mapped)
    return out


def release_engines() -> None:
    """Close the stacks and drop the models cached by :func:`compute_window`."""
    for engine in _ENGINES.values():
        engine.source.close()
    _ENGINES.clear()
