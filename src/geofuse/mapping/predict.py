"""``geofuse predict``: a run (or a study's best configuration) + a scene -> map products.

The scene is a fused stack, or a study config whose sensor rasters are aligned on the fly
(:mod:`geofuse.mapping.scene`). Flow: check the scene against the run (bands, CRS, pixel
size); cut the scene into output
windows (:mod:`geofuse.mapping.windows`); map each window (:mod:`geofuse.mapping.infer`), in
this process, in ``--workers`` processes or on Ray, and write it into partial GeoTIFFs in
``OUT/.predict-partial/`` (the parent alone writes); then publish COGs, the quicklook and
``predict.json`` (:mod:`geofuse.mapping.outputs`).

Resume: ``.predict-partial/state.json`` holds a fingerprint of what determines the map (the
members' model files, the stack, stride, tile and window sizes, TTA) and ``done.txt`` one line
per window whose pixels are on disk (appended after the window's files were closed). Running
the same command again maps only the windows not listed; a different fingerprint, or a partial
file a kill left unreadable, starts over. Memory is bounded by a window (plus its halo) and
one batch, whatever the scene size.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from geofuse import __version__
from geofuse.errors import ConfigError
from geofuse.io_utils import atomic_write_json
from geofuse.mapping import outputs
from geofuse.mapping.aoa import AoaReference
from geofuse.mapping.aoa_members import aoa_references, reference_files, save_references
from geofuse.mapping.aoa_outputs import aoa_product, outside_shares, publish_aoa_figure
from geofuse.mapping.infer import (
    compute_window,
    load_member,
    release_engines,
    uncertainty_names,
)
from geofuse.mapping.members import MapSource, grid_reference, resolve_source
from geofuse.mapping.passes import check_mc_dropout, member_passes, resolve_device
from geofuse.mapping.scene import (
    DerivedBand,
    SceneSource,
    SceneSpec,
    base_bands,
    check_derivable,
    resolve_db,
    scene_files,
    scene_info,
)
from geofuse.mapping.stack import StackInfo, band_moments, check_stack
from geofuse.mapping.values import build_value_products, publish_values, value_stats
from geofuse.mapping.windows import (
    MapWindow,
    block_size,
    dense_tile_size,
    dense_window_size,
    patch_window_size,
    scene_windows,
)
from geofuse.progress_bars import step_progress
from geofuse.raster.io import gdal_env

PARTIAL_DIR = ".predict-partial"
RECORD = "predict.json"
#: Input pixels per forward pass by default: 4 tiles of 256 x 256 px for dense models.
BATCH_PIXELS = 2**18
#: Patches per forward pass of a patch classifier by default: on a 2-core CPU SimpleCNN runs
#: 1.6x faster in batches of 256 than of 4096 (benchmarks/mapping.py).
PATCH_BATCH = 256
#: GDAL block cache while mapping (MB), unless GDAL_CACHEMAX is set: GDAL's default (5% of the
#: RAM) grew a 10,000 px map by 1.2 GB; windows are read once, a cache does not help them.
GDAL_CACHE_MB = 256


@dataclass(frozen=True)
class PredictOptions:
    """Options of ``geofuse predict``.

    Attributes:
        stride: patch classifiers classify the patch centred on every ``stride``-th pixel
            (1 = every pixel); the class fills its stride x stride cell. Dense models map every
            pixel (a larger stride is ignored with a warning).
        tile_size: dense models: the model tile side (neighbours overlap by half and are
            blended); patch classifiers: the side of the windows read and written at once.
        tta: average the probabilities over the 8 flips and rotations.
        probabilities: also write ``probabilities.tif``.
        workers: windows mapped in parallel processes.
        batch_size: patches (or dense tiles) per forward pass; default
            :data:`BATCH_PIXELS` input pixels, at most 4096 patches.
        ray_address: map the windows as Ray tasks on this cluster ('local' starts one).
        mc_dropout: networks: this many stochastic passes with dropout active (Monte Carlo
            dropout), each a member of the uncertainty outputs; 0 = off.
        device: torch device of the networks: ``auto`` (CUDA when visible), ``cpu``,
            ``cuda`` or ``cuda:N``.
        aoa: also write ``aoa.tif``, the area of applicability (:mod:`geofuse.mapping.aoa`).
    """

    stride: int = 1
    tile_size: int = 256
    tta: bool = False
    probabilities: bool = False
    workers: int = 1
    batch_size: int | None = None
    ray_address: str | None = None
    mc_dropout: int = 0
    device: str = "auto"
    aoa: bool = False


@dataclass(frozen=True)
class _Plan:
    source: MapSource
    scene: SceneSpec
    stack: StackInfo
    kind: str
    stride: int
    tile: int
    window: int
    batch: int
    windows: list[MapWindow]


def _plan(source: MapSource, scene: SceneSpec, stack: StackInfo, opts: PredictOptions
          ) -> _Plan:
    if opts.stride < 1 or opts.tile_size < 1 or opts.workers < 1:
        raise ConfigError(f"stride ({opts.stride}), tile size ({opts.tile_size}) and workers "
                          f"({opts.workers}) must be >= 1")
    check_mc_dropout(opts.mc_dropout)
    kind = source.first.kind
    if opts.mc_dropout and kind in ("patch_forest", "pixel_forest"):
        raise ConfigError(f"--mc-dropout {opts.mc_dropout}: {source.first.model} is a "
                          "scikit-learn baseline without dropout; map it without --mc-dropout")
    stride = opts.stride
    if kind in ("dense", "pixel_forest") and stride > 1:
        warnings.warn(f"--stride {stride} is ignored: {source.first.model} gives a class per "
                      "pixel and maps every pixel", UserWarning, stacklevel=3)
        stride = 1
    if kind == "dense":
        tile = dense_tile_size(opts.tile_size)
        window = dense_window_size(tile)
    else:
        tile = max(16, opts.tile_size)
        window = patch_window_size(tile, stride)
    side = tile if kind == "dense" else source.first.patch_size
    batch = opts.batch_size or (max(1, BATCH_PIXELS // side ** 2) if kind == "dense" else
                                max(1, min(PATCH_BATCH, BATCH_PIXELS // side ** 2)))
    grid = stack.grid
    return _Plan(source, scene, stack, kind, stride, tile, window, batch,
                 scene_windows(grid.height, grid.width, window))


def _file_key(path: str | Path) -> list[Any]:
    st = Path(path).stat()
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


def _fingerprint(plan: _Plan, opts: PredictOptions) -> str:
    aoa = [_file_key(p) for p in reference_files(plan.source.members)] if opts.aoa else False
    key = {"members": [_file_key(m.model_file) for m in plan.source.members],
           "stack": [_file_key(p) for p in scene_files(plan.scene)], "stride": plan.stride,
           "tile": plan.tile, "window": plan.window, "tta": opts.tta,
           "mc_dropout": opts.mc_dropout, "bands": plan.source.bands, "aoa": aoa,
           "version": 2}
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


class _Partial:
    """The partial products and the record of finished windows (see the module docstring)."""

    def __init__(self, out: Path, products: dict[str, outputs.Product]) -> None:
        self.folder = out / PARTIAL_DIR
        self.products = products
        self.state = self.folder / "state.json"
        self.done_file = self.folder / "done.txt"

    def path(self, name: str) -> Path:
        return self.folder / self.products[name].filename

    def done(self, fingerprint: str) -> set[int]:
        """Indices of finished windows of this fingerprint (empty: start over)."""
        try:
            state = json.loads(self.state.read_text())
        except (OSError, ValueError):
            return set()
        if state.get("fingerprint") != fingerprint or not all(
                outputs.readable(self.path(n)) for n in self.products):
            return set()
        if not self.done_file.is_file():
            return set()
        text = self.done_file.read_text()
        lines = text[: text.rfind("\n") + 1].split()  # a line cut short by a kill is dropped
        return {int(v) for v in lines if v.isdigit()}

    def start(self, fingerprint: str, plan: _Plan) -> None:
        """A fresh partial folder: empty products, no finished window."""
        outputs.remove_tree(self.folder)
        self.folder.mkdir(parents=True)
        for name, product in self.products.items():
            outputs.create_partial(self.path(name), plan.stack.grid, product,
                                   block_size(plan.window))
        self.done_file.write_text("")
        atomic_write_json(self.state, {"fingerprint": fingerprint, "windows": len(plan.windows)})

    def write(self, result: dict[str, Any]) -> None:
        """Write one window's arrays, then record the window as finished."""
        window = MapWindow.from_dict(result["window"])
        for name in self.products:
            outputs.write_window(self.path(name), window.row, window.col, result[name])
        with self.done_file.open("a") as f:
            f.write(f"{window.index}\n")


