"""Where the embedded stores live: the project root (seen through DVC's temporary experiment
copies), the MLflow tracking URI and artifact root, the Optuna storage URL.

URIs and secrets never live in params.yaml: they come from the environment
(``MLFLOW_TRACKING_URI``, ``VIGIL_OPTUNA_STORAGE``). When unset, embedded stores are resolved to
absolute paths in the project root, so ``dvc exp run --temp`` (which runs in
``.dvc/tmp/exps/<random>/``) does not write its tracking database into a folder DVC deletes.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root(start: Path | str | None = None) -> Path:
    """The project root, seen through DVC's temporary experiment copies.

    ``dvc exp run --temp/--queue`` runs stages in ``<root>/.dvc/tmp/exps/<random>/``; embedded
    stores must live in the real root, which outlives that folder.
    """
    here = Path(start or os.getcwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return here


def tracking_uri(root: Path | str | None = None) -> str:
    """MLFLOW_TRACKING_URI if set, else an absolute SQLite store in the project root."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{project_root(root) / 'mlflow.db'}"


def artifact_root(root: Path | str | None = None) -> str:
    """Where the embedded store keeps artifacts: ``mlartifacts/`` beside ``mlflow.db``."""
    return (project_root(root) / "mlartifacts").as_uri()


def optuna_storage(configured: str | None, root: Path | str | None = None) -> str:
    """Storage URL: params value, else VIGIL_OPTUNA_STORAGE, else SQLite in the project root."""
    return (
        configured
        or os.environ.get("VIGIL_OPTUNA_STORAGE")
        or f"sqlite:///{project_root(root) / 'optuna.db'}"
    )
