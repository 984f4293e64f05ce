"""Where to label next: ``geofuse suggest`` against as many random labels.

Claim: with the same labelling budget, the points ``geofuse suggest`` picks from a first map
(its most uncertain places, spread out, over every class, a random fifth) improve the next
map more than points drawn at random. Measured on the synthetic scene, whose true land cover
is known everywhere, so every map is scored on all its pixels:

1. a first set of label points, ``--start`` per class, drawn at random from the true classes
   (a user who labelled a few examples of each class);
2. SimpleCNN trained on them (train/val split of point groups), the scene mapped at
   ``--stride``: the first map;
3. ``--add`` more points, each labelled with the true class, by three strategies:
   ``suggest`` (``geofuse suggest`` on the first map, away from the first points),
   ``random`` (uniform over the scene's valid pixels: the naive baseline) and
   ``stratified`` (uniform within each class of the first map, equal per class: what a
   careful user does without a model's doubt);
4. retrained and mapped again; overall accuracy and macro F1 of each map against the truth.

Repeated over ``--seeds`` (each draws its own first points and baselines); prints the mean
and the spread, and the gain of each strategy over the first map.

    .venv/bin/python benchmarks/active_learning.py                     # ~3 min on 2 CPUs
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from shapely import points as make_points

STRATEGIES = ("suggest", "random", "stratified")


def truth_and_valid(scene_seed: int, size_m: float, stack: Path) -> tuple[np.ndarray, np.ndarray]:
    """The true class of every scene pixel and where the stack has data (no cloud)."""
    from geofuse.data.synthetic import build_scene

    world = build_scene(scene_seed, size_m).world
    truth = world.crop(world.classes).astype(np.int64)
    with rasterio.open(stack) as src:
        valid = ~np.isnan(src.read(1)) & ~np.isnan(src.read(src.count))
    return truth, valid


def write_points(path: Path, rows: np.ndarray, cols: np.ndarray, truth: np.ndarray,
                 names: list[str], transform: object, crs: object, prefix: str) -> Path:
    xs, ys = transform @ (cols + 0.5, rows + 0.5)  # type: ignore[operator]
    gpd.GeoDataFrame({"id": [f"{prefix}{i}" for i in range(len(rows))],
                      "class": [names[truth[r, c]] for r, c in zip(rows, cols, strict=True)]},
                     geometry=make_points(np.asarray(xs), np.asarray(ys)), crs=crs
                     ).to_file(path, driver="GPKG")
    return path


def merge(paths: list[Path], out: Path) -> Path:
    frames = [gpd.read_file(p)[["id", "class", "geometry"]] for p in paths]
    gpd.GeoDataFrame(np.concatenate([f.to_numpy() for f in frames]),
                     columns=["id", "class", "geometry"], geometry="geometry",
                     crs=frames[0].crs).to_file(out, driver="GPKG")
    return out


def per_class_sample(labels: np.ndarray, mask: np.ndarray, k: int, n_each: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = [], []
    for c in range(k):
        rr, cc = np.nonzero(mask & (labels == c))
        if len(rr):
            pick = rng.choice(len(rr), size=min(n_each, len(rr)), replace=False)
            rows.append(rr[pick])
            cols.append(cc[pick])
    return np.concatenate(rows), np.concatenate(cols)


def train_and_map(cfg: object, points: Path, name: str, work: Path, stride: int,
                  seed: int) -> Path:
    """Extract the points, train SimpleCNN, map the stack; the map's classes.tif."""
    from geofuse.data.extract import extract_patches
    from geofuse.mapping.predict import PredictOptions, predict_map
    from geofuse.training.train import train_model

    cfg = cfg.model_copy(deep=True)  # type: ignore[attr-defined]
    cfg.labels.path = str(points)
    cfg.extract.output = str(work / f"patches_{name}.h5")
    cfg.seed = seed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extract_patches(cfg, progress=False)
        run = train_model(cfg, run_name=name, progress=False, overwrite=True, figures=False)
        predict_map(run, cfg.stack_path, work / f"map_{name}", PredictOptions(stride=stride),
                    progress=False)
    return work / f"map_{name}" / "classes.tif"


def score(map_path: Path, truth: np.ndarray, k: int) -> tuple[float, float]:
    """Overall accuracy and macro F1 of a class map against the truth, over mapped pixels."""
    with rasterio.open(map_path) as src:
        pred = src.read(1).astype(np.int64)
    ok = pred < k
    cm = np.bincount(truth[ok] * k + pred[ok], minlength=k * k).reshape(k, k)
    tp = np.diag(cm).astype(float)
    f1 = 2 * tp / np.maximum(cm.sum(0) + cm.sum(1), 1)
    return float(tp.sum() / cm.sum()), float(f1.mean())


