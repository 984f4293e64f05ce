"""Pixels per second and peak memory of ``geofuse predict`` on a whole scene, against a naive
per-pixel loop (issue 14).

Scene: a synthetic 8-band float32 GeoTIFF of ``--size`` x ``--size`` px (tiled 256 x 256,
DEFLATE, written strip by strip so that memory stays small; named bands and the ``stack.json``
manifest ``geofuse prepare`` writes): four classes in smooth regions, class means plus noise.

Models: a SimpleCNN run directory (the default SimpleCNN on 8 x 8 patches, trained by
``train_model`` for one epoch on patches cut from one corner of the scene; the weights do not
change the throughput) and a dense ``unet_early`` run (one date, ResNet-18 encoder, tiny
decoder [16, 8, 8, 8, 8], untrained weights) written as ``geofuse train`` writes a segmentation
run. Both are run directories that ``geofuse predict`` maps.

geofuse: the ``geofuse predict`` command at stride 1 (``--workers`` processes) in its own
process, so that its peak RSS is its own: ``ru_maxrss`` of that process (from ``wait4``) and,
with workers, the peaks of the summed RSS and PSS of it and its workers, sampled every 0.1 s.
Its time is ``predict_map``'s own (``predict.json`` ``timings_s.total``): imports it makes,
model loading, every window, the COGs with overviews and the quicklook (not the interpreter
start). The naive loops run in this process after a warm-up forward pass.

Naive (a): a Python loop over pixels with the same model (``load_task``) and normalisation
(the run's ``normalization.json``): the rows the sample needs are read into memory once and
normalised (counted), then each pixel's 8 x 8 patch is sliced out and the patches are
classified in batches of 256 (softmax, argmax). Naive (b): the same loop, reading each patch
with a rasterio window read from the open stack. Both run on consecutive pixels of interior
rows (``--naive-pixels``, ``--naive-read-pixels``) and write nothing; their classes are
compared with geofuse's map at the same pixels (agreement printed). The ratio is geofuse
pixels/s over naive (a) pixels/s.

Run: ``.venv/bin/python benchmarks/mapping.py [--size 10000] [--stride 1] [--workers 1]
[--batch-size N] [--naive-pixels 100000] [--naive-read-pixels 2000] [--skip-dense] [--quick]
[--keep]``. ``--stride S`` maps the SimpleCNN at stride S (the memory of a large scene in less
time); its ratio is then per classified patch. The last line counts the network's
multiply-accumulates per patch and the rate each side reaches.
``--quick``: a 256 px scene, 2,000 + 200 naive pixels (the smoke test's size).
Target (issue 14): geofuse >= 20x the naive loop, peak RSS < 2 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.windows import Window

from geofuse.config import StudyConfig, dump_config, parse_config
from geofuse.data.normalize import BandStats, normalize
from geofuse.data.patchset import PatchSet
from geofuse.evaluation.evaluate import load_task
from geofuse.raster.manifest import StackManifest, manifest_path

BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11"]
CLASSES = ["water", "forest", "urban", "crop"]
MEANS = np.array([[300, 500, 400, 350, 300, 250, 200, 150],  # class x band reflectance
                  [400, 700, 300, 900, 1800, 2200, 2500, 1300],
                  [1500, 1400, 1600, 1700, 1750, 1800, 1800, 2100],
                  [600, 900, 700, 1200, 1900, 2300, 2600, 1900]], dtype=np.float32)
NOISE = 150.0
PATCH = 8
BLOCK = 256  #: GeoTIFF block side, and rows written at once
NAIVE_BATCH = 256
CRS = "EPSG:32633"
TINY_DECODER = [16, 8, 8, 8, 8]
DEFAULTS = {"size": 10_000, "naive_pixels": 100_000, "naive_read_pixels": 2_000}
QUICK = {"size": 256, "naive_pixels": 2_000, "naive_read_pixels": 200}


# -- scene and run directories ----------------------------------------------------------------
def layout(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Class (0-3) of pixels ``rows`` x ``cols`` (1-D): smooth regions of tens of px."""
    r, c = rows[:, None].astype(np.float64), cols[None, :].astype(np.float64)
    a = np.sin(r / 29.0) + np.cos(c / 37.0) > 0
    b = np.sin((r + c) / 53.0) + 0.5 * np.cos((r - c) / 17.0) > 0.3
    return (a.astype(np.int64) + 2 * b.astype(np.int64)).astype(np.int64)


