"""Optuna storages for the sweep: ``open_storage(url)`` fails fast and names the URL.

``journal:<path>`` selects a JournalStorage file (a shared folder, several workers without a
server); ``sqlite:///`` and ``postgresql://`` an RDB storage with a heartbeat, so a killed
worker's RUNNING trial is marked FAIL by the next worker and the study goes on.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

HEARTBEAT_S = 10
GRACE_S = 30


class StorageError(RuntimeError):
    """The Optuna storage URL cannot be reached or opened; the message names the URL."""


def redact(url: str) -> str:
    """The URL without a password (``user:***@host``)."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url
    return url


def _driver_url(url: str) -> str:
    """``postgresql://`` with the installed driver: SQLAlchemy 2.1 defaults to psycopg 3, the
    environment ships psycopg2."""
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def open_storage(
    url: str, heartbeat_s: int = HEARTBEAT_S, grace_s: int = GRACE_S
) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url`` with a heartbeat (RDB) or a journal file; fails fast."""
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("postgresql"):
        engine_kwargs = {"connect_args": {"connect_timeout": 5}, "pool_pre_ping": True}
    elif url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                _driver_url(url),
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_s,
                grace_period=grace_s,
            )
    except Exception as error:  # noqa: BLE001 - any failure here means "cannot use this storage"
        raise StorageError(
            f"Optuna storage {redact(url)} cannot be reached or opened: "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''} "
            "(set sweep.storage or VIGIL_OPTUNA_STORAGE)"
        ) from None

