"""The gate's truth table: a pure function of candidate metrics, champion metrics and GateConfig."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
import yaml

from vigil.config import GateConfig, RegisterConfig
from vigil.registry.gate import GateDecision, evaluate_gate, gate_settings, settings_hash

CFG = GateConfig(precision=0.9, min_recall=0.8, champion_tolerance=0.02)


def metrics(precision=0.95, recall=0.85, best=0.9, auroc=0.97, test="t1", data="d1", far=0.0,
            **extra):
    """Candidate/champion metrics; ``test`` is the test-split hash, ``data`` the data hash
    (None leaves the key out, as for a champion registered before the key existed)."""
    out = {
        "precision_at_threshold": precision,
        "recall_at_threshold": recall,
        "recall_at_precision": best,
        "image_auroc": auroc,
        "false_alarm_rate": far,
        "target_precision": 0.9,
        "gate_can_pass": 1,
        "test_split_hash": test,
        "data_hash": data,
        **extra,
    }
    return {k: v for k, v in out.items() if v is not None}


@pytest.mark.parametrize(
    ("candidate", "champion", "passed", "reason"),
    [
        (metrics(), None, True, "no champion yet"),
        (metrics(precision=0.9, recall=0.8), None, True, "recall 0.800 >= 0.8"),
        (metrics(precision=0.89), None, False,
         "precision 0.890 on the test split is below the target 0.9"),
        (metrics(recall=0.79), None, False, "recall 0.790 is below the minimum 0.8"),
        (metrics(precision=0.5, recall=0.5), None, False, "below the minimum"),
        (metrics(gate_can_pass=0), None, False, "not calibrated on labelled anomalies"),
        (metrics(gate_can_pass=False), None, False, "cannot pass"),
        ({"image_auroc": 0.99}, None, False, "lack precision_at_threshold"),
        (metrics(precision=float("nan")), None, False, "lack precision_at_threshold"),
        # the false-alarm bar: at most 5 % of normal test items flagged
        (metrics(far=0.05), None, True, "false-alarm rate 0.050 <= 0.05: ok"),
        (metrics(far=0.067, n_test=51, n_test_anomalous=21), None, False,
         "false-alarm rate 0.067 (2 of 30 good items) is above the maximum 0.05"),
        (metrics(far=None), None, False, "lack false_alarm_rate"),
        # champion comparisons on the same test split and settings; better somewhere, not worse
        # beyond the tolerance anywhere
        (metrics(best=0.89, auroc=0.98), metrics(best=0.90), True,
         "recall_at_precision 0.890 vs champion"),
        (metrics(best=0.87, auroc=0.99), metrics(best=0.90), False,
         "recall_at_precision 0.870 is worse"),
        (metrics(best=0.95), metrics(best=0.90), True, "better than the champion on "
         "recall_at_precision"),
        (metrics(auroc=0.94), metrics(auroc=0.97), False, "image_auroc 0.940 is worse"),
        (metrics(auroc=0.96, recall=0.9), metrics(auroc=0.97), True, "image_auroc 0.960 vs champion"),
        # the tie rule: equal everywhere, or nowhere better, does not promote
        (metrics(), metrics(), False, "a tie does not promote"),
        (metrics(best=0.89), metrics(best=0.90), False, "nowhere better"),
        # the operating point: the false-alarm rate at the threshold counts (issue 16: 6.7 %
        # false alarms promoted over 0 %), and so does recall at the threshold
        (metrics(far=0.0667, best=0.95), metrics(far=0.0), False,
         "false_alarm_rate 0.067 is worse than the champion's 0.000"),
        (metrics(far=0.0, recall=0.9), metrics(far=0.0333), True,
         "better than the champion on recall_at_threshold, false_alarm_rate"),
        (metrics(recall=0.8, best=0.95), metrics(recall=0.9), False,
         "recall_at_threshold 0.800 is worse"),
        # a weak candidate that meets the absolute bar still loses to a much better champion
        (metrics(best=0.8), metrics(best=1.0), False, "worse than the champion"),
        # retraining added normal training data (data hash changed), same test split: compared,
        # so a weak candidate loses to a much better champion
        (metrics(best=0.5, data="new"), metrics(best=1.0, data="old"), False,
         "recall_at_precision 0.500 is worse than the champion's 1.000"),
        (metrics(auroc=0.80, data="new"), metrics(auroc=0.99, data="old"), False,
         "image_auroc 0.800 is worse"),
        # a different test split cannot be compared: said plainly, absolute bars decide
        (metrics(best=0.5, test="t2"), metrics(best=1.0, test="t1"), True,
         "different test split"),
        (metrics(recall=0.5, test="t2"), metrics(best=1.0, test="t1"), False, "below the minimum"),
        # a champion without a test-split hash (registered before it existed): compared only
        # when the data hashes show the same data
        (metrics(best=0.5), metrics(best=1.0, test=None), False, "worse than the champion"),
        (metrics(best=0.5, data="new"), metrics(best=1.0, test=None, data="old"), True,
         "champion has no test-split hash"),
        (metrics(best=0.5, test=None, data=None), metrics(best=1.0), True,
         "candidate has no test-split hash"),
        # other measurement settings: no comparison, and the reasons say why
        (metrics(best=0.5, target_precision=0.95), metrics(best=1.0), True,
         "champion was measured at target precision 0.9, the candidate at 0.95"),
        (metrics(best=0.5, gate_settings_hash="new"), metrics(best=1.0, gate_settings_hash="old"),
         True, "measured under other gate settings"),
        (metrics(best=0.5, gate_settings_hash="same"),
         metrics(best=1.0, gate_settings_hash="same"), False, "worse than the champion"),
        (metrics(best=0.5, target_precision=None), metrics(best=1.0, target_precision=None),
         True, "neither a gate-settings hash nor the target precision"),
        # a good champion does not rescue a candidate below the absolute bar
        (metrics(recall=0.5), metrics(best=0.5, auroc=0.5), False, "below the minimum"),
        (metrics(), {}, True, "no champion yet"),
        (metrics(), {"test_split_hash": "t1", "target_precision": 0.9}, True,
         "champion has no recall_at_precision"),
    ],
)
def test_gate_truth_table(candidate, champion, passed, reason):
    decision = evaluate_gate(candidate, champion, CFG)
    assert decision.passed is passed
    assert any(reason in r for r in decision.reasons), decision.reasons


@pytest.mark.parametrize(
    ("candidate", "champion", "compared"),
    [
        (metrics(data="new"), metrics(data="old"), True),  # only training data changed
        (metrics(test="t2"), metrics(test="t1"), False),
        (metrics(), metrics(test=None), True),  # legacy champion, same data hash
        (metrics(data="new"), metrics(test=None, data="old"), False),
    ],
)
def test_comparison_follows_the_test_split_hash(candidate, champion, compared):
    decision = evaluate_gate(candidate, champion, CFG)
    assert decision.compared_with_champion is compared
    if not compared:
        assert any("comparison with the champion cannot be made" in r for r in decision.reasons)


def test_video_metrics_compare_frame_auroc():
    cand = {**metrics(), "frame_auroc": 0.90}
    champ = {**metrics(), "frame_auroc": 0.99}
    del cand["image_auroc"], champ["image_auroc"]
    decision = evaluate_gate(cand, champ, CFG)
    assert not decision.passed and decision.champion == {
        "recall_at_precision": 0.9, "frame_auroc": 0.99, "recall_at_threshold": 0.85,
        "false_alarm_rate": 0.0,
    }


def test_candidate_missing_a_compared_metric_fails():
    cand = metrics()
    del cand["recall_at_precision"]
    decision = evaluate_gate(cand, metrics(), CFG)
    assert not decision.passed
    assert any("candidate has no recall_at_precision" in r for r in decision.reasons)


def test_decision_is_frozen_and_serializable():
    decision = evaluate_gate(metrics(), metrics(best=0.88), CFG)
    assert decision.criteria and "a tie does not promote" in decision.criteria[-1]
    assert isinstance(decision, GateDecision) and decision.passed
    assert decision.compared_with_champion
    assert decision.candidate["recall_at_precision"] == 0.9
    assert decision.precision == 0.95 and decision.recall == 0.85
    json.dumps(decision.to_dict())
    with pytest.raises(FrozenInstanceError):
        decision.passed = False  # type: ignore[misc]


def test_tolerance_and_bars_come_from_the_config():
    strict = GateConfig(precision=0.99, min_recall=0.9, champion_tolerance=0.0)
    assert not evaluate_gate(metrics(), None, strict).passed
    assert not evaluate_gate(metrics(best=0.899), metrics(best=0.9), GateConfig(
        precision=0.9, min_recall=0.8, champion_tolerance=0.0)).passed


def test_params_yaml_holds_the_gate_and_register_defaults():
    """config.py's GateConfig and RegisterConfig defaults equal params.yaml (one truth)."""
    raw = yaml.safe_load((Path(__file__).resolve().parents[3] / "params.yaml").read_text())
    assert raw["gate"] == GateConfig().model_dump()
    assert raw["register"] == RegisterConfig().model_dump()


