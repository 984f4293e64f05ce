"""A tiny document model (headings, text, tables, figures, code, alerts) rendered to Markdown
and to one self-contained HTML page (inline CSS, figures as base64 PNG ``data:`` URIs, no
scripts and no external requests).

Text may use two inline Markdown marks, ``**bold**`` and ```code```; everything else is escaped.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0 auto;
max-width:1180px;padding:24px 32px;color:#1d2430;background:#fff;line-height:1.45}
h1{border-bottom:3px solid #2a6ebb;padding-bottom:6px}h2{margin-top:2em;color:#2a6ebb;
border-bottom:1px solid #d5dbe3}table{border-collapse:collapse;margin:10px 0 18px;
font-size:14px}th,td{border:1px solid #cfd6df;padding:4px 9px;text-align:right}
th{background:#eef3f9}td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#f8fafc}figure{margin:12px 0 24px}
figure img{max-width:100%;border:1px solid #e1e6ed}figcaption{font-size:13px;color:#5a6472}
pre{background:#f4f6f8;border:1px solid #dde3ea;padding:10px;overflow-x:auto;font-size:13px}
code{font-family:"DejaVu Sans Mono",Menlo,monospace}
.alert{border-left:8px solid;padding:10px 16px;margin:14px 0}
.caution{border-color:#c62828;background:#fdecea;color:#7f1010}
.note{border-color:#2a6ebb;background:#eaf2fb}.ok{border-color:#2e7d32;background:#edf7ee}
"""


@dataclass
class Heading:
    """Section heading; ``level`` 1-4."""

    text: str
    level: int = 2


@dataclass
class Para:
    """A paragraph of text."""

    text: str


@dataclass
class BulletList:
    """An unordered list."""

    items: list[str]


@dataclass
class Table:
    """A table; cells are converted with ``str``."""

    header: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class Figure:
    """A PNG figure: ``png`` is embedded in HTML, ``path`` (relative) is linked in Markdown."""

    title: str
    png: bytes
    path: str


@dataclass
class Code:
    """A code block."""

    text: str
    language: str = ""


@dataclass
class Alert:
    """A highlighted box: ``caution`` (red), ``note`` (blue) or ``ok`` (green)."""

    kind: Literal["caution", "note", "ok"]
    title: str
    items: list[str] = field(default_factory=list)


Block = Heading | Para | BulletList | Table | Figure | Code | Alert


def inline_html(text: str) -> str:
    """Escape ``text`` and turn ``**bold**`` and ```code``` into tags."""
    out = html.escape(str(text), quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: Sequence[Block]) -> str:
    """Render ``blocks`` as GitHub-flavoured Markdown."""
    lines: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            lines += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            lines += [b.text, ""]
        elif isinstance(b, BulletList):
            lines += [*(f"- {item}" for item in b.items), ""]
        elif isinstance(b, Table):
            lines += [*([b.caption, ""] if b.caption else []),
                      "| " + " | ".join(_md_cell(h) for h in b.header) + " |",
                      "|" + "|".join(["---"] * len(b.header)) + "|",
                      *("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows), ""]
        elif isinstance(b, Figure):
            lines += [f"![{b.title}]({b.path})", ""]
        elif isinstance(b, Code):
            lines += [f"```{b.language}", b.text.rstrip(), "```", ""]
        elif isinstance(b, Alert):
            tag = {"caution": "CAUTION", "note": "NOTE", "ok": "TIP"}[b.kind]
            lines += [f"> [!{tag}]", f"> **{b.title}**"]
            lines += [">", *(f"> - {item}" for item in b.items)] if b.items else []
            lines.append("")
    return "\n".join(lines)


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _html_block(b: Block) -> str:
    if isinstance(b, Heading):
        level = min(max(b.level, 1), 4)
        slug = re.sub(r"[^a-z0-9]+", "-", b.text.lower()).strip("-")
        return f'<h{level} id="{slug}">{inline_html(b.text)}</h{level}>'
    if isinstance(b, Para):
        return f"<p>{inline_html(b.text)}</p>"
    if isinstance(b, BulletList):
        return "<ul>" + "".join(f"<li>{inline_html(i)}</li>" for i in b.items) + "</ul>"
    if isinstance(b, Table):
        caption = f"<caption>{inline_html(b.caption)}</caption>" if b.caption else ""
        head = "".join(f"<th>{inline_html(h)}</th>" for h in b.header)
        body = "".join("<tr>" + "".join(f"<td>{inline_html(c)}</td>" for c in row) + "</tr>"
                       for row in b.rows)
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(b, Figure):
        alt = html.escape(b.title)
        return (f'<figure><img alt="{alt}" src="{png_data_uri(b.png)}">'
                f"<figcaption>{alt}</figcaption></figure>")
    if isinstance(b, Code):
        return f"<pre><code>{html.escape(b.text.rstrip(), quote=False)}</code></pre>"
    items = "".join(f"<li>{inline_html(i)}</li>" for i in b.items)
    return (f'<div class="alert {b.kind}"><strong>{inline_html(b.title)}</strong>'
            + (f"<ul>{items}</ul>" if items else "") + "</div>")


def to_html(title: str, blocks: Sequence[Block]) -> str:
    """One self-contained HTML page for ``blocks`` (no scripts, no external resources)."""
    body = "\n".join(_html_block(b) for b in blocks)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{html.escape(title)}"
            f"</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")
