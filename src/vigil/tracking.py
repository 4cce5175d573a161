"""MLflow connection: one place that resolves the tracking URI and the experiment.

The URI comes from MLFLOW_TRACKING_URI; without it, an absolute SQLite store in the project root
with artifacts in ``mlartifacts/`` beside it (see ``vigil.locations.tracking_uri``). A server URL
works unchanged. An unreachable server fails fast with the URL in the message instead of
retrying for minutes.

Experiments are created with an absolute artifact location whenever the store is not a server
(``experiment_artifact_location``): MLflow's default for a database store is a relative
``./mlruns`` resolved against the working directory, which under ``dvc exp run --temp/--queue``
is ``.dvc/tmp/exps/<random>/`` and is deleted with it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from vigil.locations import artifact_root, project_root, tracking_uri
from vigil import names

#: URI schemes of tracking servers, which choose artifact locations themselves.
SERVER_SCHEMES = ("http://", "https://", "databricks")
ARTIFACT_DIR = "mlartifacts"
#: The MLflow 3 UI opens an experiment by its kind: untagged ones open on the GenAI "Traces"
#: page; ``custom_model_development`` opens on the training runs.
EXPERIMENT_KIND_TAG = names.EXPERIMENT_KIND
EXPERIMENT_KIND = "custom_model_development"


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or used; the message names the URI."""


def connect(uri: str | None = None) -> MlflowClient:
    """Point mlflow at ``uri`` (default: ``vigil.locations.tracking_uri()``) and check it answers."""
    uri = uri or tracking_uri()
    if uri.startswith(("http://", "https://")):
        # Fail in seconds, not after MLflow's default minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as error:  # noqa: BLE001 - any failure here means "cannot use this store"
        raise TrackingError(f"MLflow tracking store {uri} is unreachable: {error}") from error
    return client


def require_store(uri: str | None = None) -> str:
    """The tracking URI for a command that reads an existing registry (``pull``, ``serve``,
    ``watch``, ``promote``); TrackingError, before anything connects, when it would create an
    empty SQLite store instead: MLFLOW_TRACKING_URI unset outside a project, or naming a file
    that does not exist (MLflow would silently create it)."""
    uri = uri or tracking_uri()
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
        if str(path) != ":memory:" and not path.is_file():
            where = "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else (
                "no MLFLOW_TRACKING_URI set, and the project default"
            )
            raise TrackingError(
                f"no MLflow tracking store: {where} {uri} does not exist; set "
                "MLFLOW_TRACKING_URI to the registry (e.g. http://mlflow:5000, or "
                "sqlite:////path/to/project/mlflow.db) or run from the project folder"
            )
    return uri


def model_not_found(client: MlflowClient, name: str) -> str | None:
    """None when ``name`` is a registered model of ``client``'s store; else one sentence naming
    the store and the models it does hold."""
    from vigil.redact import redact

    try:
        client.get_registered_model(name)
        return None
    except Exception:  # noqa: BLE001 - not found (or unreadable): say what is there
        pass
    try:
        names = sorted(m.name for m in client.search_registered_models(max_results=100))
    except Exception:  # noqa: BLE001 - the listing is a courtesy
        names = []
    listed = ", ".join(names) if names else "none"
    return (
        f"no registered model {name!r} in {redact(client.tracking_uri)} "
        f"(registered models: {listed})"
    )


def experiment_artifact_location(uri: str) -> str | None:
    """Absolute artifact location (a ``file://`` URI) for new experiments of store ``uri``.

    - server (``http(s)://``, ``databricks``): None, the server decides;
    - ``sqlite:///<path>``: ``mlartifacts/`` beside the database file (a relative path is taken
      from the project root, seen through DVC's temporary experiment folders);
    - any other database or store (``postgresql://``, ``mysql://``, ``file:``...): the project
      root's ``mlartifacts/`` (``vigil.locations.artifact_root``).
    """
    if uri.startswith(SERVER_SCHEMES):
        return None
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        db = uri[len(prefix) :].split("?", 1)[0]
        if db and db != ":memory:":
            path = Path(db)
            if not path.is_absolute():
                path = project_root() / path
            return (path.resolve().parent / ARTIFACT_DIR).as_uri()
    return artifact_root()


def ensure_experiment(name: str, uri: str | None = None) -> str:
    """The id of experiment ``name``; created with an absolute artifact location unless the
    store is a server (see ``experiment_artifact_location``), and tagged as a model-training
    experiment (``EXPERIMENT_KIND``), also when an older vigil created it untagged."""
    uri = uri or tracking_uri()
    client = connect(uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.tags.get(EXPERIMENT_KIND_TAG) is None:
            client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return found.experiment_id
    return client.create_experiment(
        name,
        artifact_location=experiment_artifact_location(uri),
        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
    )


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}``: stable dotted names for MLflow."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def iter_chunks(items: dict[str, Any], size: int = 100) -> Iterator[dict[str, Any]]:
    """MLflow caps params per log_params call; send them in chunks."""
    keys = list(items)
    for start in range(0, len(keys), size):
        yield {k: items[k] for k in keys[start : start + size]}
