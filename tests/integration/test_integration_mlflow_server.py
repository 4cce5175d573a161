"""vigil's tracking against a real `mlflow server` URL, unchanged (issue 3, item 5).

Starts `mlflow server` (SQLite backend, proxied artifacts under tmp) on a free port, runs a real
1-epoch ``vigil.training.fit`` on tiny synthetic data with MLFLOW_TRACKING_URI pointing at it,
and checks the run, its params, metrics and image artifacts through the server's REST API.
Also checks that an unreachable server URL fails fast with the URL in the message.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import mlflow
import mlflow.tracking.fluent as fluent
import numpy as np
import pytest

from tests.conftest import free_port, wait_until_ok
from vigil.config import Params, parse_params
from vigil.data.prepared import write_prepared
from vigil.tracking import TrackingError
from vigil.training import fit

MLFLOW = Path(sys.executable).parent / "mlflow"
START_TIMEOUT_S = 60.0






def stop(proc: subprocess.Popen) -> None:
    """Stop the server and the workers it spawned (its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def mlflow_server(
    tmp_path_factory: pytest.TempPathFactory, _mlflow_template: Path
) -> Iterator[tuple[str, Path]]:
    """(URL, artifacts folder) of a running `mlflow server`; stopped after the module."""
    root = tmp_path_factory.mktemp("mlflow-server")
    db = root / "mlflow.db"
    shutil.copy(_mlflow_template, db)  # already migrated: the server starts faster
    artifacts = root / "artifacts"
    port = free_port()
    cmd = [
        str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination", str(artifacts),
    ]  # fmt: skip
    log = root / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ok(f"{url}/health", proc, log.read_text, timeout=START_TIMEOUT_S)
        yield url, artifacts
    finally:
        stop(proc)


@pytest.fixture()
def tracking_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A clean MLflow client state for one test; everything is restored afterwards."""
    for name in (
        "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT",
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
    monkeypatch.chdir(tmp_path)  # anything written to a relative path lands in tmp
    previous = mlflow.get_tracking_uri()
    yield monkeypatch
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(previous)
    mlflow.set_registry_uri(previous)


def tiny_dataset(root: Path, size: int = 32) -> Path:
    """A prepared image dataset: 8 train, 4 val normal blobs; tune/test with dark scratches."""
    rng = np.random.default_rng(0)
    layout = [("train", 0)] * 8 + [("val", 0)] * 4 + [("tune", 0), ("tune", 1), ("test", 1)] * 2
    frames, masks, items = [], [], []
    for index, (split, label) in enumerate(layout):
        image = np.full((size, size, 3), 60, np.uint8)
        center = tuple(int(c) for c in rng.integers(size // 4, 3 * size // 4, 2))
        cv2.circle(image, center, size // 5, (200, 200, 200), -1)
        mask = np.zeros((size, size), np.uint8)
        if label:
            cv2.line(image, (4, 4), (size - 5, size - 9), (0, 0, 0), 2)
            cv2.line(mask, (4, 4), (size - 5, size - 9), 1, 2)
        frames.append(image)
        masks.append(mask)
        items.append({
            "index": index, "origin": f"item{index}.png", "split": split, "label": label,
            "defect": "scratch" if label else "good", "has_mask": bool(label), "sha256": "0" * 64,
        })  # fmt: skip
    frames_a = np.stack(frames)
    manifest = {
        "dataset": "tiny", "modality": "image", "source": "tests/tiny",
        "content_hash": "1" * 64, "items": items,
        "params": {"prep": {"size": [32, 32], "channels": 3}},  # what the frames went through
    }  # fmt: skip
    return write_prepared(root, frames_a, np.stack(masks), manifest)


def tiny_params() -> Params:
    """One epoch of a tiny autoencoder on 32x32 RGB, on the CPU."""
    return parse_params({
        "data": {"datasets": {"tiny": {"source": "tests/tiny", "modality": "image"}}},
        "prepare": {"image": {"size": [32, 32], "channels": 3}},
        "model": {"image_family": "conv_ae",
                  "conv_ae": {"depth": 2, "filters": 8, "latent_channels": 4}},
        "train": {
            "max_epochs": 1, "batch_size": 8, "accelerator": "cpu", "log_images_every_n_epochs": 1,
        },
    })  # fmt: skip


def rest(url: str, endpoint: str, **query) -> dict:
    """GET ``/api/2.0/mlflow/<endpoint>`` from the server, as any other client would."""
    response = httpx.get(f"{url}/api/2.0/mlflow/{endpoint}", params=query, timeout=10)
    assert response.status_code == 200, f"{endpoint}: {response.status_code} {response.text}"
    return response.json()


def test_fit_logs_a_complete_run_to_an_mlflow_server(mlflow_server, tracking_env, tmp_path):
    url, artifacts = mlflow_server
    tracking_env.setenv("MLFLOW_TRACKING_URI", url)
    data = tiny_dataset(tmp_path / "data" / "prepared" / "tiny")
    result = fit(tiny_params(), data, tmp_path / "models" / "tiny", run_name="server-run")
    assert result.epochs == 1 and result.objective > 0

    run = rest(url, "runs/get", run_id=result.run_id)["run"]
    assert run["info"]["status"] == "FINISHED" and run["info"]["run_name"] == "server-run"
    experiment = rest(url, "experiments/get", experiment_id=run["info"]["experiment_id"])
    assert experiment["experiment"]["name"] == "vigil-tiny"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["model.conv_ae.depth"] == "2" and params["data.dataset"] == "tiny"
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    for name in ("train_loss", "val_loss", "encoding_size", "wall_time_s"):
        assert metrics[name] > 0, name
    assert metrics["best_val_loss"] == pytest.approx(result.objective)
    history = rest(url, "metrics/get-history", run_id=result.run_id, metric_key="val_loss")
    assert len(history["metrics"]) == 1
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["vigil.dataset"] == "tiny" and tags["vigil.data_hash"]
    assert run["inputs"]["dataset_inputs"], "the prepared dataset is not logged as an input"

    listed = rest(url, "artifacts/list", run_id=result.run_id, path="images")
    assert [f["path"] for f in listed["files"]] == ["images/epoch_001.png"]
    client = mlflow.MlflowClient(tracking_uri=url)
    png = Path(client.download_artifacts(result.run_id, "images/epoch_001.png", str(tmp_path)))
    assert cv2.imread(str(png)) is not None, "the image artifact does not decode"
    # proxied: the server stored the file in its artifacts folder, not the client in its cwd
    assert list(artifacts.rglob("epoch_001.png"))
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlartifacts").exists()


def test_unreachable_server_url_fails_fast_with_the_url(tracking_env, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    tracking_env.setenv("MLFLOW_TRACKING_URI", url)
    data = tiny_dataset(tmp_path / "data" / "prepared" / "tiny")
    started = time.perf_counter()
    with pytest.raises(TrackingError, match=f"{url}.* is unreachable"):
        fit(tiny_params(), data, tmp_path / "out")
    assert time.perf_counter() - started < 20, "no fast failure: MLflow retried for long"
    assert not (tmp_path / "out").exists()
