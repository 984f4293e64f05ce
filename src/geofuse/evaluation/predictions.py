"""Predictions of a run, saved at evaluation time: ``test_predictions.npz`` and
``val_predictions.npz`` (the validation fold's, pooled over folds by the study report).

A study deletes its cells' checkpoints once a cell is finished, so whatever is computed later
from a model's outputs (fold ensembles, bootstrap confidence intervals over test groups, paired
comparisons on the test set) must come from predictions saved while the model still exists.
:func:`save_predictions` is called by :func:`geofuse.evaluation.evaluate.evaluate_run` and
:func:`geofuse.models.forest.evaluate_baseline` whenever the run's PatchSet has a test split.

File layout (NumPy ``.npz``, uncompressed, written atomically):

- ``indices``: int64 (N,), PatchSet row of each test patch (ascending, as
  ``PatchSet.split_indices("test")``);
- ``probabilities``: float32 (N, K), class probabilities: the softmax of the logits (or their
  mean over the 8 flips and rotations with ``train.tta``), of a multi-label model the
  per-class sigmoids, of a scikit-learn baseline ``predict_proba`` (multi-label:
  :func:`~geofuse.models.forest.label_probabilities`);
- ``targets``: int64 (N,) true class indices, or uint8 (N, K) true label sets; of a
  regression run float32 (N,) true values, with the predicted values as the single column of
  ``probabilities`` (N, 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geofuse.io_utils import atomic_path

PREDICTIONS_FILE = "test_predictions.npz"
VAL_PREDICTIONS_FILE = "val_predictions.npz"


def predictions_file(split: str) -> str:
    """File name of a split's saved predictions (``test`` or ``val``)."""
    return VAL_PREDICTIONS_FILE if split == "val" else PREDICTIONS_FILE


@dataclass(frozen=True)
class Predictions:
    """Saved test predictions of one model (see the module docstring)."""

    indices: np.ndarray
    probabilities: np.ndarray
    targets: np.ndarray

    @property
    def multilabel(self) -> bool:
        """Whether the targets are label sets (N, K)."""
        return self.targets.ndim == 2

    @property
    def regression(self) -> bool:
        """Whether the targets are continuous values (the predictions: ``values``)."""
        return np.issubdtype(self.targets.dtype, np.floating) and self.targets.ndim == 1

    def values(self) -> np.ndarray:
        """Predicted values (N,) of a regression run."""
        return self.probabilities[:, 0]

    def labels(self) -> np.ndarray:
        """Predicted class indices (single-label: the most probable class)."""
        return self.probabilities.argmax(axis=1)


def save_predictions(run_dir: str | Path, indices: np.ndarray, probabilities: np.ndarray,
                     targets: np.ndarray, split: str = "test") -> Path:
    """Write ``<run_dir>/<split>_predictions.npz`` atomically; returns its path.

    Raises:
        ValueError: the arrays disagree in length.
    """
    indices = np.asarray(indices, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float32)
    targets = np.asarray(targets)
    if not len(indices) == len(probabilities) == len(targets):
        raise ValueError(f"{split} predictions: {len(indices)} indices, {len(probabilities)} "
                         f"probability rows, {len(targets)} targets")
    if not np.issubdtype(targets.dtype, np.floating) or targets.ndim == 2:
        targets = targets.astype(np.uint8 if targets.ndim == 2 else np.int64)
    else:  # regression: true values
        targets = targets.astype(np.float32)
    path = Path(run_dir) / predictions_file(split)
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, indices=indices, probabilities=probabilities, targets=targets)
    return path


def load_predictions(path: str | Path, split: str = "test") -> Predictions | None:
    """The predictions saved in ``path`` (a run directory or the ``.npz`` itself); ``None``
    when there are none (runs evaluated before they were saved, or without that split)."""
    path = Path(path)
    if path.is_dir():
        path = path / predictions_file(split)
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            return Predictions(data["indices"], data["probabilities"], data["targets"])
    except (OSError, ValueError, KeyError):
        return None
