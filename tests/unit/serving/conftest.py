"""Serving fixtures: tiny real model packages in a real MLflow registry, and a live HTTP server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import free_port
from vigil.config import EvaluateConfig, ImagePrep, VideoPrep

IMAGE_PREP = ImagePrep(size=(32, 32), channels=3)
VIDEO_PREP = VideoPrep(size=(32, 32), channels=1, fps=15)
POSTPROCESS = EvaluateConfig(median_blur=3, smoothing_window=3)


@dataclass(frozen=True)
class TinyModel:
    model_dir: Path  # a calibrated detector folder (detector.json + weights.safetensors)
    prep: ImagePrep
    modality: str


def make_model_dir(
    root: Path, modality: str = "image", *, seed: int = 0, threshold: float = 0.05
) -> TinyModel:
    """An untrained tiny network saved as the evaluate stage saves a calibrated detector."""
    from vigil.detector import Detector, DetectorRecord
    from vigil.models.conv_ae.config import ConvAEConfig
    from vigil.models.convlstm.config import ConvLSTMConfig
    from vigil.models.spec import build_model, model_spec

    prep = IMAGE_PREP if modality == "image" else VIDEO_PREP
    family, cfg = (
        ("conv_ae", ConvAEConfig(depth=2, filters=4, latent_channels=4))
        if modality == "image"
        else ("convlstm", ConvLSTMConfig(encoder_depth=2, filters=4, hidden_channels=4))
    )
    spec = model_spec(family, prep.channels, prep.size, cfg, prep=prep)
    torch.manual_seed(seed)
    record = DetectorRecord(
        spec=spec,
        postprocess=POSTPROCESS,
        threshold=threshold,
        pixel_threshold=threshold,
        dataset="tiny",
    )
    model_dir = root / f"{modality}-{seed}"
    Detector(build_model(spec), record).save(model_dir)
    return TinyModel(model_dir, prep, modality)


def register(name: str, tiny: TinyModel, alias: str | None = "champion") -> str:
    """Log the package to MLflow, register it with its checksum tag; returns the version."""
    import mlflow

    from vigil.registry.integrity import BASIS_TAG, CHECKSUM_TAG
    from vigil.registry.package import log_package

    experiment = _experiment()
    mlflow.set_experiment(experiment_id=experiment)  # logged models follow it, not the run
    with mlflow.start_run(experiment_id=experiment) as run:
        logged = log_package(tiny.model_dir, run_id=run.info.run_id)
        mlflow.log_metric("test_image_auroc", 0.5)
    client = mlflow.MlflowClient()
    version = mlflow.register_model(logged.model_uri, name).version
    client.set_model_version_tag(name, version, CHECKSUM_TAG, logged.checksum)
    client.set_model_version_tag(name, version, BASIS_TAG, "gate")  # may serve
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return str(version)


def _experiment() -> str:
    """An experiment whose artifacts live under the test's tmp_path (the working directory)."""
    import mlflow

    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name("serving-tests")
    if found is not None:
        return found.experiment_id
    return client.create_experiment(
        "serving-tests", artifact_location=(Path.cwd() / "artifacts").as_uri()
    )


def png(image: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", image)
    assert ok
    return buffer.tobytes()


def sample_images(n: int, size: int = 48, seed: int = 0) -> list[np.ndarray]:
    """``n`` BGR uint8 (size, size, 3) images with a bright square at random places."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        x, y = rng.integers(0, size - 12, 2)
        image[y : y + 12, x : x + 12] = 230
        images.append(image)
    return images


class LiveServer:
    """A FastAPI app served by uvicorn on 127.0.0.1 in a thread: real sockets, real HTTP."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture()
def live_server():
    """``live_server(app)`` -> a started LiveServer, stopped after the test."""
    servers: list[LiveServer] = []

    def start(app) -> LiveServer:
        server = LiveServer(app).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


@pytest.fixture()
def image_registry(mlflow_store: str, tmp_path: Path) -> Iterator[tuple[str, TinyModel]]:
    """A registry with ``tiny-image`` version 1 as champion."""
    tiny = make_model_dir(tmp_path / "train", "image")
    register("tiny-image", tiny)
    yield "tiny-image", tiny


def staged_package(root: Path, tiny: TinyModel) -> Path:
    """The package's artifact folder (detector.json + weights), no MLflow involved."""
    from vigil.registry.package import stage_artifacts

    return stage_artifacts(tiny.model_dir, root / f"package-{tiny.model_dir.name}")


@pytest.fixture()
def image_scorer(tmp_path: Path):
    from vigil.serving.loader import load_scorer

    return load_scorer(staged_package(tmp_path, make_model_dir(tmp_path / "train", "image")))


@pytest.fixture()
def video_scorer(tmp_path: Path):
    from vigil.serving.loader import load_scorer

    return load_scorer(staged_package(tmp_path, make_model_dir(tmp_path / "train", "video")))
