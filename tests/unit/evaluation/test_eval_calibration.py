"""Threshold calibration by false-alarm rate and by precision at a stated defect rate."""

from __future__ import annotations

import numpy as np
import pytest

from vigil.evaluation.calibration import (
    RateCalibration,
    calibrate,
    calibrate_false_alarm_rate,
    calibrate_precision_at_prevalence,
    precision_at_prevalence,
)
from vigil.evaluation.metrics import MetricsInputError

# tune split: 4 normal, 6 anomalous; val: 6 more normal items
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
SCORES = np.array([0.10, 0.20, 0.30, 0.65, 0.50, 0.60, 0.70, 0.80, 0.90, 1.00])
VAL = np.array([0.05, 0.15, 0.25, 0.35, 0.40, 0.45])


def test_precision_at_prevalence_formula():
    assert precision_at_prevalence(1.0, 0.0, 0.01) == 1.0
    assert precision_at_prevalence(0.9, 0.05, 0.01) == pytest.approx(0.009 / (0.009 + 0.0495))
    assert precision_at_prevalence(0.0, 0.0, 0.1) == 0.0  # nothing flagged
    assert precision_at_prevalence(None, 0.1, 0.1) is None
    with pytest.raises(ValueError, match="prevalence"):
        precision_at_prevalence(1.0, 0.0, 1.0)


def test_false_alarm_rate_threshold_flags_at_most_the_allowed_share_of_normals():
    # 10 normals (4 tune + 6 val); 0.1 allows one: 0.65 may be flagged, 0.45 may not
    cal = calibrate_false_alarm_rate(LABELS, SCORES, 0.1, normal_scores=VAL)
    assert isinstance(cal, RateCalibration) and cal.method == "false_alarm_rate"
    assert 0.45 < cal.threshold < 0.50  # midway to the next observed score above 0.45
    assert cal.false_alarm_rate == pytest.approx(0.1) and cal.n_normal_used == 10
    assert cal.recall == 1.0 and cal.gate_can_pass
    normals = np.r_[SCORES[LABELS == 0], VAL]
    assert np.mean(normals >= cal.threshold) <= 0.1
    # no false alarm allowed: above every normal score
    strict = calibrate_false_alarm_rate(LABELS, SCORES, 0.0, normal_scores=VAL)
    assert 0.65 < strict.threshold < 0.70 and strict.false_alarm_rate == 0.0
    assert strict.recall == pytest.approx(4 / 6)
    assert "smallest measurable rate is 1/10" in strict.note
    assert strict.to_dict()["max_false_alarm_rate"] == 0.0


def test_with_a_recall_bar_the_threshold_is_centred_where_tune_meets_both_bars():
    # lowest threshold at 0.1 false alarms: ~0.475; the highest flagging >= 4 of 6 anomalies
    # (recall 0.66): 0.70. Centred: ~0.59, where tune still meets both bars.
    cal = calibrate_false_alarm_rate(LABELS, SCORES, 0.1, normal_scores=VAL, min_recall=0.66)
    lowest = calibrate_false_alarm_rate(LABELS, SCORES, 0.1, normal_scores=VAL).threshold
    assert cal.threshold == pytest.approx(0.5 * (lowest + 0.70))
    assert cal.false_alarm_rate <= 0.1 and cal.recall >= 0.66
    assert cal.note.startswith("centred between")
    # no room (the recall bar needs a threshold below the false-alarm one): the lowest stays
    strict = calibrate_false_alarm_rate(LABELS, SCORES, 0.0, normal_scores=VAL).threshold
    tight = calibrate_false_alarm_rate(LABELS, SCORES, 0.0, normal_scores=VAL, min_recall=1.0)
    assert tight.threshold == strict and not tight.note.startswith("centred")
    # without labelled anomalies there is nothing to centre on
    normal_only = calibrate_false_alarm_rate(np.zeros(4), SCORES[:4], 0.25, min_recall=0.8)
    assert normal_only.threshold == calibrate_false_alarm_rate(np.zeros(4), SCORES[:4], 0.25).threshold


def test_false_alarm_rate_needs_no_labelled_anomalies_but_some_normals():
    normal_only = calibrate_false_alarm_rate(np.zeros(4), SCORES[:4], 0.25)
    assert normal_only.recall is None and normal_only.gate_can_pass
    assert 0.30 < normal_only.threshold < 0.65
    with pytest.raises(MetricsInputError, match="no normal items"):
        calibrate_false_alarm_rate(np.ones(3), SCORES[-3:], 0.1)


def test_prevalence_calibration_reaches_the_line_precision():
    # at a 10 % defect rate, precision 0.9 needs far <= r * 0.1 * (1/0.9 - 1) / 0.9 ~ 0.0137 r:
    # no false alarm at all among the 10 normals
    cal = calibrate_precision_at_prevalence(LABELS, SCORES, 0.9, 0.1, normal_scores=VAL)
    assert cal.method == "prevalence" and cal.gate_can_pass
    assert 0.65 < cal.threshold < 0.70
    assert cal.false_alarm_rate == 0.0 and cal.precision == 1.0
    # at a 60 % defect rate one false alarm in ten is fine: a lower threshold, more recall
    loose = calibrate_precision_at_prevalence(LABELS, SCORES, 0.9, 0.6, normal_scores=VAL)
    assert loose.threshold < cal.threshold and loose.recall > cal.recall
    assert loose.precision >= 0.9


def test_prevalence_without_anomalies_falls_back_and_cannot_pass():
    cal = calibrate_precision_at_prevalence(np.zeros(4), SCORES[:4], 0.9, 0.01, VAL)
    assert cal.method == "normal_quantile" and not cal.gate_can_pass


def test_calibrate_dispatches_and_names_missing_settings():
    assert calibrate("precision", LABELS, SCORES, precision=0.9).method == "precision"
    assert calibrate(
        "false_alarm_rate", LABELS, SCORES, precision=0.9, max_false_alarm_rate=0.1,
        normal_scores=VAL,
    ).threshold == calibrate_false_alarm_rate(LABELS, SCORES, 0.1, VAL).threshold
    with pytest.raises(ValueError, match="gate.max_false_alarm_rate"):
        calibrate("false_alarm_rate", LABELS, SCORES, precision=0.9)
    with pytest.raises(ValueError, match="gate.prevalence"):
        calibrate("prevalence", LABELS, SCORES, precision=0.9)
    with pytest.raises(ValueError, match="unknown threshold method 'f1'"):
        calibrate("f1", LABELS, SCORES, precision=0.9)


def test_precision_threshold_is_centred_between_the_precision_and_recall_bars():
    # the lowest threshold with precision >= 0.9 sits between 0.65 and 0.70 (recall 4/6); the
    # highest one that flags half of the anomalies is 0.80: centred between, both bars kept
    plain = calibrate("precision", LABELS, SCORES, precision=0.9)
    assert 0.65 < plain.threshold < 0.70 and plain.recall == pytest.approx(4 / 6)
    centred = calibrate("precision", LABELS, SCORES, precision=0.9, min_recall=0.5)
    assert centred.threshold == pytest.approx(0.5 * (plain.threshold + 0.80))
    assert "centred" in centred.note
    assert centred.precision == 1.0 and centred.recall == pytest.approx(0.5)
    # a recall bar that the precise thresholds miss leaves it where it is
    assert calibrate("precision", LABELS, SCORES, precision=0.9, min_recall=5 / 6).threshold == (
        pytest.approx(plain.threshold))
