"""``vigil.serving.webhook``: MLflow's own signer is accepted, anything else is refused, and an
accepted ``model_version_alias.created`` event wakes the real alias follower."""

from __future__ import annotations

import json
import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from mlflow.webhooks.delivery import _generate_hmac_signature

from vigil.serving.follow import AliasFollower, ModelHolder
from vigil.serving.webhook import WEBHOOK_PATH, webhook_router

SECRET = "team-webhook-secret"


def event(name="vigil-a", alias="champion", entity="model_version_alias", action="created"):
    return json.dumps({"entity": entity, "action": action, "timestamp": "2026-01-01T00:00:00",
                       "data": {"name": name, "alias": alias, "version": "7"}})


def signed(body: str, secret: str = SECRET, age_s: int = 0) -> dict[str, str]:
    """Headers exactly as MLflow's webhook delivery signs them."""
    timestamp = str(int(time.time()) - age_s)
    return {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": "d-1",
        "X-MLflow-Timestamp": timestamp,
        "X-MLflow-Signature": _generate_hmac_signature(secret, "d-1", timestamp, body),
    }


@pytest.fixture()
def served():
    app = FastAPI()
    app.include_router(webhook_router(SECRET))
    follower = AliasFollower(ModelHolder(None), "vigil-a", "champion", interval_s=3600)
    app.state.follower = follower
    return TestClient(app), follower


def test_mlflow_signed_alias_event_wakes_the_follower(served):
    client, follower = served
    body = event()
    answer = client.post(WEBHOOK_PATH, content=body, headers=signed(body))
    assert answer.status_code == 202, answer.text
    assert answer.json()["version"] == "7"
    assert follower._wake.is_set()


@pytest.mark.parametrize(
    "headers, detail",
    [
        (lambda b: signed(b, secret="wrong"), "does not match"),
        (lambda b: signed(b, age_s=3600), "stale"),
        (lambda b: {k: v for k, v in signed(b).items() if k != "X-MLflow-Signature"}, "missing"),
    ],
)
def test_bad_signatures_are_refused(served, headers, detail):
    client, follower = served
    body = event()
    answer = client.post(WEBHOOK_PATH, content=body, headers=headers(body))
    assert answer.status_code == 401 and detail in answer.json()["detail"]
    assert not follower._wake.is_set()


def test_altered_body_is_refused(served):
    client, follower = served
    headers = signed(event())
    answer = client.post(WEBHOOK_PATH, content=event(alias="x"), headers=headers)
    assert answer.status_code == 401 and not follower._wake.is_set()


@pytest.mark.parametrize(
    "body, reason",
    [
        (event(alias="challenger"), "is not vigil-a@champion"),
        (event(name="other"), "is not vigil-a@champion"),
        (event(entity="model_version", action="created"), "not followed"),
    ],
)
def test_other_events_are_ignored(served, body, reason):
    client, follower = served
    answer = client.post(WEBHOOK_PATH, content=body, headers=signed(body))
    assert answer.status_code == 200 and reason in answer.json()["reason"]
    assert not follower._wake.is_set()


def test_without_a_secret_webhooks_are_off(monkeypatch):
    monkeypatch.delenv("VIGIL_WEBHOOK_SECRET", raising=False)
    app = FastAPI()
    app.include_router(webhook_router())
    body = event()
    answer = TestClient(app).post(WEBHOOK_PATH, content=body, headers=signed(body))
    assert answer.status_code == 503 and "VIGIL_WEBHOOK_SECRET" in answer.json()["detail"]


def test_poll_now_wakes_the_running_follower_before_its_interval():
    """The follower thread polls at once on poll_now, not after its hour-long interval."""
    polls = []

    class Counting(AliasFollower):
        def poll_once(self):
            polls.append(time.monotonic())

    follower = Counting(ModelHolder(None), "vigil-a", "champion", interval_s=3600).start()
    try:
        follower.poll_now()
        deadline = time.monotonic() + 10
        while not polls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert polls, "poll_now did not wake the follower"
    finally:
        follower.stop()
    assert not follower._thread.is_alive()
