"""The gate's evidence: labelled test anomalies, or synthetic ones in val only when
``gate.allow_synthetic_evidence`` says so; the reasons say which was used and what is missing."""

from __future__ import annotations

from vigil.config import GateConfig
from vigil.registry.evidence import MISSING, judged_metrics
from vigil.registry.gate import evaluate_gate, gate_settings, settings_hash

STRICT = GateConfig()
ALLOW = GateConfig(allow_synthetic_evidence=True)


def synthetic(recall=0.9, precision=0.95, auroc=0.97, far=None, test="t0"):
    """metrics.json of a normal-only dataset (no label metrics; synthetic_* ones)."""
    out = {
        "evidence": "synthetic",
        "threshold": 0.5,
        "target_precision": 0.9,
        "gate_can_pass": 1,
        "n_test": 0,
        "n_test_anomalous": 0,
        "synthetic_image_auroc": auroc,
        "synthetic_recall_at_precision": recall,
        "synthetic_precision_at_threshold": precision,
        "synthetic_recall_at_threshold": recall,
        "synthetic_false_alarm_rate": 0.0,
        "synthetic_n": 20,
        "synthetic_n_anomalous": 10,
        "test_split_hash": test,
    }
    if far is not None:
        out.update(false_alarm_rate=far, n_test=20)
    return out


def labelled():
    return {
        "evidence": "labelled", "precision_at_threshold": 0.95, "recall_at_threshold": 0.9,
        "recall_at_precision": 0.9, "image_auroc": 0.97, "false_alarm_rate": 0.0,
        "target_precision": 0.9, "gate_can_pass": 1, "n_test": 40, "n_test_anomalous": 20,
        "test_split_hash": "t0",
    }


def test_synthetic_evidence_fails_by_default_and_says_what_is_missing():
    decision = evaluate_gate(synthetic(), None, STRICT)
    assert not decision.passed and decision.evidence == "synthetic"
    assert decision.reasons[0].startswith("evidence: synthetic only, not accepted")
    assert MISSING in decision.reasons[0]
    assert "add test/<defect>/ images with ground_truth masks" in decision.reasons[0]
    # the synthetic numbers are still shown, marked as not judged
    assert any(r.startswith("synthetic evidence (not judged): recall 0.900") for r in
               decision.reasons)


def test_synthetic_evidence_passes_with_the_switch_on_its_own_numbers():
    decision = evaluate_gate(synthetic(), None, ALLOW)
    assert decision.passed, decision.reasons
    assert decision.reasons[0].startswith("evidence: synthetic anomalies pasted into the val")
    assert any("on synthetic anomalies in val" in r for r in decision.reasons)
    assert decision.recall == 0.9 and decision.precision == 0.95
    weak = evaluate_gate(synthetic(recall=0.5), None, ALLOW)
    assert not weak.passed and any("recall 0.500 is below" in r for r in weak.reasons)


def test_false_alarms_on_normal_test_items_are_judged_when_test_has_them():
    decision = evaluate_gate(synthetic(far=0.2), None, ALLOW)
    assert not decision.passed and decision.false_alarm_rate == 0.2
    assert judged_metrics(synthetic(), "synthetic")["false_alarm_rate"] == 0.0  # val fallback


def test_labelled_evidence_is_named_first_and_absent_evidence_means_labelled():
    decision = evaluate_gate(labelled(), None, STRICT)
    assert decision.passed and decision.evidence == "labelled"
    assert decision.reasons[0] == "evidence: labelled anomalies in the test split (20 anomalous test items)"
    legacy = {k: v for k, v in labelled().items() if k != "evidence"}
    assert evaluate_gate(legacy, None, STRICT).evidence == "labelled"


def test_no_evidence_fails_even_with_the_switch():
    decision = evaluate_gate({"evidence": "none", "gate_can_pass": 1}, None, ALLOW)
    assert not decision.passed and decision.reasons[0].startswith("evidence: none")


def test_synthetic_and_labelled_candidates_are_never_compared():
    assert settings_hash(gate_settings(STRICT, "false_alarm_rate", "synthetic")) != settings_hash(
        gate_settings(STRICT, "false_alarm_rate", "labelled")
    )
    # labelled settings hash unchanged by the new argument (old champions stay comparable)
    assert gate_settings(STRICT, "x", "labelled") == gate_settings(STRICT, "x")
    champion = {**labelled(), "gate_settings_hash": settings_hash(gate_settings(ALLOW))}
    decision = evaluate_gate(synthetic(), champion, ALLOW)
    assert not decision.compared_with_champion
    assert any("other gate settings" in r for r in decision.reasons)


def test_two_synthetic_candidates_compare_on_their_synthetic_numbers():
    champion = synthetic(recall=0.95, auroc=0.99)
    champion["gate_settings_hash"] = settings_hash(gate_settings(ALLOW, evidence="synthetic"))
    decision = evaluate_gate(synthetic(recall=0.85, auroc=0.97), champion, ALLOW)
    assert decision.compared_with_champion and not decision.passed
    assert any("recall_at_threshold 0.850 is worse" in r for r in decision.reasons)
