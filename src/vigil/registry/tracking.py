"""MLflow connection: one place that resolves the tracking URI and the experiment.

The URI comes from MLFLOW_TRACKING_URI; without it, an absolute SQLite store in the project root
with artifacts in ``mlartifacts/`` beside it (see ``vigil.config.tracking_uri``). A server URL
works unchanged. An unreachable server fails fast with the URL in the message instead of
retrying for minutes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from vigil.config import artifact_root, tracking_uri


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or used; the message names the URI."""


def connect(uri: str | None = None) -> MlflowClient:
    """Point mlflow at ``uri`` (default: ``vigil.config.tracking_uri()``) and check it answers."""
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


def ensure_experiment(name: str, uri: str | None = None) -> str:
    """The id of experiment ``name``, created with an absolute artifact root when embedded."""
    client = connect(uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    embedded = not os.environ.get("MLFLOW_TRACKING_URI") and uri is None
    location = artifact_root() if embedded else None
    return client.create_experiment(name, artifact_location=location)


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
