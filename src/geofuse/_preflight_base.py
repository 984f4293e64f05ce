"""Shared pieces of the preflight checks: one problem, the input names they are checked against."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: the key, its value and the reason with the fix.

    Attributes:
        key: dotted config key, e.g. ``ablation.models[1]`` or ``labels.path``.
        value: the value found under ``key``.
        reason: what is wrong and how to fix it.
        plain: ``reason`` already names key and value (a converted error): print it alone.
    """

    key: str
    value: Any
    reason: str
    plain: bool = False

    def __str__(self) -> str:
        reason = " ".join(self.reason.split())
        return reason if self.plain else f"{self.key} = {show(self.value)}: {reason}"


@dataclass
class Inputs:
    """Band and modality names that a command will really see, and where they come from.

    Attributes:
        band_names: every band, in channel order.
        modalities: modality name -> its band names.
        origin: where the names come from, for messages (e.g. ``PatchSet 'work/patches.h5'``).
        has_tabular: whether patches carry tabular attributes (``None``: not known yet).
        from_config: the names come from the config itself (no PatchSet or stack yet).
        multilabel: the targets are label sets (a multi-label PatchSet or dataset).
        segmentation: the targets are pixel masks (``None``: not known).
        regression: the targets are continuous values (a regression PatchSet or dataset).
    """

    band_names: list[str]
    modalities: dict[str, list[str]]
    origin: str
    has_tabular: bool | None = None
    from_config: bool = True
    multilabel: bool = False
    segmentation: bool | None = None
    regression: bool = False

    def modalities_of(self, bands: Sequence[str]) -> list[str]:
        """Modalities that hold any of ``bands``, in channel order."""
        wanted = set(bands)
        return [m for m, names in self.modalities.items() if wanted & set(names)]


def show(value: Any) -> str:
    """A config value as the user wrote it (strings quoted, paths as strings)."""
    return repr(str(value)) if isinstance(value, Path) else repr(value)


def did_you_mean(value: str, valid: Iterable[str], what: str = "valid") -> str:
    """``did you mean 'x'?`` for a close match, else the list of valid names."""
    valid = list(valid)
    close = difflib.get_close_matches(value, valid, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"{what}: {', '.join(valid)}" if valid else f"{what}: none"


def suggest(value: str, valid: Iterable[str]) -> str:
    """``did you mean 'x'? `` for a close match, else an empty string."""
    close = difflib.get_close_matches(value, list(valid), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def dedupe(problems: Iterable[Problem]) -> list[Problem]:
    """Problems in order, each printed line once."""
    seen: dict[str, Problem] = {}
    for p in problems:
        seen.setdefault(str(p), p)
    return list(seen.values())
