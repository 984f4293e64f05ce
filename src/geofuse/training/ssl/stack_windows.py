"""Unlabelled windows of the fused stack for self-supervised pretraining."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geofuse.data.stack_reader import StackPatchReader
from geofuse.errors import ConfigError, DataNotFoundError

MIN_VALID_SHARE = 0.9  # a window with more nodata than this share of its values is skipped
MAX_DRAWS = 5  # rounds of random windows before giving up on filling the request


def stack_windows(stack: Path, band_names: list[str], patch_size: int, n: int,
                  rng: np.random.Generator) -> np.ndarray:
    """``n`` random ``patch_size`` windows of ``stack`` with ``band_names`` in that order,
    float32 (N, C, P, P), NaN where nodata; windows with less than 90% valid values skipped.

    Fewer than ``n`` come back only when the stack is mostly nodata (after 5 rounds of draws).

    Raises:
        DataNotFoundError: no fused stack (run ``geofuse prepare``).
        ConfigError: a band the stack lacks (derived index bands are not in it), or a stack
            without any valid window.
    """
    if not stack.is_file():
        raise DataNotFoundError(
            f"pretrain.stack_patches = {n} reads the fused stack {str(stack)!r}, which does not "
            "exist; run 'geofuse prepare -c CONFIG' first, or set pretrain.stack_patches: 0 "
            "(studies of a dataset have no stack)")
    with StackPatchReader(stack) as reader:
        missing = [b for b in band_names if b not in reader.band_names]
        if missing:
            raise ConfigError(
                f"pretrain.stack_patches: the fused stack {str(stack)!r} has no band {missing} "
                f"(it holds {reader.band_names}); derived index bands are computed at extract: "
                "leave them out of train.bands / train.modalities, or set "
                "pretrain.stack_patches: 0")
        order = [reader.band_names.index(b) for b in band_names]
        kept: list[np.ndarray] = []
        have = 0
        for _ in range(MAX_DRAWS):
            draw = reader.sample_random(max(2 * (n - have), 16), patch_size, rng)[:, order]
            valid = np.isfinite(draw).mean(axis=(1, 2, 3)) >= MIN_VALID_SHARE
            kept.append(draw[valid][: n - have])
            have += len(kept[-1])
            if have >= n:
                break
    windows = np.concatenate(kept)
    if len(windows) == 0:
        raise ConfigError(
            f"pretrain.stack_patches: no window of {patch_size} px in {str(stack)!r} has "
            f"{MIN_VALID_SHARE:.0%} valid values; check the stack's nodata, or set "
            "pretrain.stack_patches: 0")
    return windows
