"""Push-driven following against the real team MLflow server (issue 14, item 3).

`vigil serve` follows ``champion`` with a 10-minute poll interval; an MLflow registry webhook
(``model_version_alias.created``, HMAC-signed with the shared secret) points at its
``/webhooks/mlflow``. When the gate moves the champion, the server serves the new version within
seconds, far before any poll would have run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import mlflow
import pytest

from tests.conftest import REPO_ROOT, free_port, wait_until_ok
from tests.team_stores import BETTER, GOOD, get_json, stop, wait_for
from vigil.config import GateConfig
from vigil.registry import promotion as pro

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
SECRET = "team-webhook-secret"
POLL_INTERVAL_S = 600


def test_alias_move_is_followed_by_webhook_before_any_poll(team_env, team_mlflow, team_package,
                                                            tmp_path):
    client = mlflow.MlflowClient(team_mlflow.url)
    name = "vigil-team-webhook"
    first = pro.register_candidate(client, name, team_package, GOOD, GateConfig(), {})
    assert first.promoted, first.reasons

    port = free_port()
    log = tmp_path / "serve.log"
    env = {
        **os.environ, "MLFLOW_TRACKING_URI": team_mlflow.url, "VIGIL_WEBHOOK_SECRET": SECRET,
        "OMP_NUM_THREADS": "1",
    }  # fmt: skip
    cmd = [
        str(Path(sys.executable).with_name("vigil")), "serve",
        "--model-uri", f"models:/{name}@champion", "--config", str(REPO_ROOT / "configs" /
        "serving.yaml"), "--host", "127.0.0.1", "--port", str(port),
        "--poll-interval", str(POLL_INTERVAL_S),
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ok(f"{url}/ready", proc, log.read_text, timeout=180)
        assert get_json(f"{url}/model")["version"] == first.version

        unsigned = httpx.post(f"{url}/webhooks/mlflow", json={"entity": "x"}, timeout=10)
        assert unsigned.status_code == 401

        client.create_webhook(
            name=f"{name}-serve", url=f"{url}/webhooks/mlflow",
            events=["model_version_alias.created"], secret=SECRET,
        )  # fmt: skip
        second = pro.register_candidate(client, name, team_package, BETTER, GateConfig(), {})
        assert second.promoted, second.reasons
        took = wait_for(
            lambda: get_json(f"{url}/model")["version"] == second.version,
            timeout=120, what=f"serving {name} version {second.version} after the webhook",
        )  # fmt: skip
        assert took < POLL_INTERVAL_S / 5, f"followed after {took:.1f} s: that was a poll"
        text = log.read_text()
        assert "registry webhook" in text and "checking now" in text, text[-3000:]
    finally:
        stop(proc)
