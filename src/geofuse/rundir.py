"""Run-directory layout: one place that knows every file name a run writes.

```
<runs>/<run_name>/
  config.yaml           resolved study config (absolute paths): reproduces the run
  run.json              provenance: PatchSet path, bands, classes, seed, versions, timings
  normalization.json    per-band mean/std of the training split
  tabular_normalization.json  per-attribute mean/std of the training split (tabular PatchSets)
  normalization_test.json     per-band mean/std of the test patches (train.normalization:
                        test_area)
  history.csv           one row per epoch: losses, val metrics, learning rate
  metrics.json          val/test metrics of the best checkpoint + collapse-guard verdict
  checkpoints/best.ckpt lowest val_loss;  checkpoints/last.ckpt for --resume
  plots/*.png           training curves, confusion matrices
  report.md             human-readable summary embedding the plots
```
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geofuse.config import StudyConfig
from geofuse.errors import RunDirError
from geofuse.io_utils import atomic_write_text

HISTORY_COLUMNS = (
    "epoch", "train_loss", "train_accuracy", "train_f1_macro", "val_loss", "val_accuracy",
    "val_f1_macro", "train_iou", "val_iou", "train_rmse", "val_rmse", "train_r2", "val_r2",
    "lr",
)  # the IoU columns are filled by segmentation runs only, RMSE and R2 by regression runs


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    @property
    def normalization(self) -> Path:
        return self.path / "normalization.json"

    @property
    def tabular_normalization(self) -> Path:
        """Mean/std of the tabular attributes; written only when the PatchSet has them."""
        return self.path / "tabular_normalization.json"

    @property
    def history(self) -> Path:
        return self.path / "history.csv"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def best_ckpt(self) -> Path:
        return self.checkpoints / "best.ckpt"

    @property
    def last_ckpt(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    @property
    def report(self) -> Path:
        return self.path / "report.md"

    @property
    def patches_copy(self) -> Path:
        """Where a PatchSet passed in memory (not read from the config's path) is saved."""
        return self.path / "patches.h5"

    def require(self, *files: Path) -> None:
        """Raise :class:`RunDirError` naming the first missing file."""
        if not self.path.is_dir():
            raise RunDirError(
                f"run directory {str(self.path)!r} does not exist; pass a folder written by "
                "'geofuse train'"
            )
        for f in files:
            if not f.exists():
                raise RunDirError(
                    f"{str(f)!r} is missing from run directory {str(self.path)!r}; "
                    "re-run 'geofuse train' (or 'geofuse evaluate' for metrics.json)"
                )

    def read_json(self, path: Path) -> dict[str, Any]:
        """Load a JSON file of the run, raising :class:`RunDirError` when missing."""
        self.require(path)
        return json.loads(path.read_text())


def default_run_name(cfg: StudyConfig) -> str:
    """``cfg.train.run_name`` or ``{name}-{inputs}-seed{seed}``.

    ``inputs`` joins the modalities used (``s2+dem``), or the bands when ``train.bands`` is set
    (shortened to a count and a hash when long).
    """
    if cfg.train.run_name:
        return cfg.train.run_name
    if cfg.train.bands:
        inputs = "+".join(cfg.train.bands)
        if len(inputs) > 40:
            digest = hashlib.sha1(inputs.encode()).hexdigest()[:6]
            inputs = f"{len(cfg.train.bands)}bands-{digest}"
    else:
        inputs = "+".join(cfg.train.modalities or cfg.all_modality_names)
    return f"{cfg.name}-{inputs}-seed{cfg.seed}"


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _history_lines(rows: list[dict[str, Any]], header: bool) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow(HISTORY_COLUMNS)
    for row in rows:
        writer.writerow([_format(row.get(c)) for c in HISTORY_COLUMNS])
    return buf.getvalue()


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write epoch rows as CSV with :data:`HISTORY_COLUMNS`, atomically."""
    atomic_write_text(path, _history_lines(rows, header=True))


def append_history(path: Path, row: dict[str, Any]) -> None:
    """Add one epoch row to history.csv (started with its header if missing or empty).

    One short write per epoch, instead of rewriting the file: a process that is killed leaves
    the row whole or absent; only a machine crash can cut it short, and :func:`read_history`
    drops such a row.
    """
    header = not path.is_file() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        f.write(_history_lines([row], header=header))


def read_history(path: Path) -> list[dict[str, Any]]:
    """Rows of history.csv; ``epoch`` as int, metrics as float (NaN kept), blanks as None.

    A last row cut short (a machine crash while it was appended: no line end) is dropped.
    """
    if not path.is_file():
        return []
    text = path.read_text()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = []
    for raw in csv.DictReader(io.StringIO(text, newline="")):
        if None in raw or None in raw.values():  # too many or too few fields
            continue
        rows.append({key: int(value) if key == "epoch" else
                     (float(value) if value != "" else None) for key, value in raw.items()})
    return rows

