"""Anomaly-detection metrics on scores, thresholds and masks (scikit-learn underneath).

Conventions: label 1 = anomalous; higher score = more anomalous; an item is flagged when
``score >= threshold`` (serving uses the same comparison). Every function that takes scores
checks them first and raises ``MetricsInputError`` naming the split for NaN/inf scores, length
mismatches, or a split with one class only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn import metrics as skm

#: Quantile of normal validation scores used as the threshold when the tune split has no
#: labelled anomalies (the gate then refuses to pass: precision was never measured).
FALLBACK_QUANTILE = 0.99


class MetricsInputError(ValueError):
    """Scores or labels cannot be evaluated; the message names the split and the problem."""


@dataclass(frozen=True)
class Calibration:
    """The operating threshold and how it was chosen."""

    threshold: float
    method: str  # "precision" (tune split labels) or "normal_quantile" (fallback)
    target_precision: float
    precision: float | None  # achieved on the calibration split (None for the fallback)
    recall: float | None
    split: str
    n_normal: int
    n_anomalous: int
    gate_can_pass: bool  # False when no labelled anomalies were available to calibrate on
    note: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- input checks ----------------------------------------------------------------------------


def check_scores(scores: np.ndarray, split: str) -> np.ndarray:
    """1-D finite float64 scores, or a MetricsInputError naming ``split``."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise MetricsInputError(f"{split} split: expected 1-D scores, got shape {scores.shape}")
    bad = ~np.isfinite(scores)
    if bad.any():
        first = np.flatnonzero(bad)[:5].tolist()
        raise MetricsInputError(
            f"{split} split: {int(bad.sum())} of {scores.size} scores are NaN or inf "
            f"(first at positions {first}); the model diverged or the input is broken"
        )
    return scores


def check_labelled(labels: np.ndarray, scores: np.ndarray, split: str) -> tuple[np.ndarray, ...]:
    """Validated (labels int64 {0,1}, scores float64) with both classes present."""
    labels = np.asarray(labels).astype(np.int64).ravel()
    scores = check_scores(scores, split)
    if labels.shape != scores.shape:
        raise MetricsInputError(
            f"{split} split: {labels.size} labels but {scores.size} scores"
        )
    if not np.isin(labels, (0, 1)).all():
        raise MetricsInputError(f"{split} split: labels must be 0 (normal) or 1 (anomalous)")
    n_anomalous = int(labels.sum())
    if n_anomalous == 0 or n_anomalous == labels.size:
        only = "normal" if n_anomalous == 0 else "anomalous"
        raise MetricsInputError(
            f"{split} split has only {only} items ({labels.size}); AUROC, precision and recall "
            "need both normal and anomalous labelled items"
        )
    return labels, scores


# --- image-level -----------------------------------------------------------------------------


def pr_curve(labels: np.ndarray, scores: np.ndarray, split: str = "test") -> dict[str, np.ndarray]:
    """Precision, recall (n+1,) and thresholds (n,) as ``sklearn.metrics.precision_recall_curve``.

    ``precision[i]``/``recall[i]`` hold when flagging ``score >= thresholds[i]``; thresholds
    ascend; the last point is (precision 1, recall 0) with no threshold.
    """
    labels, scores = check_labelled(labels, scores, split)
    precision, recall, thresholds = skm.precision_recall_curve(labels, scores)
    return {"precision": precision, "recall": recall, "thresholds": thresholds}


def roc_curve(labels: np.ndarray, scores: np.ndarray, split: str = "test") -> dict[str, np.ndarray]:
    labels, scores = check_labelled(labels, scores, split)
    fpr, tpr, thresholds = skm.roc_curve(labels, scores)
    return {"fpr": fpr, "tpr": tpr, "thresholds": thresholds}


def recall_at_precision(
    labels: np.ndarray, scores: np.ndarray, precision: float, split: str = "test"
) -> tuple[float, float | None]:
    """Best recall with precision >= ``precision`` on this split, and the lowest threshold
    achieving it: ``(recall, threshold)``; ``(0.0, None)`` when no threshold reaches it."""
    curve = pr_curve(labels, scores, split)
    ok = np.flatnonzero(curve["precision"][:-1] >= precision)
    if ok.size == 0:
        return 0.0, None
    i = int(ok[0])  # thresholds ascend, recall descends: the first hit is the best recall
    return float(curve["recall"][i]), float(curve["thresholds"][i])