def _derived(source: MapSource) -> list[DerivedBand]:
    return list({d["name"]: DerivedBand(**d) for m in source.members for d in m.derived
                 }.values())


def _context(plan: _Plan, opts: PredictOptions, fingerprint: str, device: str,
             derived: list[DerivedBand], aoa: Path | None) -> dict[str, Any]:
    moments = None
    if any(m.normalization == "test_area" for m in plan.source.members):
        with SceneSource(plan.scene, plan.stack, plan.source.bands, derived) as scene:
            moments = band_moments(scene)
    return {"key": f"{fingerprint}-{plan.batch}-{device}",  # a worker's models and scene
            "members": [m.to_dict() for m in plan.source.members],
            "scene": plan.scene.to_dict(), "derived": [d.to_dict() for d in derived],
            "bands": plan.source.bands, "moments": moments,
            "aoa": str(aoa) if aoa else None,
            "params": {"stride": plan.stride, "tile": plan.tile, "batch_size": plan.batch,
                       "tta": opts.tta, "mc_dropout": opts.mc_dropout,
                       "device": device},
            "threads": None}


def _run_windows(ctx: dict[str, Any], cells: list[dict[str, Any]], opts: PredictOptions,
                 on_done: Callable[[dict[str, Any]], None]) -> None:
    """Map ``cells`` serially, in worker processes or on Ray; ``on_done`` in this process."""
    from geofuse.experiments import _parallel

    if opts.ray_address:  # one CPU and one torch thread per task, as study cells
        _parallel.run_ray(compute_window, {**ctx, "threads": 1}, cells, opts.ray_address, 1.0,
                          on_done,
                          local_cpus=opts.workers if opts.workers > 1 else None)
    elif opts.workers > 1 and len(cells) > 1:
        workers = min(opts.workers, len(cells))
        ctx = {**ctx, "threads": _parallel.threads_per_worker(workers)}
        _parallel.run_pool(compute_window, ctx, cells, workers, on_done)
    else:
        try:
            for cell in cells:
                on_done(compute_window(ctx, cell))
        finally:
            release_engines()


