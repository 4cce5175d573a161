"""A self-contained HTML evaluation report: metrics tables and the PNG figures inlined (base64),
so the one file reads the same on disk, in a CI artifact, or in the MLflow UI.

It opens with a plain-language verdict computed from the metrics ("caught 21 of 21 defective
images, 1 false alarm in 30 good images at threshold X"), the gate preview and, once the register
stage has run, the registration verdict (``with_registration`` fills the ``REGISTRATION_MARK``
placeholder in the copy logged to the MLflow run); then the confusion matrix, the metric tables,
the figures, the false alarms (normal items at or above the threshold) and escapes (anomalous
items below it), each saying "none" when there are none, and a short glossary.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vigil.atomic import atomic_write_text

#: Figures whose title starts with these go under their own sections (``outputs.draw_figures``
#: draws them only when there are such items; the report then says "none").
FALSE_ALARMS = "False alarms"
ESCAPES = "Escapes"
#: Placeholder the register stage replaces with the registration verdict (``with_registration``).
REGISTRATION_MARK = "<!-- vigil:registration -->"
GLOSSARY = {
    "threshold": "an item is flagged anomalous when its score is at or above this value",
    "recall": "share of the anomalous test items that were flagged (defects caught)",
    "false-alarm rate": "share of the normal test items that were flagged (good items rejected)",
    "escape rate": "share of the anomalous test items that were not flagged (1 - recall)",
    "precision": "share of the flagged test items that really are anomalous; it depends on the "
    "test split's defect share, which is far higher than a line's",
    "recall at precision": "best recall any threshold reaches on the test split at the target "
    "precision (a threshold-free measure of the model)",
    "AUROC": "probability that a random anomalous item scores above a random normal one "
    "(1.0 = perfect ranking, 0.5 = chance)",
    "average precision": "area under the precision-recall curve",
    "pixel AUROC / AUPRO": "how well the heat map ranks defect pixels above normal pixels / "
    "covers each defect region (MVTec AD's per-region overlap up to 30 % false-positive rate)",
}

_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;max-width:1100px;color:#222}
h1{font-size:22px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
.pass{color:#0a7a2f;font-weight:bold} .fail{color:#b00020;font-weight:bold}
.note{color:#555;font-size:13px} img{max-width:100%;border:1px solid #eee;margin:6px 0}
.verdict{font-size:16px;margin:10px 0} dt{font-weight:bold;margin-top:6px} dd{margin-left:18px}
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


def _finite(metrics: Mapping[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def confusion_counts(metrics: Mapping[str, Any]) -> dict[str, int] | None:
    """``{"tp", "fp", "fn", "tn"}`` on the test split at the threshold: the counts themselves
    when the metrics hold them, else from ``n_test``, ``n_test_anomalous``,
    ``recall_at_threshold`` and ``false_alarm_rate``; None when they cannot be known."""
    if all(_finite(metrics, k) is not None for k in ("tp", "fp", "fn", "tn")):
        return {k: int(metrics[k]) for k in ("tp", "fp", "fn", "tn")}
    n, n_anomalous = _finite(metrics, "n_test"), _finite(metrics, "n_test_anomalous")
    recall, far = _finite(metrics, "recall_at_threshold"), _finite(metrics, "false_alarm_rate")
    if None in (n, n_anomalous, recall, far):
        return None
    n_normal = int(n) - int(n_anomalous)
    tp, fp = int(round(recall * n_anomalous)), int(round(far * n_normal))
    return {"tp": tp, "fp": fp, "fn": int(n_anomalous) - tp, "tn": n_normal - fp}


def _units(modality: str | None) -> tuple[str, str]:
    """(anomalous, normal) item names for sentences."""
    if modality == "video":
        return "anomalous frames", "normal frames"
    return "defective images", "good images"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def verdict_sentence(
    metrics: Mapping[str, Any], calibration: Mapping[str, Any], modality: str | None = None
) -> str:
    """The report's first sentence, from the metrics: what was caught and falsely flagged."""
    counts = confusion_counts(metrics)
    threshold = _finite(metrics, "threshold")
    if threshold is None:
        threshold = _finite(calibration, "threshold")
    at = f"at threshold {threshold:.4g}" if threshold is not None else "at the threshold"
    anomalous, normal = _units(modality)
    if counts is None:
        return f"The test split's counts are not in the metrics; see the tables below ({at})."
    n_anomalous, n_normal = counts["tp"] + counts["fn"], counts["fp"] + counts["tn"]
    method, split = calibration.get("method"), calibration.get("split", "tune")
    how = {
        "precision": f"calibrated on the {split} split for precision >= "
        f"{_finite(calibration, 'target_precision') or 0:g}",
        "false_alarm_rate": f"calibrated on normal {split} and validation items for a "
        f"false-alarm rate <= {_finite(calibration, 'max_false_alarm_rate') or 0:g}",
        "prevalence": f"calibrated on the {split} split for precision >= "
        f"{_finite(calibration, 'target_precision') or 0:g} at a "
        f"{_finite(calibration, 'prevalence') or 0:g} defect rate",
        "normal_quantile": "a quantile of normal scores (no labelled anomalies to calibrate on)",
    }.get(method, "")
    return (
        f"On the test split: caught {counts['tp']} of {n_anomalous} {anomalous}, "
        f"{_plural(counts['fp'], 'false alarm')} in {n_normal} {normal} {at}"
        f"{f' ({how})' if how else ''}."
    )


