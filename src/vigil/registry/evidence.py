"""Which evidence the gate judges a candidate on (``metrics.json``'s ``evidence``).

- ``labelled`` (also when the key is absent: every older metrics file): the test split's labelled
  anomalies, the gate's usual rules.
- ``synthetic``: a normal-only dataset; its ``synthetic_*`` metrics (anomalies pasted into the
  val images, ``vigil.evaluation.evidence``) stand in for the label metrics. The gate promotes on
  them only when ``gate.allow_synthetic_evidence`` is true; otherwise it fails and says what is
  missing. The false-alarm rate stays the one measured on normal test items when test holds any.
- ``none``: nothing to judge recall or precision on; the gate fails and says what is missing.

The evidence also enters the gate-settings hash (``gate_settings``) when it is not ``labelled``,
so a synthetic-evidence candidate is never compared with a labelled-evidence champion.
"""

from __future__ import annotations

from typing import Any

LABELLED, SYNTHETIC, NONE = "labelled", "synthetic", "none"
KEY = "evidence"
ADD_LABELS = "add test/<defect>/ images with ground_truth masks"
MISSING = (
    "no labelled anomalies in the test split: add test/<defect>/ images with ground_truth "
    "masks, or set gate.allow_synthetic_evidence: true"
)
#: metrics.json keys read under synthetic evidence -> the gate's usual keys.
SYNTHETIC_KEYS = {
    "synthetic_precision_at_threshold": "precision_at_threshold",
    "synthetic_recall_at_threshold": "recall_at_threshold",
    "synthetic_recall_at_precision": "recall_at_precision",
    "synthetic_image_auroc": "image_auroc",
}


def evidence_of(metrics: dict[str, Any]) -> str:
    """The evidence named in ``metrics`` (absent: ``labelled``)."""
    return str(metrics.get(KEY) or LABELLED)


def judged_metrics(metrics: dict[str, Any], evidence: str) -> dict[str, Any]:
    """The metrics the gate's rules read: under synthetic evidence the ``synthetic_*`` values
    under the usual names (the false-alarm rate of the synthetic set's clean val images only
    when the test split held no normal item)."""
    if evidence != SYNTHETIC:
        return dict(metrics)
    out = {k: v for k, v in metrics.items() if k not in SYNTHETIC_KEYS.values()}
    for key, name in SYNTHETIC_KEYS.items():
        if key in metrics:
            out[name] = metrics[key]
    if "false_alarm_rate" not in metrics and "synthetic_false_alarm_rate" in metrics:
        out["false_alarm_rate"] = metrics["synthetic_false_alarm_rate"]
        out["n_test"] = metrics.get("synthetic_n")
        out["n_test_anomalous"] = metrics.get("synthetic_n_anomalous")
    return out


def _synthetic_wording(reason: str) -> str:
    return (
        reason.replace("on the test split", "on synthetic anomalies in val")
        .replace("(test split:", "(synthetic val:")
    )


def judge(
    evidence: str, allow_synthetic: bool, passed: bool, reasons: list[str],
    metrics: dict[str, Any],
) -> tuple[bool, list[str]]:
    """(verdict, reasons) of the bars once the evidence is taken into account: the first reason
    says which evidence was used; without labelled anomalies (and without the switch) the
    candidate fails, with what is missing."""
    if evidence == LABELLED:
        n = metrics.get("n_test_anomalous")
        count = f" ({int(n)} anomalous test items)" if isinstance(n, (int, float)) else ""
        return passed, [f"evidence: labelled anomalies in the test split{count}", *reasons]
    if evidence == SYNTHETIC:
        worded = [_synthetic_wording(r) for r in reasons]
        if allow_synthetic:
            head = (
                "evidence: synthetic anomalies pasted into the val images "
                "(gate.allow_synthetic_evidence: true); no labelled anomalies in the test split"
            )
            return passed, [head, *worded]
        head = f"evidence: synthetic only, not accepted: {MISSING}"
        return False, [head, *(f"synthetic evidence (not judged): {r}" for r in worded)]
    return False, [
        f"evidence: none: no labelled anomalies in the test split and no synthetic evidence "
        f"(image datasets only): {ADD_LABELS}"
    ]
