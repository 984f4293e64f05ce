"""Unfinished studies: which cells are missing, and which configurations can be compared.

A study interrupted part-way has configurations measured on different folds. Their means are
not comparable (a "best" measured on one fold against a baseline measured on three says
nothing), so the report compares only configurations whose finished (seed, fold) cells are the
same as the baseline's, and lists what is missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from geofuse.reporting import html as doc

Key = tuple[int, int]


def expected_cells(grid: Mapping[str, Any]) -> dict[str, set[Key]]:
    """config_id -> the (seed, fold) cells the study's grid holds (empty when unknown)."""
    out: dict[str, set[Key]] = {}
    for cell in grid.get("cells") or []:
        if isinstance(cell, Mapping) and {"config_id", "seed", "fold"} <= set(cell):
            out.setdefault(cell["config_id"], set()).add((int(cell["seed"]), int(cell["fold"])))
    return out


def completeness(
    scores: Mapping[str, Mapping[Key, float]], grid: Mapping[str, Any], baseline: str | None,
) -> dict[str, Any]:
    """What is finished and what can be compared.

    Returns:
        ``{"finished": bool, "done": n, "total": n, "missing": {config_id: ["seed s fold f",
        ...]}, "comparable": [config_id, ...]}``; ``comparable`` holds every configuration when
        the study is finished, else those whose finished cells equal the baseline's (or, without
        a baseline, the most common set of finished cells).
    """
    expected = expected_cells(grid)
    missing = {cid: sorted(keys - set(scores.get(cid, {})))
               for cid, keys in expected.items() if keys - set(scores.get(cid, {}))}
    total = sum(len(k) for k in expected.values())
    done = total - sum(len(m) for m in missing.values()) if expected else \
        sum(len(s) for s in scores.values())
    if not missing:
        comparable = list(scores)
    else:
        if baseline in scores:
            reference = frozenset(scores[baseline])
        else:
            sets = [frozenset(s) for s in scores.values()]
            reference = max(sets, key=lambda s: (sets.count(s), len(s)))
        comparable = [cid for cid, s in scores.items() if frozenset(s) == reference]
    return {
        "finished": not missing, "done": done, "total": total,
        "missing": {cid: [f"seed {s} fold {f}" for s, f in keys] for cid, keys in missing.items()},
        "comparable": comparable,
    }


def continue_command(kind: str | None, config_file: str | None) -> str:
    """The command that finishes a study of ``kind`` (ablation or search)."""
    command = "search" if kind and kind.startswith("search") else "ablate"
    return f"geofuse {command} -c {config_file or 'CONFIG'}"


def unfinished_alert(done: Mapping[str, Any], config_ids: list[str]) -> doc.Alert:
    """The report's caution box for an unfinished study (``done``: :func:`completeness` plus
    ``continue``)."""
    left = [cid for cid in config_ids if cid not in done["comparable"]]
    return doc.Alert(
        "caution", f"UNFINISHED STUDY: {done['done']} of {done['total']} cells finished. "
        "Only configurations with the same finished cells as the baseline are compared "
        f"and ranked{' (left out: ' + ', '.join(left) + ')' if left else ''}; continue "
        f"with `{done['continue']}`.",
        [f"{cid}: missing {', '.join(m)}" for cid, m in done["missing"].items()])
