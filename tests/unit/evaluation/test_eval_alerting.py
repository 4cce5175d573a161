"""``evaluate.alert_frames``: events are counted as `vigil watch` alerts (a run of frames above
the threshold), the run length is chosen on tune by event F1, and watch follows the model."""

from __future__ import annotations

import numpy as np
import pytest

from vigil.config import ALERT_FALLBACK, EvaluateConfig
from vigil.evaluation.alerting import choose_alert_frames
from vigil.evaluation.video_metrics import alert_mask, event_metrics
from vigil.serving import WatchSettings
from vigil.serving.watch import AlertTracker
from tests.unit.evaluation.test_eval_smoothing import split_of


def test_alert_mask_starts_at_the_nth_frame_of_a_run_and_drops_shorter_runs():
    flagged = np.array([1, 0, 1, 1, 1, 1, 0, 1, 1], bool)
    np.testing.assert_array_equal(alert_mask(flagged, 3), [0, 0, 0, 0, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(alert_mask(flagged, 1), flagged)


def test_alert_mask_is_what_the_watch_tracker_raises():
    rng = np.random.default_rng(1)
    scores = rng.random(300)
    for frames in (1, 2, 3, 5):
        tracker = AlertTracker(frames, 0.4)
        active = []
        for i, score in enumerate(scores):
            tracker.update(i, i / 15, float(score))
            active.append(tracker.active)
        np.testing.assert_array_equal(alert_mask(scores >= 0.4, frames), active)


def test_a_lone_flagged_frame_is_a_false_event_for_one_frame_alerts_only():
    labels = np.zeros(40, int)
    labels[10:18] = 1
    scores = np.zeros(40)
    scores[11:18] = 1.0  # the event, flagged from its second frame
    scores[30] = 1.0  # one noisy normal frame
    one = event_metrics([(labels, scores)], 0.5, alert_frames=1)
    three = event_metrics([(labels, scores)], 0.5, alert_frames=3)
    assert (one["n_false_events"], one["event_recall"]) == (1, 1.0)
    assert (three["n_false_events"], three["event_recall"], three["event_precision"]) == (0, 1.0, 1.0)
    assert three["mean_detection_delay_frames"] == one["mean_detection_delay_frames"] + 2
    assert event_metrics([(labels, scores)], 0.5, alert_frames=8)["event_recall"] == 0.0


def test_tune_with_lone_noisy_frames_chooses_a_longer_run_and_clean_tune_the_shortest():
    labels = np.zeros(200, int)
    scores = np.zeros(200)
    for start in range(20, 200, 40):
        labels[start : start + 8] = 1
        scores[start : start + 8] = 1.0
    clean = split_of([(scores.copy(), labels)])
    assert choose_alert_frames(clean, 0.5)[0] == 1
    scores[[5, 50, 95, 140]] = 1.0  # lone normal frames above the threshold
    frames, f1s = choose_alert_frames(split_of([(scores, labels)]), 0.5)
    assert frames == 2 and f1s[2] == 1.0 and f1s[1] < 1.0 and f1s[5] == 1.0


def test_without_tune_anomalies_the_fallback_is_used():
    tune = split_of([(np.arange(10.0), np.zeros(10, int))])
    assert choose_alert_frames(tune, 5.0) == (ALERT_FALLBACK, {})


def test_alert_frames_is_auto_or_positive_and_watch_follows_the_model_unless_set():
    assert EvaluateConfig().alert_run == ALERT_FALLBACK
    assert EvaluateConfig(alert_frames=2).alert_run == 2
    with pytest.raises(ValueError, match="alert_frames"):
        EvaluateConfig(alert_frames=0)

    class Model:
        postprocess = EvaluateConfig(alert_frames=2)

    assert WatchSettings().alert_run(Model()) == 2
    assert WatchSettings(alert_frames=7).alert_run(Model()) == 7