def write_scene(path: Path, size: int, seed: int = 0) -> Path:
    """An 8-band float32 ``size`` x ``size`` px stack, written one strip of blocks at a time."""
    transform = Affine(10.0, 0.0, 400_000.0, 0.0, -10.0, 5_600_000.0)
    rng = np.random.default_rng(seed)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": len(BANDS),
               "dtype": "float32", "crs": CRS, "transform": transform, "nodata": np.nan,
               "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK, "compress": "deflate",
               "predictor": 3, "num_threads": "ALL_CPUS", "BIGTIFF": "IF_SAFER"}
    cols = np.arange(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, BLOCK):
            h = min(BLOCK, size - row)
            values = MEANS[layout(np.arange(row, row + h), cols)].transpose(2, 0, 1)
            values = values + rng.normal(0, NOISE, values.shape).astype(np.float32)
            dst.write(values, window=Window(0, row, size, h))
        dst.descriptions = tuple(BANDS)
    StackManifest(bands=BANDS, modalities={"s2": BANDS}, crs=CRS, transform=list(transform)[:6],
                  width=size, height=size).save(manifest_path(path))
    return path


def study_config(root: Path, stack: Path, model: dict[str, Any]) -> StudyConfig:
    """A study config whose fused stack is ``stack`` (the runs' reference grid)."""
    return parse_config({
        "name": "mapping-bench", "workdir": str(root / "work"), "seed": 3,
        "modalities": [{"name": "s2", "files": ["s2.tif"], "bands": BANDS}],
        "prepare": {"output": str(stack)}, "extract": {"patch_size": PATCH},
        "train": {"epochs": 1, "batch_size": 64, "model": model, "accelerator": "cpu"},
    }, root)


def training_patches(stack: Path, n: int, seed: int = 0) -> PatchSet:
    """``n`` labelled patches at random centres of the scene's top-left corner (at most
    512 x 512 px, read once), labelled by the class at the centre."""
    with rasterio.open(stack) as src:
        side = min(512, src.width, src.height)
        corner = src.read(window=Window(0, 0, side, side))
    rng = np.random.default_rng(seed)
    lo, hi = PATCH // 2, side - PATCH + PATCH // 2
    rows, cols = rng.integers(lo, hi + 1, n), rng.integers(lo, hi + 1, n)
    x = np.stack([corner[:, r - lo:r - lo + PATCH, c - lo:c - lo + PATCH]
                  for r, c in zip(rows, cols, strict=True)])
    y = layout(np.arange(side), np.arange(side))[rows, cols]
    split = (np.arange(n) % 10 >= 8).astype(np.uint8)  # 80% train, 20% validation
    return PatchSet(x=x, y=y, band_names=BANDS, modalities={"s2": BANDS}, class_names=CLASSES,
                    groups=[f"p{i}" for i in range(n)], coords=np.zeros((n, 2)), split=split,
                    crs=CRS)