def run(args: argparse.Namespace, work: Path) -> dict[str, list[tuple[float, float]]]:
    from geofuse.config import load_config
    from geofuse.data.synthetic import generate_scene
    from geofuse.mapping.suggest import SuggestOptions, suggest_labels
    from geofuse.raster.prepare import prepare_stack

    cfg = load_config(generate_scene(work / "scene", seed=0, size_m=args.size))
    prepare_stack(cfg, progress=False)
    cfg.labels.id_field, cfg.labels.class_field = "id", "class"
    cfg.extract.per_polygon, cfg.splits.val_fraction = None, 0.25
    cfg.train.model.name, cfg.train.epochs = "simple_cnn", args.epochs
    names = list(cfg.labels.classes or [])
    truth, valid = truth_and_valid(0, args.size, cfg.stack_path)
    with rasterio.open(cfg.stack_path) as src:
        transform, crs = src.transform, src.crs
    k = len(names)
    results: dict[str, list[tuple[float, float]]] = {s: [] for s in ("first", *STRATEGIES)}
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        sub = work / f"seed{seed}"
        sub.mkdir()
        start = write_points(sub / "start.gpkg", *per_class_sample(
            truth, valid, k, args.start, rng), truth, names, transform, crs, "s")
        first = train_and_map(cfg, start, f"first{seed}", sub, args.stride, seed)
        results["first"].append(score(first, truth, k))
        with rasterio.open(first) as src:
            first_map = src.read(1)
        added = {}
        res = suggest_labels(first, SuggestOptions(n=args.add, seed=seed, window=args.window),
                             labels=start, out_dir=sub / "suggest")
        frame = gpd.read_file(res.gpkg_path)
        rr, cc = rasterio.transform.rowcol(transform, frame.geometry.x, frame.geometry.y)
        added["suggest"] = (np.asarray(rr), np.asarray(cc))
        rr, cc = np.nonzero(valid)
        pick = rng.choice(len(rr), size=args.add, replace=False)
        added["random"] = (rr[pick], cc[pick])
        added["stratified"] = per_class_sample(first_map, valid & (first_map < k), k,
                                               args.add // k, rng)
        for strategy, (rows, cols) in added.items():
            more = write_points(sub / f"{strategy}.gpkg", rows, cols, truth, names, transform,
                                crs, strategy[:2])
            both = merge([start, more], sub / f"start+{strategy}.gpkg")
            mapped = train_and_map(cfg, both, f"{strategy}{seed}", sub, args.stride, seed)
            results[strategy].append(score(mapped, truth, k))
        print(f"seed {seed}: " + ", ".join(f"{s} OA {v[-1][0]:.3f}" for s, v in results.items()),
              flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=float, default=8000.0, help="scene side in metres")
    parser.add_argument("--start", type=int, default=10, help="first points per class")
    parser.add_argument("--add", type=int, default=50, help="points added by each strategy")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--stride", type=int, default=2)
    parser.add_argument("--window", type=int, default=None,
                        help="geofuse suggest --window (default: the model's patch side)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="geofuse-al-") as tmp:
        results = run(args, Path(tmp))
    first = np.array(results["first"])
    print(f"\n{args.size / 1000:g} km synthetic scene, {args.start} first points per class, "
          f"+{args.add} points, SimpleCNN, seeds {args.seeds}; scored on every mapped pixel "
          "against the true land cover")
    print(f"{'labels':<28}{'overall accuracy':>22}{'macro F1':>20}{'OA gain':>12}")
    for name, values in results.items():
        v = np.array(values)
        label = "first points" if name == "first" else f"first + {args.add} {name}"
        gain = "" if name == "first" else f"{(v[:, 0] - first[:, 0]).mean():+.3f}"
        print(f"{label:<28}{v[:, 0].mean():>14.3f} +- {v[:, 0].std():.3f}"
              f"{v[:, 1].mean():>12.3f} +- {v[:, 1].std():.3f}{gain:>12}")
    sug, ran = np.array(results["suggest"]), np.array(results["random"])
    diff = sug - ran
    print(f"\nsuggest - random: OA {diff[:, 0].mean():+.3f} (per seed {np.round(diff[:, 0], 3)}), "
          f"macro F1 {diff[:, 1].mean():+.3f}  ({time.perf_counter() - started:.0f} s)")

if __name__ == "__main__":
    main()
