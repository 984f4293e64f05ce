"""The demo flow: synthetic scene -> prepare -> extract -> sensor ablation (3 folds) -> map of
the scene by the best configuration, assessed on held-out polygons -> report."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from geofuse.config import load_config

console = Console(stderr=True)

#: Models of the default (quick) demo: one network on the stacked bands (early fusion).
QUICK_MODELS = ["simple_cnn"]
#: Models of ``geofuse demo --full``: early fusion and late fusion (the scene's study.yaml).
FULL_MODELS = ["simple_cnn", "late_fusion"]
#: Most local worker processes the demo starts (one torch thread each on a small machine).
MAX_DEMO_WORKERS = 4
#: Share of the polygons held out of every fold: the map is assessed on them.
DEMO_TEST_FRACTION = 0.2
#: The demo maps every 4th pixel (40 m cells of the 10 m stack): a 2000 x 2000 px scene in
#: seconds; ``geofuse predict --stride 1`` maps every pixel.
DEMO_MAP_STRIDE = 4
#: Minimum mapping unit of the demo map published as polygons (map/classes_mmu.gpkg).
DEMO_MMU_HA = 0.5
#: Places to label next that the demo suggests from its map (map/label_suggestions.gpkg).
DEMO_SUGGEST = 40


def demo_workers() -> int:
    """Worker processes for the demo: one per core it may use, at most :data:`MAX_DEMO_WORKERS`.

    The demo's networks are tiny: one thread per cell in several processes beats several
    threads per cell, and workers x threads never exceeds the cores.
    """
    from geofuse.experiments._parallel import available_cores

    return max(1, min(MAX_DEMO_WORKERS, available_cores()))


def run_demo(
    workdir: str | Path, seed: int = 0, epochs: int | None = None, size_m: float = 20_000.0,
    full: bool = False, workers: int | None = None,
) -> Path:
    """Run the whole study on the synthetic scene; return the path of the study's HTML report.

    The study answers "does adding MODIS NDVI or elevation to Sentinel-2 help?": S2, S2+MODIS,
    S2+DEM and all sensors, each cross-validated over 3 folds grouped by polygon and compared
    with paired tests against S2 alone. The default trains SimpleCNN on the stacked bands
    (early fusion: 12 cells, about a minute on 2 idle cores); ``full`` adds late fusion (24
    cells, the study of the scene's ``study.yaml``). Re-running in the same folder reuses
    finished cells.

    Args:
        workdir: folder for the scene, the fused stack, the patches and the study.
        seed: scene and training seed.
        epochs: override the training epochs of every cell (default: the study's 30, with
            early stopping).
        size_m: side of the synthetic scene in metres.
        full: run the full 24-cell study (folder ``<name>_full``) instead of the quick one.
        workers: parallel cell processes; default :func:`demo_workers`.
    """
    from geofuse.data.extract import extract_patches
    from geofuse.data.synthetic import generate_scene
    from geofuse.experiments.ablation import run_ablation
    from geofuse.raster.prepare import prepare_stack

    workdir = Path(workdir)
    console.rule("[bold]1/4 synth: generating the synthetic scene")
    cfg = load_config(generate_scene(workdir / "scene", seed=seed, size_m=size_m))
    cfg.ablation.models = list(FULL_MODELS if full else QUICK_MODELS)
    cfg.ablation.test_fraction = DEMO_TEST_FRACTION
    cfg.mapping.scene, cfg.mapping.stride = "stack", DEMO_MAP_STRIDE
    cfg.mapping.mmu_ha, cfg.mapping.suggest = DEMO_MMU_HA, DEMO_SUGGEST
    cfg.mapping.aoa = True
    if epochs is not None:
        cfg.ablation.epochs = epochs
    console.rule("[bold]2/4 prepare: aligning S2, MODIS and DEM onto one grid")
    prepared = prepare_stack(cfg)
    console.print(f"fused stack {prepared.stack_path}")
    console.rule("[bold]3/4 extract: sampling patches inside label polygons")
    patches = extract_patches(cfg)
    console.print(f"{len(patches)} patches, classes {patches.class_counts()}")
    fusion = "early and late fusion" if full else "early fusion (stacked bands)"
    console.rule(f"[bold]4/4 ablate: S2, +MODIS, +DEM, all sensors; {fusion}; 3 grouped folds; "
                 "then the map of the best configuration")
    study_dir = run_ablation(cfg, study_name=f"{cfg.name}_full" if full else cfg.name,
                             workers=workers or demo_workers())
    return study_dir / "report.html"
