"""report.html opens with a verdict that matches the metrics, a confusion matrix, truthful
false-alarm / escape sections and a glossary; the register stage adds its verdict."""

from __future__ import annotations

import re

import numpy as np
import pytest

from vigil.evaluation import metrics as M
from vigil.evaluation import plots
from vigil.evaluation.report import (
    REGISTRATION_MARK,
    confusion_counts,
    render_report,
    with_registration,
)
from vigil.registry.decision import Decision

# a scores fixture: 30 good parts, 21 defects; one good part scores above the threshold, no
# defect below it
THRESHOLD = 0.0166
LABELS = np.r_[np.zeros(30), np.ones(21)].astype(int)
SCORES = np.r_[np.linspace(0.005, 0.015, 29), 0.020, np.linspace(0.017, 0.05, 21)]


def metrics_from_scores(labels, scores, threshold) -> dict:
    """The metrics.json keys the report reads, computed from scores as the evaluate stage does."""
    base = M.image_metrics(labels, scores, 0.9, threshold)
    return {
        "image_auroc": base["auroc"],
        "recall_at_precision": base["recall_at_precision"],
        "target_precision": 0.9,
        "threshold": threshold,
        "precision_at_threshold": base["precision_at_threshold"],
        "recall_at_threshold": base["recall_at_threshold"],
        "false_alarm_rate": base["false_alarm_rate"],
        "escape_rate": base["escape_rate"],
        "n_test": base["n"],
        "n_test_anomalous": base["n_anomalous"],
    }


CALIBRATION = {"threshold": THRESHOLD, "method": "precision", "target_precision": 0.9,
               "split": "tune"}
GATE = {"passed": False, "reasons": ["precision 0.955 on the test split >= 0.9: ok",
                                     "false-alarm rate 0.033 (1 of 30 good items) <= 0.05: ok",
                                     "recall 1.000 >= 0.8: ok"]}


def headings(page: str) -> list[str]:
    return re.findall(r"<h2>(.*?)</h2>", page)


def test_verdict_and_headings_match_the_metrics(tmp_path):
    metrics = metrics_from_scores(LABELS, SCORES, THRESHOLD)
    assert confusion_counts(metrics) == {"tp": 21, "fp": 1, "fn": 0, "tn": 29}
    flagged_good = plots.plot_examples([], tmp_path / "fa.png", "false alarms")
    roc = plots.plot_roc(np.array([0, 1]), np.array([0, 1]), 0.5, tmp_path / "roc.png")
    page = render_report(
        "vigil evaluation: capsules", {"dataset": "capsules", "modality": "image"}, metrics,
        CALIBRATION, {"Per defect type (test)": []},
        {"ROC curve": roc, "False alarms (normal images at or above the threshold)": flagged_good},
        gate={**GATE, "passed": True},
    )
    body = page[page.index("<body>"):]
    verdict = re.search(r"<p class='verdict'>(.*?)</p>", body).group(1)
    assert verdict == (
        "On the test split: caught 21 of 21 defective images, 1 false alarm in 30 good images "
        "at threshold 0.0166 (calibrated on the tune split for precision &gt;= 0.9)."
    )
    assert body.index("<h2>Verdict</h2>") < body.index("Confusion matrix") < body.index(
        "Test metrics")
    assert headings(page) == [
        "Verdict",
        "Confusion matrix (test split, at the threshold)",
        "Run",
        "Test metrics",
        "Operating threshold (calibration)",
        "Per defect type (test)",
        "ROC curve",
        "False alarms: good images scoring at or above the threshold 0.0166",
        "Escapes: defective images scoring below the threshold 0.0166",
        "Glossary",
    ]
    assert "<td>defective images</td><td>21 caught</td><td>0 escaped</td>" in page
    assert "<td>good images</td><td>1 false alarms</td><td>29 passed</td>" in page
    assert "Gate preview before the champion comparison: would pass" in page
    # one false alarm: its figure is shown; no escape: the report says so instead of a figure
    assert "False alarms: good images scoring at or above the threshold 0.0166 (1 in all" in page
    assert "None: every defective image scored at or above the threshold 0.0166." in page
    assert page.count("data:image/png;base64,") == 2
    assert "<dt>false-alarm rate</dt>" in page and "<dt>AUROC</dt>" in page


def test_no_false_alarms_says_none_and_video_names_frames():
    labels = np.r_[np.zeros(87), np.ones(31)].astype(int)
    scores = np.r_[np.linspace(0, 0.3, 87), np.linspace(0.2, 0.9, 31)]
    metrics = metrics_from_scores(labels, scores, 0.3368)
    counts = confusion_counts(metrics)
    assert counts["fp"] == 0 and counts["fn"] > 0
    page = render_report("vigil evaluation: print", {"modality": "video"}, metrics,
                         {**CALIBRATION, "threshold": 0.3368}, {}, {})
    assert (f"caught {counts['tp']} of 31 anomalous frames, 0 false alarms in 87 normal frames "
            "at threshold 0.3368") in page
    assert "None: no normal frame scored at or above the threshold 0.3368." in page
    assert "Escapes: anomalous frames scoring below the threshold 0.3368" in page
    assert "data:image/png" not in page  # no figure claims to show escapes it does not have


@pytest.mark.parametrize(
    ("decision", "expected"),
    [
        (Decision("vigil-capsules-image", "4", True, True, ["recall 1.000 >= 0.8: ok"], "3", "4",
                  gate={"compared_with_champion": True}),
         "Registered as version 4 of vigil-capsules-image; the gate passed (compared with the "
         "champion) because recall 1.000 &gt;= 0.8: ok; it is now champion."),
        (Decision("vigil-capsules-image", "5", True, False, ["recall 1.000 >= 0.8: ok"], "4", "4",
                  promotion={"allowed": False, "why": "a DVC experiment 'blur5'"}),
         "not promoted: a DVC experiment &#x27;blur5&#x27;; it is challenger."),
        (Decision("vigil-print-video", "2", False, False,
                  ["recall 0.484 is below the minimum 0.8"], None, None),
         "the gate did not pass because recall 0.484 is below the minimum 0.8; champion stays "
         "(none); it is challenger."),
    ],
)
def test_registration_verdict_fills_the_placeholder(decision, expected):
    page = render_report("t", {"modality": "image"}, metrics_from_scores(LABELS, SCORES, 0.0166),
                         CALIBRATION, {}, {})
    assert REGISTRATION_MARK in page
    registered = with_registration(page, decision)
    assert REGISTRATION_MARK not in registered and expected in registered
