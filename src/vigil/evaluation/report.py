"""A self-contained HTML evaluation report: metrics tables and the PNG figures inlined (base64),
so the one file reads the same on disk, in a CI artifact, or in the MLflow UI."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vigil.atomic import atomic_write_text

_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;max-width:1100px;color:#222}
h1{font-size:22px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
.pass{color:#0a7a2f;font-weight:bold} .fail{color:#b00020;font-weight:bold}
.note{color:#555;font-size:13px} img{max-width:100%;border:1px solid #eee;margin:6px 0}
"""


def fmt(value: Any) -> str:
    """A table cell: floats to 4 significant digits, None/NaN as an em dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "&mdash;"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if value in ("PASS", "FAIL"):
        return f"<span class='{value.lower()}'>{value}</span>"
    return html.escape(str(value))


def kv_table(values: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{fmt(v)}</td></tr>"
                   for k, v in values.items())
    return f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>"


def rows_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "<p class='note'>no rows</p>"
    columns = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{fmt(row.get(c))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def image_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def render_report(
    title: str,
    summary: Mapping[str, Any],
    metrics: Mapping[str, Any],
    calibration: Mapping[str, Any],
    tables: Mapping[str, Sequence[Mapping[str, Any]]],
    figures: Mapping[str, Path],
    notes: Sequence[str] = (),
) -> str:
    """The report HTML: summary, metrics, calibration, named row tables, named figures."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        kv_table(summary),
    ]
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in notes]
    parts += ["<h2>Test metrics</h2>", kv_table(metrics)]
    parts += ["<h2>Operating threshold (calibration)</h2>", kv_table(calibration)]
    for name, rows in tables.items():
        parts += [f"<h2>{html.escape(name)}</h2>", rows_table(rows)]
    for name, path in figures.items():
        parts += [f"<h2>{html.escape(name)}</h2>", image_tag(path, name)]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write_text(path, text)
