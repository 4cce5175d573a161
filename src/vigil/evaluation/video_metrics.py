"""Video metrics: event-level recall and precision, and the per-clip frame AUROCs reported
beside the raw pooled one."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from vigil.evaluation.metrics import MetricsInputError


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True in a 1-D boolean array as half-open ``(start, stop)`` pairs."""
    flags = np.asarray(flags, dtype=bool).astype(np.int8)
    edges = np.diff(np.r_[0, flags, 0])
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def alert_mask(flagged: np.ndarray, alert_frames: int) -> np.ndarray:
    """(T,) bool: the frames an alert covers, as ``vigil watch`` raises them: a run of flagged
    frames alerts from its ``alert_frames``-th frame to its end (shorter runs never alert)."""
    alerting = np.zeros_like(flagged, dtype=bool)
    for start, stop in runs(flagged):
        if stop - start >= alert_frames:
            alerting[start + alert_frames - 1 : stop] = True
    return alerting


def event_metrics(
    clips: list[tuple[np.ndarray, np.ndarray]], threshold: float, alert_frames: int = 1
) -> dict[str, float]:
    """Event-level recall and precision over clips of (labels (T,), smoothed scores (T,)).

    An event is a maximal run of frames labelled anomalous. An alert is what ``vigil watch``
    raises: ``alert_frames`` frames in a row with ``score >= threshold`` start one, and it lasts
    while the score stays there (``alert_mask``). An event is detected when an alert covers any
    of its frames; an alert is false when it covers no labelled frame. NaN scores (a clip's
    first frame, which has no prediction) never count as flagged. Also reports the mean
    detection delay in frames (first alerting frame minus event start, over detected events).
    """
    n_events = detected = n_pred = false_pred = 0
    delays: list[int] = []
    for labels, scores in clips:
        labels = np.asarray(labels).astype(bool)
        flagged = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf) >= threshold
        if labels.shape != flagged.shape:
            raise MetricsInputError(f"a clip has {labels.size} labels but {flagged.size} scores")
        alerting = alert_mask(flagged, alert_frames)
        for start, stop in runs(labels):
            n_events += 1
            hits = np.flatnonzero(alerting[start:stop])
            if hits.size:
                detected += 1
                delays.append(int(hits[0]))
        for start, stop in runs(alerting):
            n_pred += 1
            if not labels[start:stop].any():
                false_pred += 1
    return {
        "event_recall": detected / n_events if n_events else 0.0,
        "event_precision": (n_pred - false_pred) / n_pred if n_pred else 0.0,
        "n_events": n_events,
        "n_detected_events": detected,
        "n_predicted_events": n_pred,
        "n_false_events": false_pred,
        "mean_detection_delay_frames": float(np.mean(delays)) if delays else 0.0,
    }


def clip_aurocs(clips: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Frame AUROCs that most video papers report beside the raw pooled one.

    ``clips``: (labels (T,), scores (T,)) per clip, unscored frames already removed.
    ``frame_auroc_clip_normalized``: each clip's scores min-max normalized over the whole clip,
    then pooled (it uses each test clip's full range, which a live line never has);
    ``frame_auroc_mean_per_clip``: the mean AUROC of the clips that hold both classes.
    """
    normalized, labels, per_clip = [], [], []
    for clip_labels, clip_scores in clips:
        scores = np.asarray(clip_scores, dtype=np.float64)
        if scores.size == 0:
            continue
        span = scores.max() - scores.min()
        normalized.append((scores - scores.min()) / span if span > 0 else np.zeros_like(scores))
        labels.append(np.asarray(clip_labels))
        if 0 < np.asarray(clip_labels).sum() < len(clip_labels):
            per_clip.append(float(skm.roc_auc_score(clip_labels, scores)))
    out: dict[str, float] = {}
    pooled = np.concatenate(labels) if labels else np.zeros(0)
    if 0 < pooled.sum() < len(pooled):
        out["frame_auroc_clip_normalized"] = float(
            skm.roc_auc_score(pooled, np.concatenate(normalized))
        )
    if per_clip:
        out["frame_auroc_mean_per_clip"] = float(np.mean(per_clip))
        out["n_clips_with_both_classes"] = len(per_clip)
    return out