def patch_run(root: Path, stack: Path, n: int) -> Path:
    """A SimpleCNN run directory trained for one epoch by ``train_model``."""
    from geofuse.training.train import train_model

    cfg = study_config(root, stack, {"name": "simple_cnn"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train_model(cfg, progress=False, patchset=training_patches(stack, n), epochs=1,
                           run_name="simple_cnn", overwrite=True)


def dense_run(root: Path, stack: Path, stats_file: Path) -> Path:
    """A ``unet_early`` segmentation run directory (one date, tiny decoder, untrained)."""
    from geofuse.training.task import ClassificationTask

    run = root / "work" / "runs" / "unet_early"
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    info = {"run_name": run.name, "status": "finished",
            "model": {"name": "unet_early", "kwargs": {}}, "bands": BANDS,
            "class_names": ["scene"], "mask_names": CLASSES, "task": "segmentation",
            "patch_size": 64, "num_classes": 1}
    (run / "run.json").write_text(json.dumps(info))
    dump_config(study_config(root, stack, {"name": "unet_early"}), run / "config.yaml")
    shutil.copy(stats_file, run / "normalization.json")
    torch.manual_seed(0)
    task = ClassificationTask(model="unet_early", in_channels=len(BANDS),
                              num_classes=len(CLASSES), patch_size=64,
                              model_kwargs={"band_names": BANDS,
                                            "decoder_channels": TINY_DECODER},
                              class_names=CLASSES, segmentation=True)
    torch.save({"hyper_parameters": dict(task.hparams), "state_dict": task.state_dict(),
                "epoch": 0}, run / "checkpoints" / "best.ckpt")
    return run


# -- geofuse in its own process ---------------------------------------------------------------
def _memory_mb(pid: int) -> tuple[float, float]:
    """RSS and PSS (shared pages divided among the processes sharing them) of a process, MB."""
    values = {"Rss": 0.0, "Pss": 0.0}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in values:
                values[key] = int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return values["Rss"], values["Pss"]


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


@dataclass
class MapResult:
    """One ``geofuse predict`` run: seconds (``predict.json``), peaks of memory."""

    seconds: float
    windows_s: float
    peak_mb: float
    tree_rss_mb: float
    tree_pss_mb: float
    batch: int
    window: int


def run_predict(run: Path, stack: Path, out: Path, workers: int, batch_size: int | None = None,
                stride: int = 1) -> MapResult:
    """``geofuse predict RUN --stack STACK -o OUT --stride S -w WORKERS [--batch-size N]`` in
    its own process.

    Seconds: ``predict.json``'s ``timings_s`` (inside ``predict_map``: no interpreter start or
    imports). Memory: the process's exact peak RSS (``ru_maxrss`` from ``wait4``) and the
    peaks of the summed RSS and PSS of it and its worker processes, sampled every 0.1 s.
    """
    cli = Path(sys.executable).parent / "geofuse"
    cmd = [str(cli), "predict", str(run), "--stack", str(stack), "-o", str(out),
           "--stride", str(stride), "--workers", str(workers)]
    cmd += ["--batch-size", str(batch_size)] if batch_size else []
    log = out.parent / f"{out.name}.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONWARNINGS": "ignore"})
        tree_rss = tree_pss = 0.0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            pids = [proc.pid, *_descendants(proc.pid)]
            rss, pss = np.sum([_memory_mb(p) for p in pids], axis=0)
            tree_rss, tree_pss = max(tree_rss, float(rss)), max(tree_pss, float(pss))
            time.sleep(0.1)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                           f"{log.read_text()[-4000:]}")
    record = json.loads((out / "predict.json").read_text())
    peak = usage.ru_maxrss / 1024  # Linux: kB
    return MapResult(record["timings_s"]["total"], record["timings_s"]["windows"], peak,
                     max(tree_rss, peak), tree_pss, record["batch_size"], record["window_size"])


def macs_per_patch(run: Path) -> float:
    """Multiply-accumulates of one forward pass of the run's network on one patch (convolution
    and linear layers, counted with forward hooks)."""
    task, _ = load_task(run / "checkpoints" / "best.ckpt")
    total = [0.0]

    def hook(module: torch.nn.Module, _: Any, out: torch.Tensor) -> None:
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total[0] += out[0].numel() * module.in_channels // module.groups * k
        else:
            total[0] += out[0].numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in task.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.inference_mode():
        task(torch.zeros(1, len(BANDS), PATCH, PATCH))
    for h in handles:
        h.remove()
    return total[0]


