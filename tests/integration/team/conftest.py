"""Team stores for the tests of this folder: S3 (moto), PostgreSQL and an MLflow server on both.

One S3 server and one MLflow server per test session (they take ~10-20 s to start); each test
that writes to the registry uses its own model name. The package is logged once per session
through the server (``team_package``) and registered by each test as it needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import mlflow.tracking.fluent as fluent
import pytest

from tests.team_stores import (
    PG_ADMIN,
    MlflowServer,
    S3Store,
    fresh_database,
    log_tiny_package,
    start_mlflow,
    start_s3,
)


@pytest.fixture(scope="session")
def postgres_up() -> None:
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        psycopg2.connect(PG_ADMIN, connect_timeout=3).close()
    except psycopg2.OperationalError as error:
        pytest.skip(f"PostgreSQL at {PG_ADMIN} is down: {str(error).strip()}")


@pytest.fixture(scope="session")
def team_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Store]:
    with start_s3(tmp_path_factory.mktemp("s3")) as store:
        yield store


@pytest.fixture(scope="session")
def team_mlflow(
    postgres_up, team_s3: S3Store, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MlflowServer]:
    with fresh_database() as backend:
        with start_mlflow(tmp_path_factory.mktemp("mlflow-server"), backend, team_s3) as server:
            yield server


@pytest.fixture(scope="session")
def team_package(team_mlflow: MlflowServer, tmp_path_factory: pytest.TempPathFactory):
    """One tiny vigil package logged through the server (its files land in S3)."""
    previous = mlflow.get_tracking_uri()
    try:
        yield log_tiny_package(team_mlflow.url, tmp_path_factory.mktemp("package"))
    finally:
        mlflow.set_tracking_uri(previous)
        mlflow.set_registry_uri(previous)


@pytest.fixture()
def team_env(team_mlflow: MlflowServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """MLFLOW_TRACKING_URI -> the team server for one test, in tmp_path; restored afterwards."""
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_mlflow.url)
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
    monkeypatch.chdir(tmp_path)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(team_mlflow.url)
    mlflow.set_registry_uri(team_mlflow.url)
    yield monkeypatch
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(previous)
    mlflow.set_registry_uri(previous)
