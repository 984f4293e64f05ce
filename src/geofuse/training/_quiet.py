"""Lightning without its info lines and known-harmless warnings (the progress bar stays)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

QUIET_WARNINGS = (
    ".*does not have many workers.*",
    ".*exists and is not empty.*",
    ".*smaller than the logging interval.*",
    ".*LeafSpec.*",
    ".*`weights_only` was not set.*",  # Lightning loading its own checkpoints
    ".*all_gather is deprecated.*",  # Lightning's gather under data-parallel training
)
_LOGGERS = ("lightning.pytorch", "lightning.fabric")


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Hide Lightning's info lines and :data:`QUIET_WARNINGS` while the block runs."""
    loggers = [logging.getLogger(n) for n in _LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        silence_lightning()
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def silence_lightning() -> None:
    """Hide them for the rest of this process (a data-parallel training process)."""
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in _LOGGERS:  # GPU/TPU availability lines and tips; the report has the facts
        logging.getLogger(name).setLevel(logging.WARNING)
