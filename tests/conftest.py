"""Shared fixtures: hermetic MLflow stores and the paths of the real shared data."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

import vigil  # noqa: F401  (first: OpenMP defaults before torch loads, see vigil.threads)

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite store per session; creating one costs ~1.5 s, copying it ~1 ms."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture()
def mlflow_store(_mlflow_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh tracking + registry store under tmp_path; MLFLOW_TRACKING_URI points at it."""
    import mlflow

    db = tmp_path / "mlflow.db"
    shutil.copy(_mlflow_template, db)
    # The template's Default experiment (id 0) keeps the artifact root of the folder it was
    # created in; point it under this test's tmp_path so nothing lands in the repo.
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
            ((tmp_path / "mlruns" / "0").as_uri(),),
        )
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # default artifact roots are relative to the working dir
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    _forget_active_experiment()
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    _forget_active_experiment()


def _forget_active_experiment() -> None:
    """mlflow.set_experiment caches the experiment id per process, and also exports it as
    MLFLOW_EXPERIMENT_ID for subprocesses; another store lacks that id, so forget both."""
    import mlflow.tracking.fluent as fluent

    fluent._active_experiment_id = None
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    os.environ.pop("MLFLOW_EXPERIMENT_NAME", None)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tests run side by side on 2 cores: keep torch from oversubscribing them."""
    import torch

    torch.set_num_threads(1)
    yield


def shared_dataset(name: str) -> Path:
    """Path of a real dataset in ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real dataset {path} is absent (it lives beside the repo, never in it)")
    return path


def load_pipeline(name: str) -> ModuleType:
    """``pipelines/<name>.py`` as a fresh module: the stage entries are scripts, not a package."""
    spec = importlib.util.spec_from_file_location(f"pipeline_{name}", REPO_ROOT / "pipelines" /
                                                  f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ok(
    url: str,
    process: subprocess.Popen,
    output: Callable[[], str] = lambda: "",
    timeout: float = 120.0,
) -> None:
    """Poll ``url`` until it answers 200; fail with ``output()`` (the server's log) if
    ``process`` exits first or the time runs out."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{output()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"{url} not OK after {timeout} s:\n{output()[-3000:]}")


def bomb_png(width: int, height: int) -> bytes:
    """A valid-looking gray PNG whose header claims ``width`` x ``height`` but which holds one
    row of pixel data: a few hundred bytes that would cost width x height bytes to decode."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    row = zlib.compress(b"\x00" * (width + 1), 9)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", row) + chunk(b"IEND", b"")
    )
