"""Metric functions against scikit-learn and brute force on known arrays."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from vigil.evaluation import metrics as M
from vigil.evaluation import pixel_metrics as PM
from vigil.evaluation import video_metrics as VM


@pytest.fixture()
def scored():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(40, int), np.ones(20, int)]
    scores = np.r_[rng.normal(0.0, 1.0, 40), rng.normal(1.8, 1.0, 20)]
    return labels, scores


def brute_precision_recall(labels, scores, threshold):
    flagged = scores >= threshold
    tp = np.sum(flagged & (labels == 1))
    fp = np.sum(flagged & (labels == 0))
    return (tp / (tp + fp) if tp + fp else 0.0), tp / labels.sum()


def test_image_metrics_match_sklearn(scored):
    labels, scores = scored
    out = M.image_metrics(labels, scores, precision=0.9, threshold=1.0)
    assert out["auroc"] == pytest.approx(skm.roc_auc_score(labels, scores))
    assert out["average_precision"] == pytest.approx(skm.average_precision_score(labels, scores))
    tn, fp, fn, tp = skm.confusion_matrix(labels, scores >= 1.0).ravel()
    assert (out["tp"], out["fp"], out["fn"], out["tn"]) == (tp, fp, fn, tn)
    assert out["precision_at_threshold"] == pytest.approx(tp / (tp + fp))
    assert out["recall_at_threshold"] == pytest.approx(tp / (tp + fn))
    assert out["false_alarm_rate"] == pytest.approx(fp / (fp + tn))
    assert out["escape_rate"] == pytest.approx(fn / (tp + fn))
    assert out["n"] == 60 and out["n_anomalous"] == 20


@pytest.mark.parametrize("target", [0.6, 0.8, 0.9, 1.0])
def test_recall_at_precision_is_the_best_recall_meeting_the_precision(scored, target):
    labels, scores = scored
    recall, threshold = M.recall_at_precision(labels, scores, target)
    best = 0.0
    for t in np.unique(scores):
        p, r = brute_precision_recall(labels, scores, t)
        if p >= target:
            best = max(best, r)
    assert recall == pytest.approx(best)
    if best > 0:
        precision_there, recall_there = brute_precision_recall(labels, scores, threshold)
        assert precision_there >= target and recall_there == pytest.approx(best)
    else:
        assert threshold is None


@pytest.mark.parametrize("target", [0.7, 0.9])
def test_calibrated_threshold_is_the_lowest_meeting_the_precision(scored, target):
    labels, scores = scored
    cal = M.calibrate_threshold(labels, scores, target)
    qualifying = [t for t in np.unique(scores)
                  if brute_precision_recall(labels, scores, t)[0] >= target]
    lowest = min(qualifying)
    precision, recall = brute_precision_recall(labels, scores, cal.threshold)
    assert precision >= target and cal.gate_can_pass and cal.method == "precision"
    assert (precision, recall) == pytest.approx(brute_precision_recall(labels, scores, lowest))
    assert cal.precision == pytest.approx(precision) and cal.recall == pytest.approx(recall)
    below = scores[scores < lowest].max()
    assert below < cal.threshold <= lowest  # midway: same tune decisions, margin both sides
    assert cal.n_anomalous == 20 and cal.n_normal == 40


def test_calibration_that_cannot_reach_the_precision_says_so():
    labels = np.array([0, 1, 0, 1])
    scores = np.array([4.0, 3.0, 2.0, 1.0])  # the top score is normal
    cal = M.calibrate_threshold(labels, scores, 0.9)
    assert not cal.gate_can_pass and "no threshold reaches" in cal.note


def test_calibration_falls_back_to_a_normal_quantile_without_anomalies():
    normal_val = np.linspace(0.0, 1.0, 101)
    cal = M.calibrate_threshold(np.zeros(5), np.full(5, 0.3), 0.9, normal_scores=normal_val)
    assert cal.method == "normal_quantile" and not cal.gate_can_pass
    assert cal.threshold == pytest.approx(np.quantile(normal_val, M.FALLBACK_QUANTILE))
    assert "cannot pass" in cal.note and cal.precision is None
    empty = M.calibrate_threshold(np.zeros(0), np.zeros(0), 0.9, normal_scores=normal_val)
    assert empty.method == "normal_quantile"


def test_bad_inputs_raise_errors_naming_the_split(scored):
    labels, scores = scored
    nan_scores = scores.copy()
    nan_scores[3] = np.nan
    with pytest.raises(M.MetricsInputError, match="test split: 1 of 60 scores are NaN"):
        M.image_metrics(labels, nan_scores, 0.9)
    inf_scores = scores.copy()
    inf_scores[0] = np.inf
    with pytest.raises(M.MetricsInputError, match="tune split"):
        M.calibrate_threshold(labels, inf_scores, 0.9)
    with pytest.raises(M.MetricsInputError, match="test split has only normal items"):
        M.image_metrics(np.zeros(10), np.arange(10.0), 0.9)
    with pytest.raises(M.MetricsInputError, match="test split has only anomalous items"):
        M.image_metrics(np.ones(10), np.arange(10.0), 0.9)
    with pytest.raises(M.MetricsInputError, match="labels but"):
        M.image_metrics(labels[:5], scores, 0.9)


def test_curves_match_sklearn(scored):
    labels, scores = scored
    pr = M.pr_curve(labels, scores)
    p, r, t = skm.precision_recall_curve(labels, scores)
    np.testing.assert_allclose(pr["precision"], p)
    np.testing.assert_allclose(pr["recall"], r)
    np.testing.assert_allclose(pr["thresholds"], t)
    roc = M.roc_curve(labels, scores)
    fpr, tpr, _ = skm.roc_curve(labels, scores)
    np.testing.assert_allclose(roc["fpr"], fpr)
    np.testing.assert_allclose(roc["tpr"], tpr)


def masks_and_maps(seed=0):
    rng = np.random.default_rng(seed)
    masks = np.zeros((4, 24, 24), np.uint8)
    masks[1, 2:8, 2:8] = 1  # two regions of different sizes in one image
    masks[1, 15:17, 15:22] = 1
    masks[2, 10:20, 5:9] = 1
    maps = rng.random((4, 24, 24)).astype(np.float32) * 0.6
    maps[masks == 1] += rng.random(int(masks.sum())).astype(np.float32) * 0.8
    return masks, maps


def test_pixel_auroc_matches_sklearn():
    masks, maps = masks_and_maps()
    assert PM.pixel_auroc(masks, maps) == pytest.approx(
        skm.roc_auc_score(masks.ravel(), maps.ravel())
    )
    with pytest.raises(M.MetricsInputError, match="both"):
        PM.pixel_auroc(np.zeros_like(masks), maps)


def brute_aupro(masks, maps, max_fpr=0.3, steps=4000):
    """Threshold loop as in the MVTec AD evaluation code."""
    import cv2

    regions = []
    for i, m in enumerate(masks):
        count, labels = cv2.connectedComponents(m, connectivity=8)
        regions += [(i, labels == k) for k in range(1, count)]
    normal = masks == 0
    fprs, pros = [], []
    for t in np.linspace(maps.max() + 1e-6, maps.min(), steps):
        flagged = maps >= t
        fprs.append(flagged[normal].mean())
        pros.append(np.mean([flagged[i][r].mean() for i, r in regions]))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs <= max_fpr
    x = np.r_[fprs[keep], max_fpr]
    y = np.r_[pros[keep], np.interp(max_fpr, fprs, pros)]
    return np.trapezoid(y, x) / max_fpr


def test_aupro_matches_a_threshold_loop():
    masks, maps = masks_and_maps()
    assert PM.aupro(masks, maps) == pytest.approx(brute_aupro(masks, maps), abs=2e-3)


def test_aupro_is_one_for_a_perfect_map_and_needs_regions():
    masks, _ = masks_and_maps()
    assert PM.aupro(masks, masks.astype(np.float32)) == pytest.approx(1.0)
    with pytest.raises(M.MetricsInputError, match="AUPRO"):
        PM.aupro(np.zeros_like(masks), masks.astype(np.float32))


def test_pro_curve_averages_regions_not_pixels():
    masks = np.zeros((1, 10, 10), np.uint8)
    masks[0, 0, 0] = 1  # a 1-pixel region
    masks[0, 5:9, 5:9] = 1  # a 16-pixel region
    maps = np.zeros((1, 10, 10), np.float32)
    maps[0, 0, 0] = 1.0  # only the small region is found
    fpr, pro = PM.pro_curve(masks, maps)
    assert pro[1] == pytest.approx(0.5) and fpr[1] == 0.0  # half the regions, not 1/17


def test_runs_and_event_metrics():
    assert VM.runs(np.array([0, 1, 1, 0, 1])) == [(1, 3), (4, 5)]
    assert VM.runs(np.zeros(3)) == []
    labels = np.array([0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0])
    scores = np.array([np.nan, .1, .2, .9, .8, .1, .9, .1, .1, .2, .1, .1])
    out = VM.event_metrics([(labels, scores)], threshold=0.5)
    # event 1 (frames 2-4) detected at frame 3 (delay 1); event 2 (8-9) missed;
    # predicted runs: frames 3-4 (true) and frame 6 (false).
    assert out["event_recall"] == 0.5 and out["event_precision"] == 0.5
    assert out["n_events"] == 2 and out["n_false_events"] == 1
    assert out["mean_detection_delay_frames"] == 1.0
    two = VM.event_metrics([(labels, scores), (np.array([1, 1]), np.array([0.9, 0.1]))], 0.5)
    assert two["n_events"] == 3 and two["n_detected_events"] == 2


def test_per_defect_table():
    defects = ["good", "good", "crack", "crack", "hole"]
    scores = np.array([0.1, 0.6, 0.7, 0.2, 0.9])
    rows = {r["defect"]: r for r in M.per_defect_table(defects, scores, threshold=0.5)}
    assert list(rows) == ["good", "crack", "hole"]
    assert rows["good"]["flagged_fraction"] == 0.5 and rows["good"]["auroc_vs_good"] is None
    assert rows["crack"]["flagged_fraction"] == 0.5
    assert rows["crack"]["auroc_vs_good"] == pytest.approx(
        skm.roc_auc_score([0, 0, 1, 1], [0.1, 0.6, 0.7, 0.2]))
    assert rows["hole"]["n"] == 1 and rows["hole"]["mean_score"] == 0.9


def test_pixel_threshold_is_a_quantile_of_normal_pixels():
    maps = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    assert PM.pixel_threshold(maps, 0.99) == pytest.approx(np.quantile(np.arange(1000), 0.99))
    with pytest.raises(M.MetricsInputError, match="val split"):
        PM.pixel_threshold(np.full((1, 2, 2), np.nan), 0.9)
