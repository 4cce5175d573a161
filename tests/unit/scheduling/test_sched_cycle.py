"""One retrain cycle on a real git + DVC project and a real MLflow registry, with failures
injected at each step: the record names the step, and data, DVC state, registry and champion stay
consistent."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import mlflow
import pytest
import yaml
from test_sched_helpers import RETRAIN_YAML, dvc, image, make_project, read_records, write_png

from vigil.registry.promotion import Decision, write_decision
from vigil.scheduling import RetrainConfig, load_retrain_config
from vigil.scheduling.retrain import read_decision, repro_commands, run_cycle

MODEL = "t-tiles-image"


@pytest.fixture()
def project(tmp_path: Path, mlflow_store: str) -> Path:
    root = make_project(tmp_path / "proj")
    dvc(root, "repro")  # the first champion: version 1, trained on 3 normal images
    return root


@pytest.fixture()
def fresh_project(tmp_path: Path, mlflow_store: str) -> Path:
    """The project before its first `dvc repro` (no champion): for failures before repro."""
    return make_project(tmp_path / "proj")


def _cfg(root: Path, **overrides) -> RetrainConfig:
    raw = {**RETRAIN_YAML, **overrides}
    (root / "configs" / "retrain.yaml").write_text(yaml.safe_dump(raw))
    return load_retrain_config(root / "configs" / "retrain.yaml")


def _champion() -> str | None:
    client = mlflow.MlflowClient()
    try:
        return str(client.get_model_version_by_alias(MODEL, "champion").version)
    except mlflow.exceptions.MlflowException:
        return None


def _drop(root: Path, *seeds: int, corrupt: bool = False, duplicate_of: str | None = None) -> None:
    inbox = root / "inbox" / "tiles"
    for seed in seeds:
        write_png(inbox / f"new{seed}.png", image(seed))
    if corrupt:
        (inbox / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    if duplicate_of:
        (inbox / "dup.png").write_bytes((root / duplicate_of).read_bytes())


def _retrain_runs() -> list:
    experiment = mlflow.MlflowClient().get_experiment_by_name("vigil-retrain")
    if experiment is None:
        return []
    return mlflow.MlflowClient().search_runs([experiment.experiment_id])


def _dvc_clean(root: Path) -> bool:
    return "up to date" in dvc(root, "status", "data/extra/tiles.dvc")


def test_new_data_retrains_then_nothing_to_do(project: Path) -> None:
    root, cfg = project, _cfg(project)
    quiet = run_cycle(root, cfg, echo=lambda _: None)
    assert quiet["status"] == "no_change" and read_records(root) == [] and _retrain_runs() == []

    _drop(root, 11, 12, corrupt=True, duplicate_of="data/tiles/train/good/000.png")
    record = run_cycle(root, cfg, echo=lambda _: None)
    entry = record["datasets"]["tiles"]
    assert record["status"] == "retrained" and record["trigger"] == ["new_data"]
    assert entry["data_version_before"] != entry["data_version_after"]
    assert entry["ingested"] == 2 and set(entry["quarantined"]) == {"broken.png", "dup.png"}
    assert (root / "quarantine/tiles/broken.png.reason.txt").is_file()
    assert (entry["candidate_version"], entry["verdict"], entry["promoted"]) == ("2", "pass", True)
    assert (entry["champion_before"], entry["champion_after"]) == ("1", "2") and _champion() == "2"
    assert entry["reasons"] == ["normal images 5 vs champion 3"]
    assert set(entry["decision"]) == {f.name for f in fields(Decision)}  # the real file format
    assert json.loads((root / "reports/tiles/count.json").read_text())["normal"] == 5
    assert read_records(root) == [record]
    (run,) = _retrain_runs()
    assert run.info.run_id == record["mlflow_run_id"] and run.info.status == "FINISHED"
    assert run.data.tags["tiles.verdict"] == "pass" and run.data.params["trigger"] == "new_data"
    assert run.data.metrics["tiles.ingested"] == 2

    again = run_cycle(root, cfg, echo=lambda _: None)
    assert again["status"] == "no_change" and len(read_records(root)) == 1


def test_training_crash_is_recorded_and_the_next_cycle_retries(fresh_project: Path) -> None:
    root, cfg = fresh_project, _cfg(fresh_project)
    _drop(root, 21)
    (root / "FAIL_COUNT").write_text("injected")
    failed = run_cycle(root, cfg, echo=lambda _: None)
    assert failed["status"] == "failed" and failed["error"]["step"] == "repro"
    assert "injected training crash" in failed["error"]["tail"]
    assert _champion() is None and _dvc_clean(root)  # no half-made champion; data consistent
    assert _retrain_runs()[0].info.status == "FAILED"
    (root / "FAIL_COUNT").unlink()
    retried = run_cycle(root, cfg, echo=lambda _: None)
    assert retried["status"] == "retrained" and retried["trigger"] == ["new_data"]
    entry = retried["datasets"]["tiles"]
    assert entry["ingested"] == 0 and entry["data_version_before"] == entry["data_version_after"]
    assert (entry["champion_before"], entry["champion_after"]) == (None, "1") and _champion() == "1"


def test_registry_down_skips_the_pipeline_and_keeps_the_record(
    fresh_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, cfg = fresh_project, _cfg(fresh_project)
    _drop(root, 31)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    good_uri = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    record = run_cycle(root, cfg, echo=lambda _: None)
    assert record["status"] == "failed" and record["error"]["step"] == "registry"
    assert "unreachable" in record["error"]["message"] and "mlflow_error" in record
    assert read_records(root)[0]["error"]["step"] == "registry"
    assert not (root / "reports/tiles/count.json").exists()  # no repro ran
    assert record["datasets"]["tiles"]["ingested"] == 1 and _dvc_clean(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", good_uri)
    mlflow.set_tracking_uri(good_uri)
    mlflow.set_registry_uri(good_uri)
    assert _champion() is None and _retrain_runs() == []  # nothing reached the registry


def test_forced_cycle_with_drift_and_age_is_rejected_by_the_gate(project: Path) -> None:
    root = project
    scores = root / "scores.jsonl"
    scores.write_text(
        "".join(json.dumps({"score": 0.9, "threshold": 0.5}) + "\n" for _ in range(20))
    )
    drift = {"scores_log": "scores.jsonl", "window": 20, "min_samples": 10}
    cfg = _cfg(
        root, max_model_age_days=1e-9, datasets={"tiles": {"inbox": "inbox/tiles", "drift": drift}}
    )
    record = run_cycle(root, cfg, force=True, echo=lambda _: None)
    entry = record["datasets"]["tiles"]
    assert entry["trigger"] == ["model_age", "drift", "force"]
    assert record["repro_commands"] == ["dvc repro --force --downstream count@tiles"]
    assert entry["drift"]["fired"] and entry["drift"]["alarm_fraction"] == 1.0
    # same data: the candidate is not better, the gate rejects it, the champion stays
    assert (entry["candidate_version"], entry["verdict"], entry["promoted"]) == ("2", "fail", False)
    assert entry["champion_before"] == entry["champion_after"] == "1" == _champion()


def test_failures_at_config_and_ingest_steps(fresh_project: Path) -> None:
    root, cfg = fresh_project, _cfg(fresh_project)
    params = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(params + "typo_section: 1\n")
    record = run_cycle(root, cfg, echo=lambda _: None)
    assert record["error"]["step"] == "config" and "typo_section" in record["error"]["message"]
    (root / "params.yaml").write_text(params)

    _drop(root, 41)
    dvc_config = root / ".dvc" / "config"
    good = dvc_config.read_text()
    dvc_config.write_text("[core\nbroken")  # dvc itself fails, for real
    record = run_cycle(root, cfg, echo=lambda _: None)
    dvc_config.write_text(good)
    assert record["error"]["step"] == "ingest" and "rolled back" in record["error"]["message"]
    assert (root / "inbox/tiles/new41.png").is_file()
    assert not (root / "data/extra/tiles.dvc").exists()  # as before: never versioned
    assert not any((root / "data/extra/tiles").rglob("*.png"))
    assert [r["error"]["step"] for r in read_records(root)] == ["config", "ingest"]
    assert [r.info.status for r in _retrain_runs()] == ["FAILED", "FAILED"]


def test_corrupt_decision_is_a_failure_that_still_records_the_champion(project: Path) -> None:
    root, cfg = project, _cfg(project)
    _drop(root, 51)
    (root / "BAD_DECISION").write_text("injected")
    record = run_cycle(root, cfg, echo=lambda _: None)
    assert record["error"]["step"] == "decision" and "JSONDecodeError" in record["error"]["message"]
    entry = record["datasets"]["tiles"]
    # the gate (in the pipeline) passed and moved the alias; the record still says where it is
    assert entry["ingested"] == 1 and entry["champion_after"] == _champion() == "2"
    assert _dvc_clean(root)


def test_repro_commands_per_trigger() -> None:
    cfg = RetrainConfig(datasets={"a": {"inbox": "i"}, "b": {"inbox": "j"}})
    commands = repro_commands(cfg, {"a": ["new_data"], "b": ["new_data", "force"]})
    assert commands == [["repro", "register@a"], ["repro", "--force", "--downstream", "extra@b"]]
    whole = RetrainConfig(datasets={"a": {"inbox": "i"}}, repro={"targets": [], "force_from": None})
    assert repro_commands(whole, {"a": ["new_data"]}) == [["repro"]]


def _decision(**overrides) -> Decision:
    values = {
        "model_name": MODEL,
        "version": "3",
        "passed": False,
        "promoted": False,
        "reasons": ["recall 0.80 < champion 0.90"],
        "champion_before": "2",
        "champion_after": "2",
    }
    return Decision(**{**values, **overrides})


def test_read_decision_reads_what_the_register_stage_writes(tmp_path: Path) -> None:
    path = write_decision(_decision(), tmp_path / "decision.json")
    read = read_decision(path)
    assert (read["verdict"], read["promoted"], read["candidate_version"]) == ("fail", False, "3")
    assert (read["champion_before"], read["champion_after"]) == ("2", "2")
    assert read["reasons"] == ["recall 0.80 < champion 0.90"] and read["forced"] is False
    first = _decision(version="1", passed=True, promoted=True, champion_before=None)
    read = read_decision(write_decision(first, tmp_path / "first.json"))
    assert (read["verdict"], read["promoted"], read["champion_before"]) == ("pass", True, None)


def test_read_decision_names_the_file_and_the_missing_fields(tmp_path: Path) -> None:
    old = tmp_path / "decision.json"
    old.write_text(json.dumps({"verdict": "pass", "candidate_version": "2"}))
    with pytest.raises(ValueError, match=r"decision\.json: not a register decision: missing") as e:
        read_decision(old)
    assert "passed" in str(e.value) and "promoted" in str(e.value)
    bad = _decision().to_dict() | {"passed": "yes"}
    old.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="field 'passed' must be true or false"):
        read_decision(old)
    old.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        read_decision(old)
