"""Order of writes in register and promote (issue 15 item 5): the record before the alias, a
rolled-back record on failure, and orphans of an interrupted registration repaired."""

from __future__ import annotations

import argparse
import json

import mlflow
import pytest

from tests.unit.registry.registry_helpers import (
    BETTER,
    GOOD,
    LINEAGE,
    NAME,
    champion,
    logged_package,
)
from vigil.config import GateConfig
from vigil.registry import promotion as pro

GATE = GateConfig()


class CutAt:
    """A real client whose registry stops answering at the first call of ``method`` whose
    arguments include ``marker`` (a closed local port from then on)."""

    def __init__(self, real, method: str, marker: str):
        self._real, self._method, self._marker = real, method, marker
        self._dead = mlflow.MlflowClient(
            tracking_uri="http://127.0.0.1:9", registry_uri="http://127.0.0.1:9"
        )
        self.cut = False

    def __getattr__(self, attr):
        def call(*args, **kwargs):
            if attr == self._method and self._marker in args:
                self.cut = True
            return getattr(self._dead if self.cut else self._real, attr)(*args, **kwargs)

        return call


@pytest.fixture()
def client(mlflow_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    return mlflow.MlflowClient()


def test_interrupted_registration_leaves_no_pass_claim_and_is_repaired(client, tmp_path):
    decision_path = tmp_path / "reports" / "decision.json"
    flaky = CutAt(client, "set_model_version_tag", pro.TAG_GATE_PASSED)
    with pytest.raises(pro.PromotionError, match="recording the verdict"):
        pro.register_candidate(flaky, NAME, logged_package(tmp_path, 0), GOOD, GATE, LINEAGE,
                               decision_path=decision_path)
    assert flaky.cut
    # the record was written first, then rolled back: it claims no promotion
    record = json.loads(decision_path.read_text())
    assert record["state"] == "failed" and record["promoted"] is False
    assert record["champion_after"] is None and "champion unchanged" in record["reasons"][-1]
    # the version exists but claims no verdict, and nothing is champion
    tags = client.get_model_version(NAME, "1").tags
    assert pro.TAG_GATE_PASSED not in tags and tags[pro.TAG_DECISION_STATE] == "pending"
    assert champion(client) is None

    # the next registration of the model repairs the orphan, then gates its own candidate
    second = pro.register_candidate(client, NAME, logged_package(tmp_path, 1), GOOD, GATE,
                                    LINEAGE, decision_path=decision_path, orphan_age_s=0)
    assert any("repaired vigil-tiny-image version 1" in n for n in second.notes)
    repaired = client.get_model_version(NAME, "1").tags
    assert repaired[pro.TAG_GATE_PASSED] == "false"
    assert repaired[pro.TAG_DECISION_STATE] == "orphaned"
    assert "interrupted before its decision was recorded" in repaired[pro.TAG_GATE_REASONS]
    assert second.promoted and champion(client) == "2"
    assert client.get_model_version(NAME, "2").tags[pro.TAG_DECISION_STATE] == "recorded"
    assert json.loads(decision_path.read_text())["state"] == "recorded"


def test_a_recent_pending_version_is_left_to_its_registration(client, tmp_path):
    """Another process may still be registering a version created moments ago."""
    flaky = CutAt(client, "set_model_version_tag", pro.TAG_GATE_PASSED)
    with pytest.raises(pro.PromotionError):
        pro.register_candidate(flaky, NAME, logged_package(tmp_path, 0), GOOD, GATE, LINEAGE)
    assert pro.repair_orphans(client, NAME) == []  # default age: one hour
    assert client.get_model_version(NAME, "1").tags[pro.TAG_DECISION_STATE] == "pending"


def _promote_cli(*argv: str) -> int:
    from vigil.registry.cli import register_promote

    parser = argparse.ArgumentParser()
    register_promote(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["promote", *argv])
    return args.handler(args)


def test_force_promote_writes_its_record_before_the_alias(client, tmp_path, capsys):
    pro.register_candidate(client, NAME, logged_package(tmp_path, 0), BETTER, GATE, LINEAGE)
    pro.register_candidate(client, NAME, logged_package(tmp_path, 1), GOOD, GATE, LINEAGE)
    assert champion(client) == "1"
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the decision folder should be")
    code = _promote_cli("--model", NAME, "--force", "2", "--who", "alice", "--reason", "r",
                        "--decision-dir", str(blocked))
    out = capsys.readouterr().out
    assert code == 1 and "cannot write the decision record" in out and "champion unchanged" in out
    assert champion(client) == "1"  # the record could not be written: nothing moved
    assert pro.TAG_FORCED_BY not in client.get_model_version(NAME, "2").tags


def test_force_promote_rolls_its_record_back_when_the_alias_fails(client, tmp_path):
    pro.register_candidate(client, NAME, logged_package(tmp_path, 0), BETTER, GATE, LINEAGE)
    pro.register_candidate(client, NAME, logged_package(tmp_path, 1), GOOD, GATE, LINEAGE)
    flaky = CutAt(client, "set_registered_model_alias", pro.CHAMPION)
    with pytest.raises(pro.PromotionError, match="force-promoting"):
        pro.force_promote(NAME, "2", "alice", "line 3", client=flaky,
                          decision_dir=tmp_path / "promotions")
    [written] = list((tmp_path / "promotions").glob("*.json"))
    record = json.loads(written.read_text())
    assert record["forced"] and record["state"] == "failed" and record["promoted"] is False
    assert record["champion_after"] == "1"
    assert champion(client) == "1"
