"""Real team stores on 127.0.0.1 for the team-mode tests (issue 14).

- ``start_s3``: moto's standalone S3-compatible server (``moto_server``) on a free port, with one
  bucket. ``enforce_auth=True`` starts it with IAM checks on (``INITIAL_NO_AUTH_ACTION_COUNT=0``),
  so any access key it does not know is refused: a store that refuses credentials.
- ``fresh_database``: a new PostgreSQL database ``vigil_mlflow_<random>`` on the server at
  127.0.0.1:5432 (trust auth), dropped afterwards.
- ``start_mlflow``: ``mlflow server`` with that database as backend store and
  ``--artifacts-destination s3://<bucket>/mlartifacts`` (``MLFLOW_S3_ENDPOINT_URL`` pointing at
  the S3 server), registry webhooks allowed to reach 127.0.0.1 over plain HTTP.

Every start waits on a readiness condition (an HTTP answer), never on a guessed sleep, and every
process runs in its own process group so a stop ends its workers too.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import free_port, wait_until_ok

BIN = Path(sys.executable).parent
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
PG_HOST = "postgres@127.0.0.1:5432"
ACCESS_KEY = "vigil-test-key"
SECRET_KEY = "vigil-test-secret"
BUCKET = "vigil-team"


@dataclass(frozen=True)
class S3Store:
    """A running S3-compatible server and the credentials it accepts."""

    endpoint: str
    bucket: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY

    def env(self) -> dict[str, str]:
        """What a client (boto3, DVC, the MLflow server) needs in its environment."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def client(self):
        """A boto3 S3 client for checking what landed in the store."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` in the bucket."""
        pages = self.client().get_paginator("list_objects_v2")
        return [
            item["Key"]
            for page in pages.paginate(Bucket=self.bucket, Prefix=prefix)
            for item in page.get("Contents", [])
        ]


@dataclass(frozen=True)
class MlflowServer:
    url: str
    backend_uri: str
    artifacts: str
    log: Path


def stop(proc: subprocess.Popen) -> None:
    """Stop a server started here and the workers it spawned (its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _popen(cmd: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


@contextmanager
def start_s3(root: Path, *, enforce_auth: bool = False) -> Iterator[S3Store]:
    """moto's S3 server on a free port with bucket ``BUCKET`` (when auth is not enforced)."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ}
    if enforce_auth:  # IAM checks from the first request: unknown keys get InvalidAccessKeyId
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    log = root / f"moto-{port}.log"
    proc = _popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], log, env, root)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until_ok(f"{endpoint}/moto-api/data.json", proc, log.read_text, timeout=90)
        store = S3Store(endpoint, BUCKET)
        if not enforce_auth:
            store.client().create_bucket(Bucket=BUCKET)
        yield store
    finally:
        stop(proc)


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new, empty PostgreSQL database; yields its SQLAlchemy URL (psycopg2 driver)."""
    import psycopg2

    name = f"vigil_mlflow_{secrets.token_hex(4)}"
    admin = psycopg2.connect(PG_ADMIN, connect_timeout=5)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+psycopg2://{PG_HOST}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextmanager
def start_mlflow(
    root: Path, backend_uri: str, s3: S3Store, *, timeout: float = 180.0
) -> Iterator[MlflowServer]:
    """``mlflow server`` on PostgreSQL with proxied artifacts in ``s3://<bucket>/mlartifacts``."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    artifacts = f"s3://{s3.bucket}/mlartifacts"
    env = {
        **os.environ,
        **s3.env(),
        # registry webhooks to the served app on 127.0.0.1 over plain HTTP (tests only)
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_WEBHOOK_CACHE_TTL": "1",  # a webhook created mid-session is seen at once
        "MLFLOW_WEBHOOK_REQUEST_MAX_RETRIES": "0",
    }
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(name, None)
    cmd = [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--backend-store-uri", backend_uri,
        "--artifacts-destination", artifacts,
    ]  # fmt: skip
    log = root / f"mlflow-{port}.log"
    proc = _popen(cmd, log, env, root)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ok(f"{url}/health", proc, log.read_text, timeout=timeout)
        yield MlflowServer(url, backend_uri, artifacts, log)
    finally:
        stop(proc)


def wait_for(condition, timeout: float, what: str, poll_s: float = 0.05) -> float:
    """Poll ``condition()`` until truthy; returns the seconds it took, fails naming ``what``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(poll_s)
    raise AssertionError(f"{what}: not within {timeout} s")


def get_json(url: str, **kwargs) -> dict:
    response = httpx.get(url, timeout=10, **kwargs)
    response.raise_for_status()
    return response.json()


# --- a tiny vigil package, logged and registered with the real registry code ---------------------

GOOD = {
    "precision_at_threshold": 0.95,
    "recall_at_threshold": 0.9,
    "recall_at_precision": 0.9,
    "image_auroc": 0.95,
    "false_alarm_rate": 0.0,
    "test_split_hash": "team-test-split",
}
BETTER = {**GOOD, "image_auroc": 0.99, "recall_at_precision": 0.95}


def tiny_detector(root: Path, seed: int = 0, threshold: float = 0.05) -> Path:
    """An untrained 32x32 RGB conv autoencoder saved as a detector folder (what evaluate writes)."""
    import torch

    from vigil.config import EvaluateConfig, ImagePrep
    from vigil.detector import Detector, DetectorRecord
    from vigil.models.conv_ae.config import ConvAEConfig
    from vigil.models.spec import build_model, model_spec

    prep = ImagePrep(size=(32, 32), channels=3)
    cfg = ConvAEConfig(depth=2, filters=4, latent_channels=4)
    spec = model_spec("conv_ae", 3, prep.size, cfg, prep=prep)
    torch.manual_seed(seed)
    record = DetectorRecord(
        spec=spec, postprocess=EvaluateConfig(median_blur=3), threshold=threshold,
        pixel_threshold=threshold,
    )  # fmt: skip
    return Detector(build_model(spec), record).save(root / f"detector-{seed}")


def log_tiny_package(tracking_uri: str, root: Path, experiment: str = "vigil-team"):
    """Log a tiny detector's package to the store at ``tracking_uri``; the LoggedPackage."""
    import mlflow

    from vigil.registry.package import log_package

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        return log_package(tiny_detector(root), run_id=run.info.run_id)


def png_images(n: int, seed: int = 0) -> list[bytes]:
    """``n`` PNG-encoded 48x40 BGR images (serving resizes them to the model's 32x32)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    return [
        cv2.imencode(".png", rng.integers(0, 255, (48, 40, 3), dtype=np.uint8))[1].tobytes()
        for _ in range(n)
    ]
