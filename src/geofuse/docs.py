"""Generate the config reference (Markdown) from the pydantic config models."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from geofuse.config import StudyConfig


def _type_name(ann: Any) -> str:
    text = getattr(ann, "__name__", None) if isinstance(ann, type) else None
    text = text or str(ann).replace("typing.", "")
    text = re.sub(r"geofuse\.(?:\w+\.)*(?=[A-Z])", "", text)  # geofuse.config.X -> X
    return text.replace("|", "or")


def _default(field: Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "**required**"
    if field.default_factory is not None:
        return "(default object)"
    value = field.default
    if isinstance(value, BaseModel):
        return "(see section)"
    return f"`{json.dumps(value)}`"


def _nested_models(ann: Any) -> list[type[BaseModel]]:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    out: list[type[BaseModel]] = []
    for arg in getattr(ann, "__args__", ()) or ():
        out.extend(_nested_models(arg))
    return out


def config_reference_markdown() -> str:
    """Markdown tables of every config section, key, type, default and description."""
    lines = [
        "# Config reference",
        "",
        "Generated from the config models by `geofuse config --reference`; do not edit by hand.",
        "Unknown keys are errors. Relative paths are resolved against the config file's folder;",
        "outputs (`prepare.output`, `extract.output`, `train.output`) against `workdir`.",
        "",
    ]
    seen: set[type[BaseModel]] = set()
    queue: list[tuple[str, type[BaseModel]]] = [("(top level)", StudyConfig)]
    while queue:
        section, model = queue.pop(0)
        if model in seen:
            continue
        seen.add(model)
        doc = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else ""
        lines += [f"## `{section}` — {model.__name__}", "", doc, "",
                  "| key | type | default | description |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            desc = (field.description or "").replace("|", "\\|")
            lines.append(
                f"| `{name}` | `{_type_name(field.annotation)}` | {_default(field)} | {desc} |"
            )
            for sub in _nested_models(field.annotation):
                key = name if section == "(top level)" else f"{section}.{name}"
                queue.append((key, sub))
        lines.append("")
    return "\n".join(lines)
