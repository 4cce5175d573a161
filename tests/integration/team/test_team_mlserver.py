"""The standard model server: MLServer's MLflow runtime serves the registered vigil package over
the V2 inference protocol and answers with vigil's own scores (issue 14, item 5).

MLServer cannot share vigil's environment (mlserver 1.7.1 requires fastapi<0.116; vigil runs
0.165), so it runs from a venv of its own, as KServe runs it in its own container. Create it once
(a few minutes) and point ``VIGIL_MLSERVER_VENV`` at it; without it this test is skipped:

    python3 -m venv .venv-mlserver
    .venv-mlserver/bin/pip install torch==2.13.0
    .venv-mlserver/bin/pip install mlserver==1.7.1 mlserver-mlflow==1.7.1 'mlflow==3.17.*' \
        opencv-python-headless safetensors pyyaml
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest

from tests.conftest import REPO_ROOT, free_port, wait_until_ok
from tests.team_stores import GOOD, png_images, stop
from vigil.config import GateConfig
from vigil.registry import package as pkg
from vigil.registry import promotion as pro

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def mlserver_venv() -> Path:
    venv = Path(os.environ.get("VIGIL_MLSERVER_VENV", REPO_ROOT / ".venv-mlserver"))
    if not (venv / "bin" / "mlserver").is_file():
        pytest.skip(f"no MLServer venv at {venv} (see this module's docstring)")
    return venv


def test_mlserver_v2_answers_with_vigil_scores(team_env, team_mlflow, team_package, tmp_path):
    venv = mlserver_venv()
    client = mlflow.MlflowClient(team_mlflow.url)
    name = "vigil-team-mlserver"
    decision = pro.register_candidate(client, name, team_package, GOOD, GateConfig(), {})
    assert decision.promoted
    # the model repository KServe's storage initializer would lay out from storageUri
    repo = tmp_path / "models"
    model_dir = repo / "vigil"
    mlflow.artifacts.download_artifacts(f"models:/{name}@champion", dst_path=str(model_dir / "m"))
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": "vigil", "implementation": "mlserver_mlflow.MLflowRuntime",
        "parameters": {"uri": "./m"},
    }))  # fmt: skip
    port = free_port()
    (repo / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(),
        "metrics_port": free_port(), "parallel_workers": 0,
    }))  # fmt: skip
    images = png_images(3)
    expected = mlflow.pyfunc.load_model(str(model_dir / "m")).predict(pkg.images_frame(images))

    log = tmp_path / "mlserver.log"
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen([str(venv / "bin" / "mlserver"), "start", str(repo)], cwd=repo,
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ok(f"{url}/v2/models/vigil/ready", proc, log.read_text, timeout=300)
        body = {"inputs": [{
            "name": "image", "datatype": "BYTES", "shape": [len(images), 1],
            "parameters": {"content_type": "base64"},
            "data": [base64.b64encode(image).decode("ascii") for image in images],
        }]}  # fmt: skip
        answer = httpx.post(f"{url}/v2/models/vigil/infer", json=body, timeout=120)
        assert answer.status_code == 200, answer.text
        outputs = {item["name"]: item["data"] for item in answer.json()["outputs"]}
        np.testing.assert_allclose(outputs["score"], expected["score"].to_numpy(), rtol=1e-9)
        assert outputs["is_anomaly"] == expected["is_anomaly"].tolist()
    finally:
        stop(proc)
