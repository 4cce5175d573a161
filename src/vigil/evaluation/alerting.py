"""``evaluate.alert_frames: auto``: how many frames in a row above the threshold make an alert.

An operator sees alerts, not frames: `vigil watch` raises one when the smoothed score stays at or
above the threshold for ``alert_frames`` frames, and the event metrics count the same alerts
(``video_metrics.alert_mask``). One frame alerts fastest and also turns every lone noisy frame
into a false alarm; a longer run drops those and misses events shorter than it. Which matters
more is a property of the line's data, so the run length is the one of ``ALERT_FRAMES`` with the
best event F1 (alerts against labelled events) on the labelled tune split at the calibrated
threshold (ties: the shorter, which alerts sooner), never chosen on test; without labelled
anomalies in tune it is ``ALERT_FALLBACK``.
"""

from __future__ import annotations

import logging

from vigil.config import ALERT_FALLBACK, ALERT_FRAMES
from vigil.evaluation.splits import SplitScores
from vigil.evaluation.video_metrics import event_metrics

log = logging.getLogger(__name__)


def event_f1(tune: SplitScores, threshold: float, alert_frames: int) -> float:
    """Harmonic mean of event recall and precision of the alerts on ``tune``'s clips."""
    clips = [(tune.labels[a:b], tune.scores[a:b]) for _, a, b in tune.clips]
    found = event_metrics(clips, threshold, alert_frames)
    recall, precision = found["event_recall"], found["event_precision"]
    return 2 * recall * precision / (recall + precision) if recall + precision else 0.0


def choose_alert_frames(tune: SplitScores, threshold: float) -> tuple[int, dict[int, float]]:
    """(alert_frames, {candidate: tune event F1}); the F1s are empty when tune cannot decide."""
    if not tune.labels[tune.scored].any():
        return ALERT_FALLBACK, {}
    f1s = {frames: event_f1(tune, threshold, frames) for frames in ALERT_FRAMES}
    best = max(f1s.values())
    frames = min(k for k, f1 in f1s.items() if f1 >= best - 1e-9)
    log.info("alerts after %d frame(s) above the threshold, chosen on tune (event F1 %s)", frames,
             ", ".join(f"{k}: {f1:.3f}" for k, f1 in f1s.items()))
    return frames, f1s