def gate_sentence(gate: Mapping[str, Any]) -> str:
    """The gate preview in one sentence (the champion comparison happens at register)."""
    verdict = "would pass" if gate.get("passed") else "would not pass"
    failing = [r for r in gate.get("reasons", []) if "below" in r or "above" in r or
               "cannot pass" in r or "lack" in r]
    why = "; ".join(failing) if failing else "; ".join(
        r for r in gate.get("reasons", []) if r.endswith(": ok")
    )
    return f"Gate preview before the champion comparison: {verdict} ({why})."


def registration_sentence(decision: Any) -> str:
    """The register stage's verdict in one sentence (``decision``: a ``Decision`` or its dict)."""
    get = decision.get if isinstance(decision, Mapping) else (lambda k: getattr(decision, k))
    gate = get("gate") or {}
    verdict = "passed" if get("passed") else "did not pass"
    reasons = [r for r in (get("reasons") or []) if not r.endswith(": ok")] or list(
        get("reasons") or []
    )
    if get("promoted"):
        outcome = "it is now champion"
    elif get("passed") and (get("promotion") or {}).get("allowed") is False:
        outcome = f"not promoted: {(get('promotion') or {}).get('why')}; it is challenger"
    else:
        outcome = f"champion stays {get('champion_before') or '(none)'}; it is challenger"
    compared = " (compared with the champion)" if gate.get("compared_with_champion") else ""
    return (
        f"Registered as version {get('version')} of {get('model_name')}; the gate {verdict}"
        f"{compared} because {'; '.join(reasons)}; {outcome}."
    )


def with_registration(report_html: str, decision: Any) -> str:
    """``report_html`` with the registration verdict in place of ``REGISTRATION_MARK``."""
    sentence = f"<p class='verdict'>{html.escape(registration_sentence(decision))}</p>"
    return report_html.replace(REGISTRATION_MARK, sentence, 1)


def confusion_table(counts: Mapping[str, int] | None, modality: str | None = None) -> str:
    if counts is None:
        return "<p class='note'>not available: the metrics lack the test counts</p>"
    anomalous, normal = _units(modality)
    return (
        "<table><tr><th>test split</th><th>flagged (score &ge; threshold)</th>"
        "<th>not flagged</th></tr>"
        f"<tr><td>{anomalous}</td><td>{counts['tp']} caught</td>"
        f"<td>{counts['fn']} escaped</td></tr>"
        f"<tr><td>{normal}</td><td>{counts['fp']} false alarms</td>"
        f"<td>{counts['tn']} passed</td></tr></table>"
    )


def _examples_section(
    title: str, figure: Path | None, count: int | None, none_text: str
) -> list[str]:
    parts = [f"<h2>{html.escape(title)}</h2>"]
    if figure is not None:
        shown = f" ({count} in all; the worst shown)" if count else ""
        parts += [f"<p class='note'>{html.escape(title)}{shown}</p>", image_tag(figure, title)]
    else:
        parts.append(f"<p class='note'>{html.escape(none_text)}</p>")
    return parts


def render_report(
    title: str,
    summary: Mapping[str, Any],
    metrics: Mapping[str, Any],
    calibration: Mapping[str, Any],
    tables: Mapping[str, Sequence[Mapping[str, Any]]],
    figures: Mapping[str, Path],
    notes: Sequence[str] = (),
    *,
    gate: Mapping[str, Any] | None = None,
) -> str:
    """The report HTML: verdict (+ gate preview, registration placeholder), confusion matrix,
    run summary, metrics, calibration, named row tables, figures, false alarms and escapes
    (``FALSE_ALARMS`` / ``ESCAPES`` figures, or "none"), glossary."""
    modality = summary.get("modality")
    counts = confusion_counts(metrics)
    threshold = _finite(metrics, "threshold")
    at = f"{threshold:.4g}" if threshold is not None else "the threshold"
    anomalous, normal = _units(modality)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Verdict</h2>",
        f"<p class='verdict'>{html.escape(verdict_sentence(metrics, calibration, modality))}</p>",
    ]
    if gate is not None:
        parts.append(f"<p>{html.escape(gate_sentence(gate))}</p>")
    parts += [REGISTRATION_MARK, "<h2>Confusion matrix (test split, at the threshold)</h2>",
              confusion_table(counts, modality), "<h2>Run</h2>", kv_table(summary)]
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in notes]
    parts += ["<h2>Test metrics</h2>", kv_table(metrics)]
    parts += ["<h2>Operating threshold (calibration)</h2>", kv_table(calibration)]
    for name, rows in tables.items():
        parts += [f"<h2>{html.escape(name)}</h2>", rows_table(rows)]
    examples = {FALSE_ALARMS: None, ESCAPES: None}
    for name, path in figures.items():
        kind = next((k for k in examples if name.startswith(k)), None)
        if kind is not None:
            examples[kind] = path
        else:
            parts += [f"<h2>{html.escape(name)}</h2>", image_tag(path, name)]
    parts += _examples_section(
        f"False alarms: {normal} scoring at or above the threshold {at}",
        examples[FALSE_ALARMS], None if counts is None else counts["fp"],
        f"None: no {normal[:-1]} scored at or above the threshold {at}.",
    )
    parts += _examples_section(
        f"Escapes: {anomalous} scoring below the threshold {at}",
        examples[ESCAPES], None if counts is None else counts["fn"],
        f"None: every {anomalous[:-1]} scored at or above the threshold {at}.",
    )
    glossary = "".join(
        f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in GLOSSARY.items()
    )
    parts += ["<h2>Glossary</h2>", f"<dl>{glossary}</dl>", "</body></html>"]
    return "\n".join(parts)


def write_report(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write_text(path, text)