def _areas(plan: _Plan, counts: list[int]) -> dict[str, Any]:
    t = plan.stack.grid.transform
    pixel = abs(t.a * t.e - t.b * t.d)
    units = (plan.stack.grid.crs.linear_units or "").lower()
    metres = units in ("metre", "meter", "metres", "meters", "m")
    total = max(sum(counts), 1)
    return {name: {"pixels": n, "share": n / total,
                   "area": n * pixel, "area_ha": n * pixel / 1e4 if metres else None}
            for name, n in zip(plan.source.first.class_names, counts, strict=True)}


def _publish(plan: _Plan, partial: _Partial, out: Path, opts: PredictOptions,
             ) -> dict[str, str]:
    first = plan.source.first
    if "aoa" not in partial.products:  # an earlier map's area of applicability
        for name in ("aoa.tif", "aoa.png"):
            (out / name).unlink(missing_ok=True)
    if first.regression:
        written = publish_values(partial.products, partial.path, out, first.value_name,
                                 f"{first.model}: {plan.stack.path.name}")
        return {**written, **publish_aoa_figure(out, written, first.model)}
    (out / "values.tif").unlink(missing_ok=True)  # an earlier regression map's
    names = ["classes", "uncertainty"] + (["probabilities"] if opts.probabilities else [])
    names += ["aoa"] if "aoa" in partial.products else []
    written = {}
    for name in names:
        product = partial.products[name]
        written[name] = outputs.publish(partial.path(name), out / product.filename,
                                        product).name
    if not opts.probabilities:  # an earlier map's probabilities would not match this one
        (out / partial.products["probabilities"].filename).unlink(missing_ok=True)
    title = f"{plan.source.first.model}: {plan.stack.path.name}"
    fig = outputs.quicklook_figure(out / "classes.tif", plan.source.first.class_names, title)
    written["quicklook"] = outputs.save_figure(fig, out / "quicklook.png").name
    return {**written, **publish_aoa_figure(out, written, first.model)}