def rates_at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float,
                       split: str = "test") -> dict[str, float]:
    """Confusion counts and rates when flagging ``score >= threshold``.

    ``false_alarm_rate`` = flagged normals / normals (FPR); ``escape_rate`` = missed anomalies /
    anomalies (1 - recall). Precision with nothing flagged is 0 (scikit-learn's convention).
    """
    labels, scores = check_labelled(labels, scores, split)
    flagged = scores >= threshold
    tp = int(np.sum(flagged & (labels == 1)))
    fp = int(np.sum(flagged & (labels == 0)))
    fn = int(np.sum(~flagged & (labels == 1)))
    tn = int(np.sum(~flagged & (labels == 0)))
    return {
        "precision_at_threshold": tp / (tp + fp) if tp + fp else 0.0,
        "recall_at_threshold": tp / (tp + fn),
        "false_alarm_rate": fp / (fp + tn),
        "escape_rate": fn / (tp + fn),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def image_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    precision: float,
    threshold: float | None = None,
    split: str = "test",
) -> dict[str, float]:
    """Threshold-free metrics on ``split`` plus, given the operating ``threshold``, its rates.

    Keys: ``auroc``, ``average_precision``, ``recall_at_precision`` (best recall at precision >=
    ``precision`` on this split: an oracle threshold, comparable across models),
    ``oracle_threshold``, ``n``, ``n_anomalous`` and, with a threshold, the keys of
    ``rates_at_threshold``.
    """
    labels, scores = check_labelled(labels, scores, split)
    recall, oracle = recall_at_precision(labels, scores, precision, split)
    out: dict[str, float] = {
        "auroc": float(skm.roc_auc_score(labels, scores)),
        "average_precision": float(skm.average_precision_score(labels, scores)),
        "recall_at_precision": recall,
        "oracle_threshold": oracle,
        "n": int(labels.size),
        "n_anomalous": int(labels.sum()),
    }
    if threshold is not None:
        out.update(rates_at_threshold(labels, scores, threshold, split))
    return out


def calibrate_threshold(
    labels: np.ndarray,
    scores: np.ndarray,
    precision: float,
    normal_scores: np.ndarray | None = None,
    split: str = "tune",
    fallback_quantile: float = FALLBACK_QUANTILE,
) -> Calibration:
    """The operating threshold: lowest one whose precision on ``split`` is >= ``precision``.

    Among the score cut points the lowest with enough precision is chosen (it has the best
    recall); the threshold is placed midway between that tune score and the next lower one, which
    gives the same tune precision and recall with a margin on either side for unseen data.
    If no cut point reaches the target precision, the highest-precision one is used and the
    calibration says the gate cannot pass.

    Without labelled anomalies on ``split`` (all labels 0, or no items), the threshold is the
    ``fallback_quantile`` of ``normal_scores`` (normal validation scores; ``scores`` when not
    given) and ``gate_can_pass`` is False.
    """
    labels = np.asarray(labels).astype(np.int64).ravel()
    scores = check_scores(scores, split)
    n_anomalous = int(labels.sum())
    n_normal = int(labels.size - n_anomalous)
    if n_anomalous == 0:
        normals = scores if normal_scores is None else check_scores(normal_scores, "val")
        if normals.size == 0:
            raise MetricsInputError(
                f"{split} split has no labelled anomalies and there are no normal scores to "
                "fall back on; cannot choose a threshold"
            )
        return Calibration(
            threshold=float(np.quantile(normals, fallback_quantile)),
            method="normal_quantile",
            target_precision=precision,
            precision=None,
            recall=None,
            split=split,
            n_normal=n_normal,
            n_anomalous=0,
            gate_can_pass=False,
            note=(
                f"{split} split has no labelled anomalies: threshold is the "
                f"{fallback_quantile:.3g} quantile of {normals.size} normal scores; precision is "
                "unmeasured, so the gate cannot pass until labelled anomalies are added"
            ),
        )
    labels, scores = check_labelled(labels, scores, split)
    curve = pr_curve(labels, scores, split)
    cut_precision = curve["precision"][:-1]
    ok = np.flatnonzero(cut_precision >= precision)
    reached = ok.size > 0
    i = int(ok[0]) if reached else int(np.argmax(cut_precision))
    cut = float(curve["thresholds"][i])
    below = scores[scores < cut]
    threshold = 0.5 * (cut + float(below.max())) if below.size else cut
    note = (
        f"lowest threshold with precision >= {precision:g} on {split}"
        if reached
        else f"no threshold reaches precision {precision:g} on {split}; "
        f"using the most precise one ({cut_precision[i]:.3f})"
    )
    return Calibration(
        threshold=threshold,
        method="precision",
        target_precision=precision,
        precision=float(cut_precision[i]),
        recall=float(curve["recall"][i]),
        split=split,
        n_normal=n_normal,
        n_anomalous=n_anomalous,
        gate_can_pass=reached,
        note=note,
    )


def per_defect_table(
    defects: list[str], scores: np.ndarray, threshold: float, split: str = "test"
) -> list[dict[str, Any]]:
    """One row per defect type (``good`` first): count, mean/min/max score, flagged fraction
    (false-alarm rate for ``good``, recall for a defect) and AUROC of that defect vs ``good``."""
    scores = check_scores(scores, split)
    defects_arr = np.asarray(defects)
    if defects_arr.shape != scores.shape:
        raise MetricsInputError(f"{split} split: {defects_arr.size} defect names but "
                                f"{scores.size} scores")
    good = scores[defects_arr == "good"]
    rows = []
    for name in sorted(set(defects), key=lambda d: (d != "good", d)):
        mine = scores[defects_arr == name]
        auroc = None
        if name != "good" and good.size:
            y = np.r_[np.zeros(good.size), np.ones(mine.size)]
            auroc = float(skm.roc_auc_score(y, np.r_[good, mine]))
        rows.append({
            "defect": name,
            "n": int(mine.size),
            "mean_score": float(mine.mean()),
            "min_score": float(mine.min()),
            "max_score": float(mine.max()),
            "flagged_fraction": float(np.mean(mine >= threshold)),
            "auroc_vs_good": auroc,
        })
    return rows


# --- pixel-level -----------------------------------------------------------------------------
