"""The rich progress bar of long non-Lightning work (prepare, pretrain): one line per task with
a bar, done/total, elapsed and remaining time, on stderr."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def step_progress(enabled: bool) -> Progress:
    """A rich ``Progress`` for counted steps; silent when ``enabled`` is false."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not enabled)
