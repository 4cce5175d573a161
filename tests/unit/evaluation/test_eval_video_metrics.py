"""clip_aurocs: the per-clip normalized pooled AUROC and the mean per-clip AUROC reported beside the
raw pooled frame AUROC."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from vigil.evaluation.video_metrics import clip_aurocs


def test_per_clip_normalization_removes_a_clip_level_offset_that_raw_pooling_suffers():
    # each clip ranks its own frames perfectly, but clip b runs at a higher level overall:
    # its normal frames outscore clip a's anomalies when pooled raw
    a = (np.array([0, 0, 0, 1, 1]), np.array([0.1, 0.2, 0.1, 0.5, 0.6]))
    b = (np.array([0, 0, 1, 1, 0]), np.array([1.0, 1.1, 1.5, 1.6, 1.0]))
    raw = roc_auc_score(np.r_[a[0], b[0]], np.r_[a[1], b[1]])
    out = clip_aurocs([a, b])
    assert raw < 0.9
    assert out["frame_auroc_clip_normalized"] == pytest.approx(1.0)
    assert out["frame_auroc_mean_per_clip"] == pytest.approx(1.0)
    assert out["n_clips_with_both_classes"] == 2


def test_mean_per_clip_skips_one_class_clips_but_normalized_pools_them():
    mixed = (np.array([0, 1, 0, 1]), np.array([0.2, 0.1, 0.4, 0.3]))  # AUROC 0.25 on its own
    normal_only = (np.array([0, 0, 0]), np.array([5.0, 6.0, 7.0]))
    out = clip_aurocs([mixed, normal_only])
    assert out["frame_auroc_mean_per_clip"] == pytest.approx(0.25)
    assert out["n_clips_with_both_classes"] == 1
    # pooled after min-max per clip: mixed -> [1/3, 0, 1, 2/3], normal_only -> [0, .5, 1]
    expected = roc_auc_score([0, 1, 0, 1, 0, 0, 0], [1 / 3, 0, 1, 2 / 3, 0, 0.5, 1])
    assert out["frame_auroc_clip_normalized"] == pytest.approx(expected)


def test_constant_clip_normalizes_to_zero_and_empty_or_one_class_input_gives_nothing():
    flat = (np.array([1, 1]), np.array([3.0, 3.0]))  # span 0: all zeros, no division by zero
    low = (np.array([0, 0, 1]), np.array([0.5, 0.7, 0.9]))
    out = clip_aurocs([flat, low])
    expected = roc_auc_score([1, 1, 0, 0, 1], [0, 0, 0, 0.5, 1])
    assert out["frame_auroc_clip_normalized"] == pytest.approx(expected)
    assert clip_aurocs([]) == {}
    assert clip_aurocs([(np.zeros(0), np.zeros(0))]) == {}
    assert clip_aurocs([(np.array([0, 0]), np.array([0.1, 0.2]))]) == {}
