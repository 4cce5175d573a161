"""Registration and gated promotion against a real MLflow registry (the mlflow_store fixture)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from vigil.registry.integrity import CHECKSUM_TAG

from tests.unit.registry.registry_helpers import (
    BETTER,
    GOOD,
    LINEAGE,
    NAME,
    WEAK,
    champion,
    logged_package,
    write_stage_inputs,
)
from tests.conftest import load_pipeline
from vigil.config import GateConfig
from vigil.registry import promotion as pro

GATE = GateConfig(precision=0.9, min_recall=0.8, champion_tolerance=0.02)


class RegistryCutOff:
    """Failure injection: a real client whose registry becomes unreachable at one call.

    Every call goes to the real store until ``method`` is called with ``alias``; from then on
    calls go to a client of a tracking server that does not answer (a closed local port).
    """

    def __init__(self, real, method: str, alias: str | None = None):
        self._real, self._method, self._alias = real, method, alias
        self._dead = mlflow.MlflowClient(
            tracking_uri="http://127.0.0.1:9", registry_uri="http://127.0.0.1:9"
        )
        self.cut = False

    def __getattr__(self, attr):
        def call(*args, **kwargs):
            if attr == self._method and (self._alias is None or self._alias in args):
                self.cut = True
            return getattr(self._dead if self.cut else self._real, attr)(*args, **kwargs)

        return call


@pytest.fixture()
def client(mlflow_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    return mlflow.MlflowClient()


def test_pass_moves_champion_and_fail_leaves_it(client, tmp_path):
    first = pro.register_candidate(client, NAME, logged_package(tmp_path, 0), GOOD, GATE, LINEAGE)
    assert first.passed and first.promoted and first.champion_before is None
    assert champion(client) == first.version == "1"
    tags = client.get_model_version(NAME, "1").tags
    assert tags[pro.TAG_GATE_PASSED] == "true"
    assert tags["vigil.git_commit"] == "abc123" and tags["vigil.data_hash"] == "d1"
    assert float(tags["vigil.metric.recall_at_threshold"]) == 0.9
    assert tags[CHECKSUM_TAG] == first.checksum

    weak = pro.register_candidate(client, NAME, logged_package(tmp_path, 1), WEAK, GATE, LINEAGE)
    assert not weak.passed and not weak.promoted
    assert champion(client) == "1" and weak.champion_after == "1"
    assert (
        str(client.get_model_version_by_alias(NAME, pro.CHALLENGER).version) == weak.version == "2"
    )
    tags = client.get_model_version(NAME, "2").tags
    assert tags[pro.TAG_GATE_PASSED] == "false"
    assert "recall 0.300 is below the minimum 0.8" in tags[pro.TAG_GATE_REASONS]
    assert "REJECTED" in weak.summary() and "champion stays 1" in weak.summary()
    # The gate compared the weak candidate with the champion's metrics read back from its tags.
    assert weak.gate["compared_with_champion"] is True
    assert weak.gate["champion"]["recall_at_precision"] == 0.9


def test_force_promote_records_who_and_why(client, tmp_path):
    pro.register_candidate(client, NAME, logged_package(tmp_path, 0), GOOD, GATE, LINEAGE)
    pro.register_candidate(client, NAME, logged_package(tmp_path, 1), WEAK, GATE, LINEAGE)
    import argparse

    from vigil.registry.cli import register_promote

    parser = argparse.ArgumentParser()
    register_promote(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "promote",
            "--model",
            NAME,
            "--force",
            "2",
            "--who",
            "alice",
            "--reason",
            "line 3 needs the new camera angle",
            "--decision-dir",
            str(tmp_path / "decisions"),
        ]
    )
    assert args.handler(args) == 0
    assert champion(client) == "2"
    tags = client.get_model_version(NAME, "2").tags
    assert tags[pro.TAG_FORCED_BY] == "alice"
    assert tags[pro.TAG_FORCE_REASON] == "line 3 needs the new camera angle"
    [written] = list((tmp_path / "decisions").glob("*.json"))
    record = json.loads(written.read_text())
    assert record["forced"] and record["who"] == "alice" and record["champion_before"] == "1"
    assert record["passed"] is False and record["champion_after"] == "2"
    with pytest.raises(ValueError, match="reason"):
        pro.force_promote(NAME, "1", "alice", " ", client=client, decision_dir=None)


def test_registry_unreachable_at_alias_step_leaves_champion(client, tmp_path):
    pro.register_candidate(client, NAME, logged_package(tmp_path, 0), GOOD, GATE, LINEAGE)
    flaky = RegistryCutOff(client, "set_registered_model_alias", pro.CHAMPION)
    with pytest.raises(pro.PromotionError) as failure:
        pro.register_candidate(flaky, NAME, logged_package(tmp_path, 1), BETTER, GATE, LINEAGE)
    assert flaky.cut and "127.0.0.1:9" in str(failure.value)
    assert "moving champion of vigil-tiny-image to version 2" in str(failure.value)
    assert champion(client) == "1"  # the real registry still names the old champion
    assert client.get_model_version(NAME, "2").status == "READY"


def test_tampered_package_is_never_champion(client, tmp_path):
    """Files change between logging and promotion: verification refuses before any alias."""
    logged = logged_package(tmp_path, 0)
    from urllib.parse import urlparse

    stored = Path(urlparse(mlflow.get_logged_model(logged.model_id).artifact_location).path)
    weights = stored / "artifacts" / "model" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes() + b"tampered")
    with pytest.raises(pro.PromotionError, match="incomplete or was modified"):
        pro.register_candidate(client, NAME, logged, GOOD, GATE, LINEAGE)
    assert champion(client) is None
    assert pro.alias_version(client, NAME, pro.CHALLENGER) is None


def test_register_stage_gates_and_writes_decision(client, tmp_path, capsys):
    """pipelines/register.py end to end on a real store: pass, then a rejected weak model (exit 0)."""
    stage = load_pipeline("register")
    for seed, metrics in ((0, GOOD), (1, WEAK)):
        run_id = write_stage_inputs(
            tmp_path, seed, {**metrics, "test_split_hash": "t1"}, promote="always"
        )
        assert stage.main(["--dataset", "tiny", "--params", str(tmp_path / "params.yaml")]) == 0
        decision = json.loads((tmp_path / "reports" / "tiny" / "decision.json").read_text())
        assert decision["version"] == str(seed + 1)
    assert decision["passed"] is False and decision["champion_after"] == "1"
    assert "gate REJECTED" in capsys.readouterr().out
    tags = client.get_model_version("vigil-tiny-image", "2").tags
    assert tags["vigil.git_commit"] == "c0ffee" and tags["vigil.dataset"] == "tiny"
    assert tags["vigil.test_split_hash"] == "t1"
    # The package went into the training run.
    assert client.get_model_version("vigil-tiny-image", "2").run_id == run_id


def test_new_training_data_keeps_the_champion_comparison(client, tmp_path):
    """Retraining changes the data hash (new normal training data) but not the test split: the
    weak candidate is compared with the champion read back from its tags, and loses."""
    good = {**GOOD, "test_split_hash": "t1"}
    # meets the absolute bar, but far below the champion's best recall and AUROC
    weaker = {**GOOD, "recall_at_precision": 0.82, "image_auroc": 0.9, "test_split_hash": "t1"}
    first = pro.register_candidate(client, NAME, logged_package(tmp_path, 0), good, GATE,
                                   {**LINEAGE, "data_hash": "d1"})
    assert client.get_model_version(NAME, first.version).tags["vigil.test_split_hash"] == "t1"
    second = pro.register_candidate(client, NAME, logged_package(tmp_path, 1), weaker, GATE,
                                    {**LINEAGE, "data_hash": "d2"})
    assert second.gate["compared_with_champion"] and not second.passed
    assert any("worse than the champion" in r for r in second.reasons)
    assert champion(client) == first.version


def _raise(error: BaseException):
    def fail(*args, **kwargs):
        raise error

    return fail


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ("mlflow.MlflowClient.create_model_version", "mlflow"),
        ("mlflow.MlflowClient.set_registered_model_alias", "connection"),
        ("mlflow.pyfunc.log_model", "connection"),
    ],
)
def test_register_stage_turns_registry_errors_into_exit_1(
    client, tmp_path, capsys, monkeypatch, target, error
):
    """A raw MlflowException or connection error mid-registration: one plain line, exit 1, and
    the champion alias still on the version it named before."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import ConnectionError as RequestsConnectionError

    stage = load_pipeline("register")
    write_stage_inputs(tmp_path, 0, GOOD, promote="always")
    assert stage.main(["--dataset", "tiny", "--params", str(tmp_path / "params.yaml")]) == 0
    capsys.readouterr()
    raised = (
        MlflowException("INTERNAL_ERROR: database is locked")
        if error == "mlflow"
        else RequestsConnectionError("Max retries exceeded with url: /api/2.0/mlflow")
    )
    write_stage_inputs(tmp_path, 1, BETTER, promote="always")
    monkeypatch.setattr(target, _raise(raised))
    assert stage.main(["--dataset", "tiny", "--params", str(tmp_path / "params.yaml")]) == 1
    err = capsys.readouterr().err
    assert "register@tiny: registry failure, champion unchanged:" in err, err
    assert "Traceback" not in err and type(raised).__name__ in err
    monkeypatch.undo()
    assert str(client.get_model_version_by_alias("vigil-tiny-image", pro.CHAMPION).version) == "1"


def test_registry_errors_wraps_only_registry_failures():
    from mlflow.exceptions import MlflowException

    with pytest.raises(pro.PromotionError, match="step x: MlflowException: boom"):
        with pro.registry_errors("step x"):
            raise MlflowException("boom\nsecond line")
    with pytest.raises(pro.PromotionError, match="ConnectionRefusedError"):
        with pro.registry_errors("step x"):
            raise ConnectionRefusedError(111, "Connection refused")
    with pytest.raises(ValueError, match="bad input"):  # not a registry failure: unchanged
        with pro.registry_errors("step x"):
            raise ValueError("bad input")