def _record(plan: _Plan, opts: PredictOptions, out: Path, files: dict[str, str],
            partial: _Partial, timings: dict[str, float], resumed: int,
            ctx: dict[str, Any], references: list[AoaReference]) -> dict[str, Any]:
    grid = plan.stack.grid
    src = plan.source
    if src.first.regression:
        summary: dict[str, Any] = {"value_name": src.first.value_name,
                                   "value_stats": value_stats(out / files["values"])}
    else:
        k = len(src.first.class_names)
        counts, nodata = outputs.class_counts(out / files["classes"], k)
        summary = {"counts": dict(zip(src.first.class_names, counts.tolist(), strict=True)),
                   "nodata_pixels": nodata, "areas": _areas(plan, counts.tolist()),
                   "area_unit": f"{grid.crs.linear_units or 'CRS unit'} squared"}
    if "aoa" in files:
        summary["aoa"] = {
            "members": [r.summary() for r in references],
            **outside_shares(out / files["aoa"], out / files["classes"] if "classes" in files
                             else None, src.first.class_names)}
    return {
        "created_by": "geofuse predict", "geofuse_version": __version__,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": {"kind": src.kind, "path": str(src.path), "config_id": src.config_id,
                   "members": [m.run_dir for m in src.members]},
        "model": src.first.model, "engine": plan.kind, "patch_size": src.first.patch_size,
        "stack": str(plan.stack.path),
        "scene": plan.scene.to_dict(),
        "grid": {"crs": grid.crs_string(), "transform": list(grid.transform)[:6],
                 "width": grid.width, "height": grid.height},
        "bands": src.bands, "class_names": src.first.class_names,
        "normalization": src.first.normalization,
        "stride": plan.stride, "tile_size": plan.tile, "window_size": plan.window,
        "tta": opts.tta, "mc_dropout": opts.mc_dropout, "device": ctx["params"]["device"],
        "derived_bands": ctx["derived"], "batch_size": plan.batch,
        "workers": opts.workers,
        "ray": opts.ray_address,
        "products": files,
        "uncertainty_bands": partial.products["uncertainty"].descriptions
        if "uncertainty" in partial.products else [],
        **summary,
        "windows": {"total": len(plan.windows), "resumed": resumed,
                    "computed": len(plan.windows) - resumed},
        "timings_s": {k2: round(v, 3) for k2, v in timings.items()},
    }


