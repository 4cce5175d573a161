"""Artifact locations of new experiments: absolute for every store that is not a server, so
``dvc exp run --temp`` (which runs in ``.dvc/tmp/exps/<random>/``) cannot delete them."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest

from vigil.locations import artifact_root
from vigil.tracking import ensure_experiment, experiment_artifact_location


def _path(uri: str) -> Path:
    assert uri.startswith("file://"), uri
    return Path(urlparse(uri).path)


@pytest.mark.parametrize("uri", ["http://mlflow:5000", "https://mlflow.example", "databricks"])
def test_servers_choose_their_own_artifact_location(uri):
    assert experiment_artifact_location(uri) is None


def test_sqlite_store_keeps_artifacts_beside_the_database(tmp_path):
    location = experiment_artifact_location(f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}")
    assert _path(location) == tmp_path / "db" / "mlartifacts"


def test_relative_sqlite_and_other_databases_resolve_from_the_project_root(tmp_path, monkeypatch):
    temp_exp = tmp_path / ".dvc" / "tmp" / "exps" / "abc123"
    temp_exp.mkdir(parents=True)
    monkeypatch.chdir(temp_exp)  # as a `dvc exp run --temp` stage sees it
    assert _path(experiment_artifact_location("sqlite:///mlflow.db")) == tmp_path / "mlartifacts"
    pg = experiment_artifact_location("postgresql://u:p@db/mlflow")
    assert pg == artifact_root() and _path(pg) == tmp_path / "mlartifacts"


def test_experiment_under_a_sqlite_uri_gets_an_absolute_location(mlflow_store, tmp_path,
                                                                  monkeypatch):
    """MLFLOW_TRACKING_URI=sqlite:///... set: the experiment's artifacts are not a relative
    ./mlruns in the (temporary) working directory."""
    import mlflow

    temp_exp = tmp_path / ".dvc" / "tmp" / "exps" / "abc123"
    temp_exp.mkdir(parents=True)
    monkeypatch.chdir(temp_exp)
    experiment_id = ensure_experiment("vigil-tracking-test")
    location = mlflow.MlflowClient().get_experiment(experiment_id).artifact_location
    assert _path(location) == tmp_path / "mlartifacts"  # beside tmp_path/mlflow.db
    assert ensure_experiment("vigil-tracking-test") == experiment_id  # found, not recreated


def test_experiments_are_tagged_so_the_mlflow_ui_opens_on_training_runs(mlflow_store):
    """MLflow 3 opens an experiment without ``mlflow.experimentKind`` on its GenAI "Traces"
    page: vigil's experiments say they hold model training, also ones an older vigil made."""
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_store)
    new = ensure_experiment("vigil-kind-new")
    old = client.create_experiment("vigil-kind-old")  # as created before this tag existed
    assert ensure_experiment("vigil-kind-old") == old
    for experiment_id in (new, old):
        tags = client.get_experiment(experiment_id).tags
        assert tags["mlflow.experimentKind"] == "custom_model_development"