# -- the naive loops --------------------------------------------------------------------------
def naive_pixels(size: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` consecutive interior pixels (row-major), from the middle rows of the scene."""
    lo, hi = PATCH // 2, size - PATCH + PATCH // 2  # centres whose patch is inside the scene
    cols = np.arange(lo, hi + 1)
    n_rows = min(-(-n // len(cols)), hi - lo + 1)
    first = max(lo, min(size // 2 - n_rows // 2, hi + 1 - n_rows))
    rows = np.repeat(np.arange(first, first + n_rows), len(cols))
    return rows[:n], np.tile(cols, n_rows)[:n]


def _warm_up(task: Any) -> None:
    """One untimed forward pass (torch's first call sets up its kernels)."""
    _classify(task, [np.zeros((len(BANDS), PATCH, PATCH), np.float32)] * NAIVE_BATCH, None)


@torch.inference_mode()
def _classify(task: Any, patches: list[np.ndarray], stats: BandStats | None) -> np.ndarray:
    x = np.stack(patches)
    if stats is not None:
        x = normalize(x, stats)
    return task(torch.from_numpy(x)).softmax(dim=1).argmax(dim=1).numpy()


def _naive_model(run: Path) -> tuple[Any, BandStats]:
    """The run's network (warmed up) and normalisation statistics, as a naive loop loads them."""
    task, _ = load_task(run / "checkpoints" / "best.ckpt")
    _warm_up(task)
    return task, BandStats.load(run / "normalization.json")


def _classify_stream(task: Any, patches: Iterator[np.ndarray], stats: BandStats | None
                     ) -> np.ndarray:
    """Classes of patches handed over one at a time, classified in batches of NAIVE_BATCH."""
    classes: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    for patch in patches:
        batch.append(patch)
        if len(batch) == NAIVE_BATCH:
            classes.append(_classify(task, batch, stats))
            batch = []
    if batch:
        classes.append(_classify(task, batch, stats))
    return np.concatenate(classes)


def naive_in_memory(run: Path, stack: Path, rows: np.ndarray, cols: np.ndarray
                    ) -> tuple[float, np.ndarray]:
    """Seconds and classes of the per-pixel loop over an in-memory, normalised strip."""
    task, stats = _naive_model(run)
    half = PATCH // 2
    started = time.perf_counter()
    top = int(rows.min()) - half
    with rasterio.open(stack) as src:
        strip = src.read(window=Window(0, top, src.width, int(rows.max()) - top + PATCH - half))
    x = normalize(strip, stats)
    patches = (x[:, r - half - top:r - half - top + PATCH, c - half:c - half + PATCH]
               for r, c in zip(rows.tolist(), cols.tolist(), strict=True))
    classes = _classify_stream(task, patches, None)
    return time.perf_counter() - started, classes


def naive_window_reads(run: Path, stack: Path, rows: np.ndarray, cols: np.ndarray
                       ) -> tuple[float, np.ndarray]:
    """Seconds and classes of the per-pixel loop with one window read per patch."""
    task, stats = _naive_model(run)
    half = PATCH // 2
    started = time.perf_counter()
    with rasterio.open(stack) as src:
        patches = (src.read(window=Window(c - half, r - half, PATCH, PATCH))
                   for r, c in zip(rows.tolist(), cols.tolist(), strict=True))
        classes = _classify_stream(task, patches, stats)
    return time.perf_counter() - started, classes


def map_classes(path: Path, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Classes of the map at the given pixels (one window read over their rows)."""
    top = int(rows.min())
    with rasterio.open(path) as src:
        block = src.read(1, window=Window(0, top, src.width, int(rows.max()) - top + 1))
    return block[rows - top, cols]


# -- report -----------------------------------------------------------------------------------
def _row(name: str, pixels: int, seconds: float, ratio: str, rss: str) -> str:
    return (f"{name:<46}{pixels:>12,}{seconds:>10.1f}{pixels / seconds:>12,.0f}{ratio:>11}"
            f"{rss:>18}")


def _minutes(pixels: float, rate: float) -> str:
    minutes = pixels / rate / 60
    return f"{minutes:,.0f} min" if minutes < 120 else f"{minutes / 60:,.1f} h"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", type=int, help="scene side in px (10000)")
    parser.add_argument("--workers", type=int, default=1, help="predict --workers (1)")
    parser.add_argument("--batch-size", type=int,
                        help="predict --batch-size for the simple_cnn map (predict's default)")
    parser.add_argument("--naive-pixels", type=int, help="pixels of naive loop (a) (100000)")
    parser.add_argument("--naive-read-pixels", type=int,
                        help="pixels of naive loop (b), a window read each (2000; 0: skip)")
    parser.add_argument("--train-patches", type=int, default=512,
                        help="patches the SimpleCNN trains on for its one epoch (512)")
    parser.add_argument("--stride", type=int, default=1,
                        help="predict --stride of the simple_cnn map (1); >1 measures memory "
                        "on a large scene in less time (px/s then counts the stride cells)")
    parser.add_argument("--skip-dense", action="store_true", help="no unet_early map")
    parser.add_argument("--quick", action="store_true",
                        help="tiny defaults: 256 px scene, 2000 + 200 naive pixels")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return parser


def main() -> None:
    args = _parser().parse_args()
    defaults = QUICK if args.quick else DEFAULTS
    opt = {k: getattr(args, k) if getattr(args, k) is not None else v
           for k, v in defaults.items()}
    size = opt["size"]
    if size < 2 * PATCH:
        raise SystemExit(f"--size {size}: at least {2 * PATCH} px")
    root = Path(tempfile.mkdtemp(prefix="geofuse-mapping-bench-"))
    try:
        _benchmark(root, size, opt, args)
    finally:
        if args.keep:
            print(f"kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _benchmark(root: Path, size: int, opt: dict[str, int], args: argparse.Namespace) -> None:
    started = time.perf_counter()
    stack = write_scene(root / "stack" / "stack.tif", size)
    scene_s = time.perf_counter() - started
    run = patch_run(root, stack, args.train_patches)
    print(f"scene {size:,} x {size:,} px x {len(BANDS)} bands float32 "
          f"({stack.stat().st_size / 2**20:,.0f} MB DEFLATE on disk, written in {scene_s:.1f} s);"
          f" run: {run}", flush=True)
    geo = run_predict(run, stack, root / "map", args.workers, args.batch_size, args.stride)
    pixels = size * size
    patches = (-(-size // args.stride)) ** 2  # patches classified (stride grid)
    rows, cols = naive_pixels(size, opt["naive_pixels"])
    naive_s, naive_cls = naive_in_memory(run, stack, rows, cols)
    agree = float((map_classes(root / "map" / "classes.tif", rows, cols) == naive_cls).mean())
    read_result = None
    if opt["naive_read_pixels"] > 0:
        r2, c2 = naive_pixels(size, opt["naive_read_pixels"])
        read_s, read_cls = naive_window_reads(run, stack, r2, c2)
        mapped = map_classes(root / "map" / "classes.tif", r2, c2)
        read_result = (len(r2), read_s, float((read_cls == mapped).mean()))
    dense = None
    if not args.skip_dense:
        drun = dense_run(root, stack, run / "normalization.json")
        dense = run_predict(drun, stack, root / "map_dense", args.workers)
    _report(size, pixels, geo, (len(rows), naive_s, agree), read_result, dense, args.workers,
            args.stride)
    _report_compute(run, patches, geo, (len(rows), naive_s), args.stride)


def _report_compute(run: Path, patches: int, geo: MapResult, naive: tuple[int, float],
                    stride: int) -> None:
    """Why the ratio is what it is: both loops run the same forward passes, so their speed is
    the CPU's multiply-accumulate rate on the network."""
    macs = macs_per_patch(run)
    geo_rate, naive_rate = patches / geo.seconds, naive[0] / naive[1]
    print(f"SimpleCNN forward pass: {macs / 1e6:.2f} M multiply-accumulates per 8 x 8 patch; "
          f"naive (a) {naive_rate * macs / 1e9:.1f} GMAC/s ({naive_rate:,.0f} patches/s), "
          f"geofuse at stride {stride} {geo_rate * macs / 1e9:.1f} GMAC/s ({geo_rate:,.0f} "
          f"patches/s, {geo_rate / naive_rate:.2f}x naive (a) per patch)")


def _rss(m: MapResult, workers: int) -> str:
    return f"{m.peak_mb:,.0f}" if workers == 1 else f"{m.tree_pss_mb:,.0f} (PSS, all)"


def _report(size: int, pixels: int, geo: MapResult, naive: tuple[int, float, float],
            read: tuple[int, float, float] | None, dense: MapResult | None, workers: int,
            stride: int = 1) -> None:
    geo_rate = pixels / geo.seconds
    n, naive_s, agree = naive
    ratio = (-(-size // stride)) ** 2 / geo.seconds / (n / naive_s)  # per classified patch
    print(f"\n{'method':<46}{'pixels':>12}{'seconds':>10}{'px/s':>12}{'geofuse/x':>11}"
          f"{'peak RSS MB':>18}")
    print(_row(f"naive (a): in-memory slicing, batch {NAIVE_BATCH}", n, naive_s,
               f"{ratio:.1f}x", "-"))
    if read is not None:
        print(_row(f"naive (b): window read per patch, batch {NAIVE_BATCH}", read[0], read[1],
                   f"{geo_rate / (read[0] / read[1]):.1f}x", "-"))
    print(_row(f"geofuse predict, simple_cnn stride {stride}, w {workers}", pixels, geo.seconds,
               "1.0x", _rss(geo, workers)))
    if dense is not None:
        print(_row(f"geofuse predict, unet_early (dense), w {workers}", pixels, dense.seconds,
                   f"{pixels / dense.seconds / geo_rate:.1f}x", _rss(dense, workers)))
    print(f"\nscene {size:,} x {size:,} px, {len(BANDS)} bands, {PATCH} x {PATCH} patches; "
          f"torch threads {torch.get_num_threads()}; {os.cpu_count()} CPUs")
    print(f"ratio: geofuse px/s / naive (a) px/s = {ratio:.1f}x (target >= 20x: "
          f"{'met' if ratio >= 20 else 'NOT met'})"
          + ("; the unet_early row's ratio is dense px/s over simple_cnn px/s" if dense else ""))
    print(f"geofuse simple_cnn: windows {geo.windows_s:.1f} s of {geo.seconds:.1f} s (the rest:"
          f" COGs with overviews, quicklook); batch {geo.batch} patches, windows {geo.window} px")
    rss_all = (f"; with its {workers} worker processes, sampled: RSS {geo.tree_rss_mb:,.0f} MB,"
               f" PSS {geo.tree_pss_mb:,.0f} MB" if workers > 1 else "")
    total = geo.peak_mb if workers == 1 else geo.tree_pss_mb
    print(f"peak RSS of geofuse predict: {geo.peak_mb:,.0f} MB (ru_maxrss of the process"
          f"{rss_all}; target < 2,048 MB: {'met' if total < 2048 else 'NOT met'})")
    if dense is not None:
        print(f"geofuse unet_early: windows {dense.windows_s:.1f} s of {dense.seconds:.1f} s; "
              f"peak RSS {_rss(dense, workers)} MB; batch {dense.batch} tiles of 256 px")
    print(f"naive classes = geofuse map at the same pixels: {agree:.2%} (a)"
          + (f", {read[2]:.2%} (b)" if read is not None else ""))
    full = 10_000 * 10_000
    print(f"10,000 x 10,000 px at these rates: geofuse simple_cnn {_minutes(full, geo_rate)}, "
          f"naive (a) {_minutes(full, n / naive_s)}"
          + (f", unet_early {_minutes(full, pixels / dense.seconds)}" if dense else ""))


if __name__ == "__main__":
    main()
