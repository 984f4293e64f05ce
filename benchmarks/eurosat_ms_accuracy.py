"""EuroSAT-MS: a CNN on the 13 bands vs a random forest on per-band statistics.

Claim (issue 11): a model trained on EuroSAT-MS train does far better than a random forest on
per-band statistics on images it never saw. The ready study ``configs/eurosat_ms.yaml`` is run
as a grouped k-fold ablation (5 km spatial blocks) with a held-out test share of whole blocks
carved out first (``ablation.test_fraction``): the test images never enter training, early
stopping or checkpoint selection, which use the validation fold. Prints mean +- std over
folds x seeds of accuracy and macro F1 on the validation folds and on the held-out test set,
the spread of the per-seed means, and each model's test accuracy / the forest's.

    .venv/bin/python benchmarks/eurosat_ms_accuracy.py                      # ~12 min on 2 CPUs
    .venv/bin/python benchmarks/eurosat_ms_accuracy.py --study DIR          # summarise a study
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "eurosat_ms.yaml"
BASELINE = "random_forest"


def run_study(args: argparse.Namespace, workdir: Path) -> Path:
    """Extract and ablate a copy of the ready config; return the study folder."""
    from geofuse.config import load_config
    from geofuse.data.datasets.build import build_dataset_patches
    from geofuse.experiments.ablation import run_ablation

    data = yaml.safe_load(Path(args.config).read_text())
    ready = load_config(args.config)
    assert ready.dataset is not None
    data["dataset"]["root"] = str(ready.resolve(str(ready.dataset.root)).resolve())
    data["workdir"] = str(workdir)
    models = {m if isinstance(m, str) else m.get("label") or m["name"]: m
              for m in data["ablation"]["models"]}
    data["ablation"].update(models=[models[m] for m in args.models], seeds=args.seeds,
                            folds=args.folds, test_fraction=args.test_fraction)
    if args.epochs:
        data["train"]["epochs"] = args.epochs
    path = workdir / "eurosat_ms_bench.yaml"
    workdir.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    cfg = load_config(path)
    build_dataset_patches(cfg)
    return run_ablation(cfg, study_name="bench")


def _ensemble_scores(study: Path) -> dict[str, tuple[float, float]]:
    """Configuration -> mean test accuracy and macro F1 of its fold ensembles (one per seed)."""
    from geofuse.experiments.ensemble import read_ensembles

    per: dict[str, list[tuple[float, float]]] = {}
    for e in read_ensembles(study):
        per.setdefault(e["config_id"], []).append((e["test"]["accuracy"], e["test"]["f1_macro"]))
    return {cid: (sum(a for a, _ in v) / len(v), sum(f for _, f in v) / len(v))
            for cid, v in per.items()}


def summarise(study: Path) -> pd.DataFrame:
    """One row per configuration (model label): mean/std over cells, spread of per-seed means,
    the fold ensembles' test figures, ratio to the forest."""
    res = pd.read_csv(study / "results.csv")
    ensembles = _ensemble_scores(study)
    rows = []
    for config_id, g in res.groupby("config_id", sort=False):
        model = str(config_id).split("/", 1)[-1]
        row = {"model": model, "cells": len(g), "seeds": g["seed"].nunique()}
        row["ens_acc"], row["ens_f1"] = ensembles.get(str(config_id), (float("nan"),) * 2)
        for stage in ("val", "test"):
            for metric in ("accuracy", "f1_macro"):
                col = f"{stage}_{metric}"
                if col in g and g[col].notna().any():
                    row[f"{col}_mean"] = g[col].mean()
                    row[f"{col}_std"] = g[col].std(ddof=1)
        key = "test_accuracy" if "test_accuracy" in g and g["test_accuracy"].notna().any() \
            else "val_accuracy"
        per_seed = g.groupby("seed")[key].mean()
        row["seed_means"] = ", ".join(f"{v:.3f}" for v in per_seed)
        rows.append(row)
    out = pd.DataFrame(rows).set_index("model")
    key = "test_accuracy_mean" if "test_accuracy_mean" in out else "val_accuracy_mean"
    if BASELINE in out.index:
        out["acc_ratio_vs_forest"] = out[key] / out.loc[BASELINE, key]
    return out


def print_table(table: pd.DataFrame) -> None:
    def pm(row: pd.Series, col: str) -> str:
        if f"{col}_mean" not in row or pd.isna(row[f"{col}_mean"]):
            return "-"
        return f"{row[f'{col}_mean']:.3f} +- {row[f'{col}_std']:.3f}"

    head = ("model", "cells", "val acc", "val F1", "test acc", "test F1", "per-seed test acc",
            "ratio", "ensemble test acc", "ensemble test F1")
    print(" | ".join(head))
    for model, row in table.iterrows():
        ratio = row.get("acc_ratio_vs_forest")
        print(" | ".join([str(model), str(row["cells"]), pm(row, "val_accuracy"),
                          pm(row, "val_f1_macro"), pm(row, "test_accuracy"),
                          pm(row, "test_f1_macro"), row["seed_means"],
                          "-" if ratio is None or pd.isna(ratio) else f"{ratio:.2f}x",
                          "-" if pd.isna(row["ens_acc"]) else f"{row['ens_acc']:.3f}",
                          "-" if pd.isna(row["ens_f1"]) else f"{row['ens_f1']:.3f}"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(CONFIG))
    ap.add_argument("--study", type=Path, help="summarise this finished study folder only")
    ap.add_argument("--models", nargs="+", default=["simple_cnn_stats", "pixel_net", BASELINE])
    ap.add_argument("--seeds", nargs="+", type=int, default=[42, 43])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    if args.study is None:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="eurosat_ms_bench_"))
        args.study = run_study(args, workdir)
    print_table(summarise(args.study))


if __name__ == "__main__":
    main()
