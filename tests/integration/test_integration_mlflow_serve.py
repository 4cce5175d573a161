"""MLflow's own server on the registry's champion answers with the same scores as vigil in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import mlflow
import numpy as np
import torch

from tests.conftest import free_port, wait_until_ok
from vigil.config import EvaluateConfig, GateConfig, ImagePrep
from vigil.detector import Detector, DetectorRecord
from vigil.models.conv_ae.config import ConvAEConfig
from vigil.models.spec import build_model, model_spec
from vigil.registry import package as pkg
from vigil.registry import promotion as pro

PREP = ImagePrep(size=(32, 32), channels=3)
POST = EvaluateConfig(median_blur=3)
GOOD = {
    "precision_at_threshold": 0.95,
    "recall_at_threshold": 0.9,
    "recall_at_precision": 0.9,
    "image_auroc": 0.99,
    "false_alarm_rate": 0.0,
    "target_precision": 0.9,
    "threshold": 0.01,
}


def raw_images(n: int) -> list[bytes]:
    """PNG bytes of ``n`` 48x40 BGR images (preprocessing must resize them to 32x32)."""
    rng = np.random.default_rng(0)
    return [pkg.encode_png(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)) for _ in range(n)]


def detector_dir(folder: Path, cfg: ConvAEConfig, threshold: float = 0.01) -> Path:
    """A tiny untrained conv-AE saved as the evaluate stage saves a calibrated detector."""
    spec = model_spec("conv_ae", 3, PREP.size, cfg, prep=PREP)
    torch.manual_seed(0)
    record = DetectorRecord(
        spec=spec, postprocess=POST, threshold=threshold, pixel_threshold=0.01
    )
    return Detector(build_model(spec), record).save(folder)






def test_mlflow_models_serve_champion_gives_in_process_scores(mlflow_store, tmp_path):
    model_dir = detector_dir(tmp_path / "detector", ConvAEConfig(depth=2, filters=4,
                                                                  latent_channels=4))
    with mlflow.start_run() as run:
        logged = pkg.log_package(model_dir, run_id=run.info.run_id)
    client = mlflow.MlflowClient()
    decision = pro.register_candidate(client, "vigil-serve-image", logged, GOOD, GateConfig(), {})
    assert decision.promoted

    images = raw_images(3)
    loaded = mlflow.pyfunc.load_model("models:/vigil-serve-image@champion")
    expected = loaded.predict(pkg.images_frame(images))

    port = free_port()
    # MLflow execs `uvicorn` by name: the venv's bin must be on PATH (as `make` sets it).
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_store,
        "OMP_NUM_THREADS": "1",
        "PATH": f"{mlflow_cli.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    proc = subprocess.Popen(
        [
            str(mlflow_cli),
            "models",
            "serve",
            "-m",
            "models:/vigil-serve-image@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            "1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ok(
            f"{url}/ping", proc,
            lambda: proc.stdout.read().decode(errors="replace") if proc.stdout else "",
        )
        answer = httpx.post(
            f"{url}/invocations",
            json=pkg.invocation_payload(images, return_heatmap=True),
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        rows = answer.json()["predictions"]
        served = np.array([row["score"] for row in rows])
        np.testing.assert_allclose(served, expected["score"].to_numpy(), rtol=1e-12, atol=0)
        assert [row["is_anomaly"] for row in rows] == expected["is_anomaly"].tolist()
        assert all(len(row["heatmap"]) > 100 for row in rows)
        bad = httpx.post(
            f"{url}/invocations", json=pkg.invocation_payload([b"not an image"]), timeout=30
        )
        assert bad.status_code >= 400 and "row 0" in bad.text
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_package_loads_without_vigil_installed(tmp_path):
    """The bundled code/vigil is enough: a python that cannot import vigil scores with it."""
    import site

    folder = detector_dir(tmp_path / "detector", ConvAEConfig(depth=1, filters=2,
                                                              latent_channels=2))
    out = pkg.save_package(tmp_path / "pkg", folder)
    expected = mlflow.pyfunc.load_model(str(out)).predict(pkg.images_frame(raw_images(2)))["score"]
    script = (
        "import importlib.util, sys, json, numpy as np, mlflow\n"
        "assert importlib.util.find_spec('vigil') is None\n"
        "import pandas as pd\n"
        f"m = mlflow.pyfunc.load_model({str(out)!r})\n"
        "import vigil\n"
        "rng = np.random.default_rng(0)\n"
        "import cv2\n"
        "imgs = [cv2.imencode('.png', rng.integers(0, 255, (48, 40, 3), dtype=np.uint8))[1].tobytes() for _ in range(2)]\n"
        "print(json.dumps({'vigil': vigil.__file__, 'scores': m.predict(pd.DataFrame({'image': imgs}))['score'].tolist()}))\n"
    )
    # -S skips site-packages' .pth files, so the editable vigil install is invisible.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(site.getsitepackages())}
    done = subprocess.run(
        [sys.executable, "-S", "-c", script],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["vigil"].startswith(str(out / "code" / "vigil"))
    np.testing.assert_array_equal(np.array(result["scores"]), expected.to_numpy())
