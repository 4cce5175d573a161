"""The register stage under the promotion policy (register.promote: auto), on a real MLflow
SQLite store and a real git checkout: a clean commit promotes; a `dvc exp run`-style run (the
environment DVC gives an experiment's stages) registers and gates its candidate, sets
`challenger`, tags the experiment, and leaves `champion` where it was."""

from __future__ import annotations

import json

import mlflow

from tests.conftest import load_pipeline
from tests.unit.registry.registry_helpers import (
    BETTER,
    GOOD,
    commit_all,
    git,
    write_stage_inputs,
)
from vigil.evaluation.report import REGISTRATION_MARK
from vigil.registry import promotion as pro

MODEL = "vigil-tiny-image"


def _decision(root) -> dict:
    return json.loads((root / "reports" / "tiny" / "decision.json").read_text())


def _alias(client, alias: str) -> str:
    return str(client.get_model_version_by_alias(MODEL, alias).version)


def test_experiment_sets_challenger_and_leaves_champion(mlflow_store, tmp_path, monkeypatch,
                                                         capsys):
    for name in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "VIGIL_PROMOTE"):
        monkeypatch.delenv(name, raising=False)
    client = mlflow.MlflowClient()
    stage = load_pipeline("register")
    args = ["--dataset", "tiny", "--params", str(tmp_path / "params.yaml")]

    # a clean commit: the gate's pass moves champion
    run_id = write_stage_inputs(tmp_path, 0, {**GOOD, "test_split_hash": "t1"})
    report = tmp_path / "reports" / "tiny" / "evaluation" / "report.html"
    report.parent.mkdir(parents=True)
    report.write_text(f"<html><body><h2>Verdict</h2>{REGISTRATION_MARK}</body></html>")
    commit_all(tmp_path, "baseline")
    assert stage.main(args) == 0
    first = _decision(tmp_path)
    assert first["passed"] and first["promoted"], first
    assert first["promotion"]["allowed"] and "a clean commit" in first["promotion"]["why"]
    assert _alias(client, pro.CHAMPION) == first["version"] == "1"
    # the run's copy of the report now says what register decided; the stage output is untouched
    logged = mlflow.artifacts.load_text(f"runs:/{run_id}/evaluation/report.html")
    assert "Registered as version 1 of vigil-tiny-image; the gate passed" in logged
    assert "it is now champion" in logged and REGISTRATION_MARK in report.read_text()

    # `dvc exp run -S ...`: DVC runs the stage with these set; a better model passes the gate
    # but only becomes challenger
    baseline = git(tmp_path, "rev-parse", "HEAD").strip()
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", baseline)
    monkeypatch.setenv("DVC_EXP_NAME", "blur5")
    write_stage_inputs(tmp_path, 1, {**BETTER, "test_split_hash": "t1"})
    capsys.readouterr()
    assert stage.main(args) == 0
    out = capsys.readouterr().out
    second = _decision(tmp_path)
    assert second["passed"] and not second["promoted"], second
    assert second["gate"]["compared_with_champion"]
    assert second["promotion"] == {
        "policy": "auto", "allowed": False, "experiment": "blur5",
        "why": second["promotion"]["why"],
    }
    assert "a DVC experiment 'blur5'" in second["promotion"]["why"]
    assert second["champion_before"] == second["champion_after"] == "1"
    assert second["criteria"] and any("false-alarm rate" in c for c in second["criteria"])
    assert "not promoted (a DVC experiment 'blur5'" in out and "challenger" in out
    assert _alias(client, pro.CHAMPION) == "1"
    assert _alias(client, pro.CHALLENGER) == second["version"] == "2"
    tags = client.get_model_version(MODEL, "2").tags
    assert tags[pro.TAG_GATE_PASSED] == "true" and tags[pro.TAG_DECISION_STATE] == "recorded"
    assert tags[pro.TAG_DVC_EXPERIMENT] == "blur5"
    assert tags[pro.TAG_PROMOTION_ALLOWED] == "false"
    assert json.loads(tags[pro.TAG_GATE_SETTINGS])["max_false_alarm_rate"] == 0.05
    assert tags["vigil.gate.settings_hash"] == client.get_model_version(MODEL, "1").tags[
        "vigil.gate.settings_hash"]
