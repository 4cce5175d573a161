"""Operating-threshold calibration for what a production line needs.

The labelled splits are anomaly-heavy (75-88 % anomalous in the kept data sets) while a real line
runs at a 0.1-5 % defect rate, so precision measured on them says little about the alarms a line
will see. Three ways to choose the threshold on the tune split (flag when ``score >= threshold``):

- ``precision``: the lowest threshold whose tune precision is >= the target
  (``metrics.calibrate_threshold``), moved, like the next one, to the middle of the range where
  tune meets both bars when the gate has a recall bar (``centred_on_recall``);
- ``false_alarm_rate``: the lowest threshold that flags at most ``max_false_alarm_rate`` of the
  normal items (tune normals plus the normal validation items, which the model never trained on);
  when the tune split has labelled anomalies and the gate a recall bar, the threshold moves to the
  middle of the range where tune meets both bars (at most that false-alarm rate, at least that
  recall): set exactly at the false-alarm bar, a threshold flags about that rate of unseen good
  parts, so half the time the test split lands above the bar;
- ``prevalence``: the lowest threshold whose precision *at the stated production defect rate*,
  ``r*p / (r*p + far*(1-p))`` from tune recall ``r`` and false-alarm rate ``far``, is >= the
  target.

Each returns a ``Calibration`` (``RateCalibration`` for the last two, which also records the
false-alarm rate reached and the settings) and is placed midway between two observed scores so
unseen data gets a margin on either side. ``calibrate`` dispatches on the method name (the
``evaluate.threshold.method`` setting).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from vigil.evaluation.metrics import (
    Calibration,
    MetricsInputError,
    calibrate_threshold,
    check_scores,
)

METHODS = ("precision", "false_alarm_rate", "prevalence")


@dataclass(frozen=True)
class RateCalibration(Calibration):
    """A calibration that also records the false-alarm rate it reached and its settings."""

    false_alarm_rate: float | None = None  # on the normal items used (tune + val normals)
    max_false_alarm_rate: float | None = None
    prevalence: float | None = None
    n_normal_used: int = 0  # normal items the false-alarm rate was measured on


def precision_at_prevalence(
    recall: float | None, false_alarm_rate: float | None, prevalence: float
) -> float | None:
    """Expected precision on a line with defect rate ``prevalence``: ``r*p / (r*p + far*(1-p))``.

    None when an input is missing or not finite; 0.0 when nothing would be flagged (r = far = 0,
    scikit-learn's convention for precision with no positives)."""
    values = (recall, false_alarm_rate)
    if any(v is None or not math.isfinite(float(v)) for v in values):
        return None
    if not 0.0 < prevalence < 1.0:
        raise ValueError(f"prevalence must be in (0, 1), got {prevalence!r}")
    hits = float(recall) * prevalence
    alarms = hits + float(false_alarm_rate) * (1.0 - prevalence)
    return hits / alarms if alarms > 0 else 0.0


def _split_scores(labels: np.ndarray, scores: np.ndarray, split: str) -> tuple[np.ndarray, ...]:
    labels = np.asarray(labels).astype(np.int64).ravel()
    scores = check_scores(scores, split)
    if labels.shape != scores.shape:
        raise MetricsInputError(f"{split} split: {labels.size} labels but {scores.size} scores")
    return labels, scores


def _normals(labels, scores, normal_scores, split: str) -> np.ndarray:
    """Tune normals plus the extra normal scores (validation), the false-alarm population."""
    extra = np.empty(0) if normal_scores is None else check_scores(normal_scores, "val")
    normals = np.r_[scores[labels == 0], extra]
    if normals.size == 0:
        raise MetricsInputError(
            f"{split} split and the validation split have no normal items: cannot measure a "
            "false-alarm rate to calibrate on"
        )
    return normals


def _between(low: float, scores: np.ndarray) -> float:
    """A threshold just above ``low``: midway to the next higher observed score."""
    above = scores[scores > low]
    return 0.5 * (low + float(above.min())) if above.size else float(np.nextafter(low, np.inf))


def _share_at_or_above(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """For each cut, the share of ``values`` that are >= it (sorted search, O((n + m) log n))."""
    ordered = np.sort(values)
    return (ordered.size - np.searchsorted(ordered, cuts, side="left")) / ordered.size


def _rates(labels, scores, normals, threshold: float) -> tuple[float | None, float | None, float]:
    """(tune precision, tune recall, false-alarm rate on ``normals``) at ``threshold``."""
    flagged = scores >= threshold
    tp = int(np.sum(flagged & (labels == 1)))
    fp = int(np.sum(flagged & (labels == 0)))
    n_anomalous = int(labels.sum())
    precision = tp / (tp + fp) if n_anomalous and tp + fp else (0.0 if n_anomalous else None)
    recall = tp / n_anomalous if n_anomalous else None
    return precision, recall, float(np.mean(normals >= threshold))


def calibrate_false_alarm_rate(
    labels: np.ndarray,
    scores: np.ndarray,
    max_false_alarm_rate: float,
    normal_scores: np.ndarray | None = None,
    split: str = "tune",
    target_precision: float = 0.0,
    min_recall: float | None = None,
) -> RateCalibration:
    """A threshold that flags at most ``max_false_alarm_rate`` of the normal items.

    Normal items: the ``split``'s normals plus ``normal_scores`` (normal validation scores). With
    ``n`` of them at most ``floor(max * n)`` may score at or above the threshold; the lowest such
    threshold sits midway between the highest normal score that must not be flagged and the next
    higher score. Labelled anomalies are not needed (the gate measures recall on test); when
    present, tune precision and recall are reported, and with ``min_recall`` (the gate's recall
    bar) the threshold is centred between that lowest threshold and the highest one that still
    flags ``min_recall`` of the tune anomalies, when the second is higher: both bars then keep a
    margin on unseen data. ``target_precision`` is only recorded (the gate's precision bar).
    """
    if not 0.0 <= max_false_alarm_rate <= 1.0:
        raise ValueError(f"max_false_alarm_rate must be in [0, 1], got {max_false_alarm_rate!r}")
    labels, scores = _split_scores(labels, scores, split)
    normals = _normals(labels, scores, normal_scores, split)
    n = normals.size
    allowed = int(math.floor(max_false_alarm_rate * n + 1e-9))
    ordered = np.sort(normals)[::-1]
    if allowed >= n:
        threshold = float(min(scores.min(initial=np.inf), normals.min()))
    else:
        threshold = _between(float(ordered[allowed]), np.r_[scores, normals])
    note = (
        f"lowest threshold flagging at most {max_false_alarm_rate:g} of {n} normal items "
        f"({split} + val)"
    )
    highest = _highest_meeting_recall(scores[labels == 1], min_recall)
    if highest is not None and highest > threshold:
        threshold = 0.5 * (threshold + highest)
        note = (
            f"centred between the lowest threshold flagging at most {max_false_alarm_rate:g} of "
            f"{n} normal items ({split} + val) and the highest one with {split} recall >= "
            f"{min_recall:g}"
        )
    precision, recall, far = _rates(labels, scores, normals, threshold)
    note += f": false-alarm rate {far:.4f}"
    if n * max_false_alarm_rate < 1:
        note += (
            f"; with {n} normal items the smallest measurable rate is 1/{n}, so the threshold "
            "sits above every normal score"
        )
    return RateCalibration(
        threshold=threshold,
        method="false_alarm_rate",
        target_precision=target_precision,
        precision=precision,
        recall=recall,
        split=split,
        n_normal=int((labels == 0).sum()),
        n_anomalous=int(labels.sum()),
        gate_can_pass=True,
        note=note,
        false_alarm_rate=far,
        max_false_alarm_rate=max_false_alarm_rate,
        n_normal_used=int(n),
    )


def _highest_meeting_recall(anomalies: np.ndarray, min_recall: float | None) -> float | None:
    """The highest threshold (``score >= threshold`` flags) that flags at least ``min_recall``
    of ``anomalies``: the ``ceil(min_recall * n)``-th highest anomaly score; None without
    anomalies or a recall bar."""
    if min_recall is None or anomalies.size == 0:
        return None
    need = max(1, math.ceil(min_recall * anomalies.size - 1e-9))
    return float(np.sort(anomalies)[::-1][need - 1])


def centred_on_recall(
    calibration: Calibration, labels: np.ndarray, scores: np.ndarray, min_recall: float | None
) -> Calibration:
    """A ``precision`` calibration moved to the middle of the range where the split meets both
    bars: between its threshold (the lowest with enough precision) and the highest one that still
    flags ``min_recall`` of the split's anomalies, when that is higher and the midpoint keeps the
    precision. Set exactly at the precision bar, a threshold lands below it on unseen data about
    half the time (as ``calibrate_false_alarm_rate`` centres for the same reason)."""
    if calibration.method != "precision" or not calibration.gate_can_pass:
        return calibration
    labels = np.asarray(labels).astype(np.int64).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    highest = _highest_meeting_recall(scores[labels == 1], min_recall)
    if highest is None or highest <= calibration.threshold:
        return calibration
    threshold = 0.5 * (calibration.threshold + highest)
    precision, recall, _ = _rates(labels, scores, scores, threshold)  # (its rate unused)
    if precision is None or precision < calibration.target_precision:
        return calibration
    return dataclasses.replace(
        calibration, threshold=threshold, precision=precision, recall=recall,
        note=(f"centred between the lowest threshold with precision >= "
              f"{calibration.target_precision:g} on {calibration.split} and the highest one with "
              f"{calibration.split} recall >= {min_recall:g}"),
    )


def calibrate_precision_at_prevalence(
    labels: np.ndarray,
    scores: np.ndarray,
    precision: float,
    prevalence: float,
    normal_scores: np.ndarray | None = None,
    split: str = "tune",
) -> Calibration:
    """The lowest threshold whose precision at defect rate ``prevalence`` reaches ``precision``.

    Recall comes from the ``split``'s labelled anomalies, the false-alarm rate from its normals
    plus ``normal_scores``. Without labelled anomalies this falls back like
    ``metrics.calibrate_threshold`` (normal-score quantile, the gate cannot pass). When no
    threshold reaches the target, the one with the highest precision at the prevalence is used
    and ``gate_can_pass`` is False.
    """
    labels, scores = _split_scores(labels, scores, split)
    if int(labels.sum()) == 0:
        return calibrate_threshold(labels, scores, precision, normal_scores, split)
    normals = _normals(labels, scores, normal_scores, split)
    anomalies = scores[labels == 1]
    cuts = np.unique(np.r_[scores, normals])  # ascending
    recall = _share_at_or_above(anomalies, cuts)
    far = _share_at_or_above(normals, cuts)
    hits = recall * prevalence
    alarms = hits + far * (1.0 - prevalence)
    expected = np.divide(hits, alarms, out=np.zeros_like(hits), where=alarms > 0)
    ok = np.flatnonzero((expected >= precision) & (recall > 0))
    reached = ok.size > 0
    i = int(ok[0]) if reached else int(np.argmax(expected))
    cut = float(cuts[i])
    below = cuts[cuts < cut]
    threshold = 0.5 * (cut + float(below.max())) if below.size else cut
    _, tune_recall, tune_far = _rates(labels, scores, normals, threshold)
    at_p = precision_at_prevalence(tune_recall, tune_far, prevalence)
    note = (
        f"lowest threshold with precision >= {precision:g} at a {prevalence:g} defect rate "
        f"({split} recall and the false-alarm rate on {normals.size} normal items)"
        if reached
        else f"no threshold reaches precision {precision:g} at a {prevalence:g} defect rate on "
        f"{split}; using the most precise one ({expected[i]:.3f})"
    )
    return RateCalibration(
        threshold=threshold,
        method="prevalence",
        target_precision=precision,
        precision=at_p,
        recall=tune_recall,
        split=split,
        n_normal=int((labels == 0).sum()),
        n_anomalous=int(labels.sum()),
        gate_can_pass=reached,
        note=note,
        false_alarm_rate=tune_far,
        prevalence=prevalence,
        n_normal_used=int(normals.size),
    )


def calibrate(
    method: str,
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    precision: float,
    max_false_alarm_rate: float | None = None,
    prevalence: float | None = None,
    normal_scores: np.ndarray | None = None,
    split: str = "tune",
    min_recall: float | None = None,
) -> Calibration:
    """Calibrate with ``method`` (one of ``METHODS``); the settings it needs must be given
    (``gate.max_false_alarm_rate`` for ``false_alarm_rate``, ``gate.prevalence`` for
    ``prevalence``), else a ValueError names the missing setting. ``min_recall`` (the gate's
    recall bar) centres the ``precision`` and ``false_alarm_rate`` thresholds (see there)."""
    if method == "precision":
        calibration = calibrate_threshold(labels, scores, precision, normal_scores, split)
        return centred_on_recall(calibration, labels, scores, min_recall)
    if method == "false_alarm_rate":
        if max_false_alarm_rate is None:
            raise ValueError(
                "threshold method 'false_alarm_rate' needs gate.max_false_alarm_rate (it is null)"
            )
        return calibrate_false_alarm_rate(
            labels, scores, max_false_alarm_rate, normal_scores, split,
            target_precision=precision, min_recall=min_recall,
        )
    if method == "prevalence":
        if prevalence is None:
            raise ValueError("threshold method 'prevalence' needs gate.prevalence (it is null)")
        return calibrate_precision_at_prevalence(
            labels, scores, precision, prevalence, normal_scores, split
        )
    raise ValueError(f"unknown threshold method {method!r}; expected one of {', '.join(METHODS)}")