def test_prevalence_judges_precision_at_the_line_defect_rate():
    """A model that flags 1 good part in 30 has test precision 0.95 on an anomaly-heavy split,
    but at a 1 % defect rate most of its alarms are false: the prevalence bar says so."""
    line = GateConfig(precision=0.9, min_recall=0.8, max_false_alarm_rate=None, prevalence=0.01)
    decision = evaluate_gate(metrics(precision=0.95, recall=1.0, far=1 / 30), None, line)
    assert not decision.passed
    expected = 0.01 / (0.01 + (1 / 30) * 0.99)
    assert decision.precision_at_prevalence == pytest.approx(expected)
    assert any("at a 0.01 defect rate (test split: 0.950) is below the target 0.9" in r
               for r in decision.reasons), decision.reasons
    assert "precision >= 0.9 at a 0.01 production defect rate" in decision.criteria[0]
    perfect = evaluate_gate(metrics(precision=1.0, recall=1.0, far=0.0), None, line)
    assert perfect.passed and perfect.precision_at_prevalence == 1.0


def test_settings_hash_covers_measurement_settings_only():
    base = GateConfig()
    same = settings_hash(gate_settings(base.model_copy(update={"min_recall": 0.5}), "precision"))
    assert same == settings_hash(gate_settings(base, "precision"))
    for update in ({"precision": 0.95}, {"max_false_alarm_rate": 0.01}, {"prevalence": 0.02}):
        other = settings_hash(gate_settings(base.model_copy(update=update), "precision"))
        assert other != same, update
    assert settings_hash(gate_settings(base, "false_alarm_rate")) != same
    # the candidate's hash defaults to the gate's own settings and is reported
    assert evaluate_gate(metrics(), None, base).settings_hash == settings_hash(gate_settings(base))
