"""Team mode, registry side (issue 14): vigil against `mlflow server` on PostgreSQL with its
artifacts in S3, all real servers on 127.0.0.1 (see tests/team_stores.py).

- a package logged and registered with the real registry code lands in the S3 bucket, and
  `vigil pull` (the CLI, in a subprocess) installs the champion from the server, verified;
- a tracking server that is down, or whose artifact store refuses its credentials, gives one
  clear line naming the URL (password masked), and the champion never moves without a verified
  package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from tests.conftest import free_port
from tests.team_stores import (
    BETTER,
    GOOD,
    fresh_database,
    start_mlflow,
    start_s3,
)
from vigil.config import GateConfig
from vigil.registry import promotion as pro

pytestmark = pytest.mark.postgres
VIGIL = Path(sys.executable).with_name("vigil")


def vigil_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VIGIL), *args], env={**os.environ, **env}, cwd=cwd, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip


def error_lines(stderr: str) -> list[str]:
    """vigil's own error lines (library warnings printed by logging are not vigil's answer)."""
    return [line for line in stderr.splitlines() if line.startswith("vigil ")]


@pytest.mark.slow  # the session's servers + one package through them: minutes on 2 cores
def test_register_and_pull_through_the_team_server(team_env, team_mlflow, team_s3, team_package,
                                                   tmp_path):
    client = mlflow.MlflowClient(team_mlflow.url)
    name = "vigil-team-pull"
    decision = pro.register_candidate(client, name, team_package, GOOD, GateConfig(), {})
    assert decision.promoted, decision.reasons

    # the artifacts went through the server's proxy into the S3 bucket, not to a local folder
    keys = team_s3.keys("mlartifacts/")
    assert any(key.endswith("/MLmodel") for key in keys), keys[:20]
    assert any(key.endswith("weights.safetensors") for key in keys), keys[:20]
    assert not (tmp_path / "mlartifacts").exists() and not (tmp_path / "mlruns").exists()

    done = vigil_cli(
        "pull", "--model", name, "--alias", "champion", "--dest", str(tmp_path / "deploy"),
        env={"MLFLOW_TRACKING_URI": team_mlflow.url}, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((tmp_path / "deploy" / "manifest.json").read_text())
    assert manifest["version"] == decision.version
    assert manifest["checksum"] == team_package.checksum
    assert (tmp_path / "deploy" / "current").is_symlink()


def test_server_down_gives_one_line_with_the_password_masked(tmp_path):
    url = f"http://team:s3cret@127.0.0.1:{free_port()}"  # nothing listens there
    done = vigil_cli(
        "pull", "--model", "vigil-team-pull", "--dest", str(tmp_path / "deploy"),
        env={"MLFLOW_TRACKING_URI": url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1
    lines = error_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    assert "http://team:***@127.0.0.1:" in lines[0] and "unreachable" in lines[0]
    assert "s3cret" not in done.stderr
    assert not (tmp_path / "deploy").exists()


@pytest.mark.slow
def test_artifact_store_refusing_credentials_moves_nothing(
    team_env, team_mlflow, team_package, tmp_path
):
    """A second tracking server on the same PostgreSQL store whose S3 refuses its keys: the
    candidate cannot be verified, so it gets neither alias and the champion stays put; a pull
    through it fails with one line and leaves the deployed folder untouched."""
    client = mlflow.MlflowClient(team_mlflow.url)
    name = "vigil-team-refused"
    first = pro.register_candidate(client, name, team_package, GOOD, GateConfig(), {})
    assert first.promoted
    deployed = tmp_path / "deploy"
    good = vigil_cli("pull", "--model", name, "--dest", str(deployed),
                     env={"MLFLOW_TRACKING_URI": team_mlflow.url}, cwd=tmp_path)
    assert good.returncode == 0, good.stderr[-3000:]

    with start_s3(tmp_path / "s3-refusing", enforce_auth=True) as refusing:
        with start_mlflow(tmp_path / "mlflow-refusing", team_mlflow.backend_uri, refusing) as bad:
            # this box's whole MLflow client state points at the misconfigured server
            team_env.setenv("MLFLOW_TRACKING_URI", bad.url)
            mlflow.set_tracking_uri(bad.url)
            mlflow.set_registry_uri(bad.url)
            bad_client = mlflow.MlflowClient(bad.url)
            with pytest.raises(pro.PromotionError) as info:
                pro.register_candidate(bad_client, name, team_package, BETTER, GateConfig(), {})
            message = str(info.value)
            assert "\n" not in message and f"{name} version 2" in message, message

            pulled = vigil_cli(
                "pull", "--model", name, "--dest", str(deployed), "--version", "2",
                env={"MLFLOW_TRACKING_URI": bad.url.replace("http://", "http://ops:pw1234@")},
                cwd=tmp_path,
            )  # fmt: skip
            assert pulled.returncode == 1
            lines = error_lines(pulled.stderr)
            assert len(lines) == 1, pulled.stderr
            assert "pw1234" not in pulled.stderr

    champion = client.get_model_version_by_alias(name, "champion")
    assert str(champion.version) == first.version, "the champion moved without a verified package"
    aliases = client.get_model_version(name, "2").aliases
    assert "challenger" not in aliases and "champion" not in aliases
    manifest = json.loads((deployed / "manifest.json").read_text())
    assert manifest["version"] == first.version, "a failed pull replaced the deployed version"


def test_fresh_database_is_dropped_afterwards(postgres_up):
    import psycopg2

    from tests.team_stores import PG_ADMIN

    with fresh_database() as url:
        name = url.rsplit("/", 1)[1]
        conn = psycopg2.connect(url.replace("+psycopg2", ""), connect_timeout=3)
        assert conn.get_dsn_parameters()["dbname"] == name
        conn.close()
    with psycopg2.connect(PG_ADMIN, connect_timeout=3) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        assert cur.fetchone() is None