def predict_map(
    source: str | Path | MapSource, stack: str | Path | SceneSpec, out: str | Path,
    options: PredictOptions | None = None, progress: bool = True,
    on_window: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Map ``stack`` with the run or study ``source`` into the folder ``out``.

    Args:
        source: a run directory, or a study directory (``study.json``): the fold models of
            its best configuration form an ensemble; or either, already resolved.
        stack: the fused stack (any GeoTIFF holding the run's bands, named), or a
            :class:`~geofuse.mapping.scene.SceneSpec` (``config``: a study YAML whose
            modalities are aligned on the fly).
        out: output folder (created); see :mod:`geofuse.mapping.outputs` for the products.
        options: stride, tile size, TTA, probabilities, workers, batch size, Ray, MC
            dropout, device.
        progress: show a progress bar on stderr.
        on_window: called in this process after each window is on disk with the number of
            windows finished in this session (tests interrupt a run from it).

    Returns:
        The ``predict.json`` record.

    Raises:
        RunDirError, ConfigError: an unusable run or study (see
            :func:`~geofuse.mapping.members.resolve_source`).
        BandError, AlignmentError: the scene lacks a band, or is in another CRS or pixel size.
        DataNotFoundError, RasterError: the stack (or a config's raster) is missing or
            unreadable.
    """
    opts = options or PredictOptions()
    if "GDAL_CACHEMAX" in os.environ:  # the user's own setting
        return _predict_map(source, stack, out, opts, progress, on_window)
    os.environ["GDAL_CACHEMAX"] = str(GDAL_CACHE_MB)  # worker processes inherit it
    try:
        with gdal_env(GDAL_CACHE_MB):
            return _predict_map(source, stack, out, opts, progress, on_window)
    finally:
        del os.environ["GDAL_CACHEMAX"]


def _predict_map(
    source: str | Path | MapSource, stack: str | Path | SceneSpec, out: str | Path,
    opts: PredictOptions,
    progress: bool, on_window: Callable[[int], None] | None,
) -> dict[str, Any]:
    """:func:`predict_map` inside its GDAL settings."""
    started = time.perf_counter()
    src = source if isinstance(source, MapSource) else resolve_source(source)
    # with Ray, "auto" is resolved by each task on its own node
    device = opts.device if opts.ray_address else resolve_device(opts.device)
    scene = stack if isinstance(stack, SceneSpec) else SceneSpec("stack", str(stack))
    info = scene_info(scene)
    derived = _derived(src)
    check_derivable(info, derived, scene.kind, src.describe())
    check_stack(info, base_bands(src.bands, derived, info.bands),
                grid_reference(src.first.run_dir), src.describe(), scene.kind)
    plan = _plan(src, scene, info, opts)
    if opts.mc_dropout:  # a model without dropout fails here, before anything is written
        load_member(src.first, None, "cpu", opts.mc_dropout)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    members = len(src.members) * member_passes(plan.kind, opts.mc_dropout)
    if src.first.regression:
        if opts.probabilities:
            raise ConfigError(f"--probabilities: {src.describe()} estimates "
                              f"{src.first.value_name!r}, a value without class probabilities;"
                              " map it without --probabilities")
        products = build_value_products(src.first.value_name,
                                        uncertainty_names(members, regression=True))
    else:
        products = outputs.build_products(src.first.class_names, uncertainty_names(members),
                                          src.first.label_codes, src.first.label_unlabelled)
    references = (aoa_references(src.members, resolve_device(opts.device), progress)
                  if opts.aoa else [])
    if references:
        products["aoa"] = aoa_product(references)
    partial = _Partial(out, products)
    fingerprint = _fingerprint(plan, opts)
    done = partial.done(fingerprint)
    if not done:
        (out / RECORD).unlink(missing_ok=True)  # this folder no longer holds a finished map
        partial.start(fingerprint, plan)
    refs_file = partial.folder / "aoa_references.pkl" if references else None
    if refs_file is not None:
        save_references(references, refs_file)
    pending = [w.to_dict() for w in plan.windows if w.index not in done]
    derived = resolve_db(scene, info, derived)
    ctx = _context(plan, opts, fingerprint, device, derived, refs_file)
    mapped = 0
    with step_progress(progress) as bar:
        task = bar.add_task(f"map {info.grid.width}x{info.grid.height} px, windows",
                            total=len(plan.windows), completed=len(done))

        def on_done(result: dict[str, Any]) -> None:
            nonlocal mapped
            partial.write(result)
            mapped += 1
            bar.advance(task)
            if on_window is not None:
                on_window(mapped)

        _run_windows(ctx, pending, opts, on_done)
    windows_s = time.perf_counter() - started
    files = _publish(plan, partial, out, opts)
    timings = {"windows": windows_s, "products": time.perf_counter() - started - windows_s}
    timings["total"] = time.perf_counter() - started
    record = _record(plan, opts, out, files, partial, timings, len(done), ctx, references)
    atomic_write_json(out / RECORD, record)
    outputs.remove_tree(partial.folder)
    return record
