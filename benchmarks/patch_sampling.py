"""Patches per second drawn by geofuse's training data path, against three baselines.

Scene: a synthetic 8-band 5,000 x 5,000 px scene at 10 m, written as three co-registered
GeoTIFFs (a 6-band "s2", a 1-band "dem", a 1-band "modis"), then fused by ``geofuse prepare``.

Compared, each drawing random ``--patch-size`` patches:
  (a) naive loop:  open the fused raster and read one window per patch (rasterio);
  (b) TorchGeo:    one RasterDataset per modality, intersected with ``&``, sampled by
                   RandomGeoSampler (needs the optional ``bench`` extra: torchgeo 0.8.1 + requests);
  (c) numpy:       slicing an in-memory array in a Python loop (the practical limit);
  (d) geofuse:     StackPatchReader over the fused stack (load once, vectorised gathers).

Run: ``.venv/bin/python benchmarks/patch_sampling.py [--size 5000] [--patch-size 8]``.
Targets (issue #2): geofuse >= 100x TorchGeo and within 3x of numpy slicing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

CRS = "EPSG:32718"
RES = 10.0


def write_scene(folder: Path, size: int, seed: int = 0) -> dict[str, Path]:
    """Write three co-registered GeoTIFFs (6 + 1 + 1 bands) of ``size`` x ``size`` pixels."""
    rng = np.random.default_rng(seed)
    transform = from_origin(650_000.0, 5_400_000.0, RES, RES)
    paths = {}
    for name, bands in (("s2", 6), ("dem", 1), ("modis", 1)):
        path = folder / f"{name}.tif"
        profile = dict(driver="GTiff", width=size, height=size, count=bands, dtype="float32",
                       crs=CRS, transform=transform, tiled=True, blockxsize=512,
                       blockysize=512, compress="deflate")
        with rasterio.open(path, "w", **profile) as dst:
            for row in range(0, size, 1000):
                h = min(1000, size - row)
                data = rng.random((bands, h, size), dtype=np.float32)
                dst.write(data, window=Window(0, row, size, h))
        paths[name] = path
    return paths


def fuse(folder: Path, paths: dict[str, Path]) -> Path:
    """Fuse the three rasters with geofuse prepare; return the stack path."""
    from geofuse.config import parse_config
    from geofuse.raster.prepare import prepare_stack

    bands = {"s2": [f"B{i}" for i in range(1, 7)], "dem": ["elevation"], "modis": ["NDVI"]}
    cfg = parse_config(
        {"name": "bench", "workdir": str(folder / "work"),
         "modalities": [{"name": k, "files": [str(p)], "bands": bands[k]}
                        for k, p in paths.items()]},
        folder,
    )
    return prepare_stack(cfg, progress=False).stack_path


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def bench_naive(stack: Path, n: int, p: int, size: int, rng: np.random.Generator) -> float:
    rows, cols = rng.integers(0, size - p, n), rng.integers(0, size - p, n)
    t0 = time.perf_counter()
    for r, c in zip(rows, cols, strict=True):
        with rasterio.open(stack) as src:
            src.read(window=Window(int(c), int(r), p, p))
    return _rate(n, time.perf_counter() - t0)


def bench_torchgeo(paths: dict[str, Path], n: int, p: int) -> float | None:
    try:
        from torchgeo.datasets import RasterDataset
        from torchgeo.samplers import RandomGeoSampler
    except ImportError:
        return None
    datasets = []
    for path in paths.values():
        cls = type(f"{path.stem}Dataset", (RasterDataset,),
                   {"filename_glob": path.name, "is_image": True})
        datasets.append(cls(paths=str(path.parent)))
    ds = datasets[0] & datasets[1] & datasets[2]
    sampler = RandomGeoSampler(ds, size=p, length=n)
    t0 = time.perf_counter()
    for query in sampler:
        ds[query]
    return _rate(n, time.perf_counter() - t0)


def bench_numpy(array: np.ndarray, n: int, p: int, rng: np.random.Generator) -> float:
    size = array.shape[-1]
    rows, cols = rng.integers(0, size - p, n), rng.integers(0, size - p, n)
    t0 = time.perf_counter()
    out = np.empty((n, array.shape[0], p, p), dtype=array.dtype)
    for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
        out[i] = array[:, r:r + p, c:c + p]
    return _rate(n, time.perf_counter() - t0)


def bench_geofuse(stack: Path, n: int, p: int, rng: np.random.Generator) -> tuple[float, float]:
    """Return (load seconds, steady-state patches/s)."""
    from geofuse.data.stack_reader import StackPatchReader

    t0 = time.perf_counter()
    reader = StackPatchReader(stack)
    reader.sample_random(1, p, rng)  # forces the load
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    patches = reader.sample_random(n, p, rng)
    rate = _rate(n, time.perf_counter() - t0)
    assert patches.shape[1:] == (8, p, p), patches.shape
    return load, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=5000)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--n-slow", type=int, default=300, help="patches for (a) and (b)")
    parser.add_argument("--n-fast", type=int, default=100_000, help="patches for (c) and (d)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    p = args.patch_size
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        paths = write_scene(folder, args.size)
        stack = fuse(folder, paths)
        print(f"scene {args.size}x{args.size}x8 written and fused in "
              f"{time.perf_counter() - t0:.1f} s")
        with rasterio.open(stack) as src:
            array = src.read()
        results = {
            "(a) naive window loop": bench_naive(stack, args.n_slow, p, args.size, rng),
            "(b) TorchGeo RasterDataset & RandomGeoSampler": bench_torchgeo(paths, args.n_slow, p),
            "(c) numpy slicing in memory": bench_numpy(array, args.n_fast, p, rng),
        }
        del array
        load, rate = bench_geofuse(stack, args.n_fast, p, rng)
        results["(d) geofuse StackPatchReader"] = rate
    _print_table(results, load, p, args.n_fast)


def _print_table(results: dict[str, float | None], load: float, p: int, n: int) -> None:
    geofuse = results["(d) geofuse StackPatchReader"] or 0.0
    print(f"\nrandom {p}x{p} patches per second (8 bands, 2-core CPU):")
    print(f"{'method':<50}{'patches/s':>14}{'geofuse / method':>18}")
    for name, rate in results.items():
        if rate is None:
            print(f"{name:<50}{'not installed':>14}{'':>18}")
            continue
        print(f"{name:<50}{rate:>14,.0f}{geofuse / rate:>17.1f}x")
    print(f"geofuse one-off stack load: {load:.2f} s; counting it, {n:,} patches come at "
          f"{n / (load + n / geofuse):,.0f} patches/s")
    tg = results["(b) TorchGeo RasterDataset & RandomGeoSampler"]
    if tg:
        print(f"target >= 100x TorchGeo: {geofuse / tg:.0f}x")
    numpy_rate = results["(c) numpy slicing in memory"] or 1.0
    print(f"target within 3x of numpy slicing: numpy / geofuse = {numpy_rate / geofuse:.2f}")


if __name__ == "__main__":
    main()
