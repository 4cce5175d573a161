"""``evaluate.smoothing_window: auto``: the window is chosen on tune by frame AUROC, each clip is
re-smoothed on its own, and a tune split without both classes falls back."""

from __future__ import annotations

import numpy as np
import pytest

from vigil.config import SMOOTHING_FALLBACK, EvaluateConfig
from vigil.detector.postprocess import trailing_mean
from vigil.evaluation.smoothing import choose_window, resmoothed
from vigil.evaluation.splits import SplitScores


def split_of(clips: list[tuple[np.ndarray, np.ndarray]]) -> SplitScores:
    """(raw scores (T,), labels (T,)) per clip -> a tune SplitScores (scores == raw)."""
    raw = np.concatenate([r for r, _ in clips])
    labels = np.concatenate([lab for _, lab in clips])
    bounds, start = [], 0
    for i, (r, _) in enumerate(clips):
        bounds.append((f"clip{i}", start, start + len(r)))
        start += len(r)
    n = len(raw)
    return SplitScores("tune", np.arange(n), labels, ["x"] * n, raw.copy(), raw,
                       np.zeros((n, 2, 2), np.float32), np.isfinite(raw), bounds)


def test_trailing_mean_skips_unscored_frames_and_starts_at_the_first_score():
    raw = np.array([np.nan, 1.0, 3.0, np.nan, 5.0])
    np.testing.assert_allclose(trailing_mean(raw, 2), [np.nan, 1.0, 2.0, 2.0, 4.0])
    np.testing.assert_allclose(trailing_mean(raw, 1), [np.nan, 1.0, 3.0, 3.0, 5.0])


def test_short_events_choose_no_smoothing_and_long_noisy_events_a_longer_window():
    rng = np.random.default_rng(0)
    labels = np.zeros(200, int)
    for start in range(20, 200, 40):  # 2-frame events: averaging drags the next frame up
        labels[start : start + 2] = 1
    short = np.where(labels == 1, 3.0, 0.0) + rng.normal(0, 0.2, 200)
    assert choose_window(split_of([(short, labels)]))[0] == 1

    labels = np.zeros(400, int)
    labels[100:300] = 1  # a long anomaly under heavy frame noise: averaging steadies it
    noisy = labels * 1.0 + rng.normal(0, 1.0, 400)
    window, aucs = choose_window(split_of([(noisy, labels)]))
    assert window > 1 and aucs[window] == max(aucs.values()) and aucs[window] > aucs[1]


def test_each_clip_is_smoothed_on_its_own():
    tune = split_of([(np.array([np.nan, 9.0, 9.0]), np.zeros(3, int)),
                     (np.array([np.nan, 1.0, 1.0]), np.zeros(3, int))])
    scores = resmoothed(tune, 8).scores
    np.testing.assert_allclose(scores, [np.nan, 9.0, 9.0, np.nan, 1.0, 1.0])


def test_a_tune_split_without_anomalies_cannot_choose():
    tune = split_of([(np.arange(10.0), np.zeros(10, int))])
    assert choose_window(tune) == (SMOOTHING_FALLBACK, {})


def test_the_window_is_auto_or_a_positive_frame_count():
    assert EvaluateConfig().window == SMOOTHING_FALLBACK
    assert EvaluateConfig(smoothing_window=4).window == 4
    with pytest.raises(ValueError, match="smoothing_window"):
        EvaluateConfig(smoothing_window=0)
