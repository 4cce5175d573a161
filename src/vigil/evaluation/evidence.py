"""What the evaluate stage's numbers rest on, and the metrics of a normal-only dataset.

``evidence`` (in ``metrics.json``; the gate reads it):

- ``labelled``: the test split holds labelled anomalies; the usual test metrics.
- ``synthetic``: no labelled anomaly in test (a normal-only image dataset). Metrics that need
  labels are absent (never NaN); the threshold is calibrated on normal items (val + tune normals)
  to ``gate.max_false_alarm_rate``; ``false_alarm_rate`` is measured on normal test items when
  test holds any; and ``synthetic_*`` metrics (``synthetic_image_auroc``, the rates at the
  threshold, ...) are measured on the val images plus a copy of each with a pasted synthetic
  anomaly (``vigil.sweep.synthetic``). The gate promotes on them only when
  ``gate.allow_synthetic_evidence`` is true.
- ``none``: neither (a video dataset without labelled anomalies, or no val images).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vigil.data.prepared import PreparedDataset
from vigil.detector import Detector
from vigil.evaluation import metrics as M
from vigil.evaluation import pixel_metrics as PM
from vigil.evaluation import plots
from vigil.evaluation.outputs import PLOTS_DIR, write_csv
from vigil.evaluation.splits import SplitScores
from vigil.sweep.synthetic import (
    EVIDENCE_LABELLED,
    EVIDENCE_NONE,
    EVIDENCE_SYNTHETIC,
    synthetic_val,
)

EVIDENCE_KEY = "evidence"  # in metrics.json: labelled | synthetic | none
SYNTHETIC_PREFIX = "synthetic_"


def evidence_of(data: PreparedDataset, test: SplitScores) -> str:
    """``labelled`` when scored test items include anomalies, else ``synthetic`` for an image
    dataset with val images, else ``none``."""
    if (test.labels[test.scored] == 1).any():
        return EVIDENCE_LABELLED
    if data.modality == "image" and len(data.indices("val")):
        return EVIDENCE_SYNTHETIC
    return EVIDENCE_NONE


def synthetic_metrics(
    detector: Detector, data: PreparedDataset, threshold: float, precision: float
) -> dict[str, Any]:
    """``synthetic_*`` metrics of ``detector`` (calibrated at ``threshold``) on the synthetic
    set of ``data``'s val images: image AUROC, AP, best recall at ``precision``, the rates at the
    threshold, pixel AUROC over the pasted masks, and the item counts."""
    synthetic = synthetic_val(data)
    scored = detector.score_prepared(synthetic.frames)
    ok = np.asarray(scored.valid, dtype=bool)
    base = M.image_metrics(
        synthetic.labels[ok], scored.scores[ok], precision, threshold, split="synthetic val"
    )
    out = {f"{SYNTHETIC_PREFIX}{k}": v for k, v in base.items() if k != "auroc"}
    out[f"{SYNTHETIC_PREFIX}image_auroc"] = base["auroc"]
    out[f"{SYNTHETIC_PREFIX}pixel_auroc"] = PM.pixel_auroc(synthetic.masks[ok], scored.maps[ok])
    return out


def unlabelled_metrics(
    test: SplitScores, threshold: float, precision: float, gate_can_pass: bool
) -> dict[str, Any]:
    """The test metrics that need no labelled anomaly: the operating point and, when the test
    split holds normal items, their false-alarm rate at the threshold."""
    normals = test.scores[test.scored & (test.labels == 0)]
    out: dict[str, Any] = {
        "target_precision": precision,
        "threshold": threshold,
        "gate_can_pass": gate_can_pass,
        "n_test": int(test.scored.sum()),
        "n_test_anomalous": 0,
    }
    if normals.size:
        out["false_alarm_rate"] = float(np.mean(normals >= threshold))
    return out


def write_unlabelled_plot_data(out_dir: Path, test: SplitScores) -> dict[str, Path]:
    """The stage's plot files without labelled anomalies: PR and ROC curves cannot be drawn, so
    they hold their header only (DVC finds every declared output); ``scores.csv`` as usual."""
    plots_dir = out_dir / PLOTS_DIR
    return {
        "pr": write_csv(plots_dir / "pr.csv", {"recall": [], "precision": [], "threshold": []}),
        "roc": write_csv(plots_dir / "roc.csv", {"fpr": [], "tpr": [], "threshold": []}),
        "scores": write_csv(plots_dir / "scores.csv", {
            "row": test.rows, "defect": test.defects, "label": test.labels,
            "score": test.scores,
        }),
    }


def unlabelled_figures(
    detector: Detector, data: PreparedDataset, test: SplitScores, threshold: float,
    evidence: str, fig_dir: Path,
) -> dict[str, Path]:
    """Score histograms at the threshold: the synthetic set (``good`` val images vs their
    ``synthetic`` copies) when that is the evidence, and the normal test items when any."""
    figures = {}
    if evidence == EVIDENCE_SYNTHETIC:
        synthetic = synthetic_val(data)
        scores = detector.score_prepared(synthetic.frames).scores
        names = ["good" if label == 0 else "synthetic" for label in synthetic.labels]
        figures["Scores on synthetic anomalies (val images)"] = plots.plot_score_histograms(
            scores, names, threshold, fig_dir / "synthetic_score_hist.png",
            title="Scores: val images (good) and their synthetic copies",
        )
    if test.scored.any():
        figures["Score histograms per defect type"] = plots.plot_score_histograms(
            test.scores[test.scored], [d for d, k in zip(test.defects, test.scored) if k],
            threshold, fig_dir / "score_hist.png",
        )
    return figures


def missing_evidence_note(evidence: str) -> str | None:
    """The report's and terminal's note when the test split holds no labelled anomaly."""
    if evidence == EVIDENCE_LABELLED:
        return None
    what = (
        "synthetic_* metrics are measured on synthetic anomalies pasted into the val images"
        if evidence == EVIDENCE_SYNTHETIC
        else "no synthetic evidence either (image datasets only)"
    )
    return (
        f"no labelled anomalies in the test split: the threshold is calibrated on normal items "
        f"and metrics that need labels are absent; {what}. The gate needs labelled anomalies: "
        "add test/<defect>/ images with ground_truth masks, or set "
        "gate.allow_synthetic_evidence: true"
    )


def unlabelled_summary(
    dataset: str, metrics: dict[str, Any], calibration: M.Calibration, report: Path
) -> list[str]:
    """The terminal lines of an evaluation without labelled anomalies in test."""
    far = metrics.get("false_alarm_rate")
    on_test = f", false alarms on normal test items {far:.1%}" if far is not None else ""
    lines = [
        f"evaluate {dataset}: no labelled anomalies in the test split "
        f"(evidence: {'synthetic' if 'synthetic_image_auroc' in metrics else 'none'})",
        f"  threshold {calibration.threshold:.5g} ({calibration.method} on normal items){on_test}",
    ]
    if "synthetic_image_auroc" in metrics:
        lines.append(
            f"  synthetic anomalies in val: image AUROC {metrics['synthetic_image_auroc']:.3f}, "
            f"recall {metrics.get('synthetic_recall_at_threshold', float('nan')):.3f}, "
            f"precision {metrics.get('synthetic_precision_at_threshold', float('nan')):.3f} "
            "at the threshold"
        )
    lines.append(f"  report: {report}")
    return lines
