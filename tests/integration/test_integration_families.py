"""A model family defined outside vigil, and per-dataset settings, through the real pipeline.

A tiny family lives in its own folder (``plugins/tinyfam/``, a package with a ``FAMILY``
record), named in params.yaml as ``tinyfam.family``: with no change to any vigil module it
sweeps, trains, evaluates, is packaged and registered, loads with ``mlflow.pyfunc.load_model``
and is served by ``vigil serve`` over HTTP. It is the model of a second image dataset with its
own image size next to the built-in one; changing only that dataset's overrides makes
``dvc status`` report only that dataset's stages.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import httpx
import numpy as np
import yaml

from tests.conftest import free_port, wait_until_ok
from tests.integration.test_integration_pipeline import VENV_BIN, _run, _write_params, project  # noqa: F401

TINY_FAMILY = '''
"""A tiny image family: one stride-2 conv down, one transposed conv up."""
from pydantic import BaseModel, ConfigDict, Field
from vigil.models.registry import Family


class TinyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    width: int = Field(4, ge=1)


FAMILY = Family(
    name="tinyfam.family", modality="image", config=TinyConfig, searchable=("width",),
    network="tinyfam.network:TinyNet", training="vigil.models.reconstruction:image_plan",
)
'''

TINY_NETWORK = '''
import torch
from torch import nn
from vigil.models.outputs import anomaly_output


class TinyNet(nn.Module):
    def __init__(self, in_channels, cfg, output="sigmoid"):
        super().__init__()
        self.cfg = cfg
        self.down = nn.Conv2d(in_channels, cfg.width, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(cfg.width, in_channels, 4, stride=2, padding=1)

    def encoding_shape(self, height, width):
        return self.cfg.width, (height + 1) // 2, (width + 1) // 2

    def forward(self, x):
        rec = torch.sigmoid(self.up(torch.relu(self.down(x))))[..., : x.shape[-2], : x.shape[-1]]
        return anomaly_output(x, rec)
'''


def _plugin(root: Path) -> Path:
    package = root / "plugins" / "tinyfam"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "family.py").write_text(TINY_FAMILY)
    (package / "network.py").write_text(TINY_NETWORK)
    return root / "plugins"


def _params(root: Path, mini_override: dict) -> None:
    _write_params(root / "params.yaml", sweep={"n_trials": 1}, train={"max_epochs": 3})
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["datasets"]["mini"] = {
        "source": "data/raw/capsules", "modality": "image", **mini_override,
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_plugin_family_and_per_dataset_overrides_through_the_pipeline(project, tmp_path):  # noqa: F811
    import mlflow

    root, env = project
    env = {**env, "PYTHONPATH": str(_plugin(tmp_path))}
    space = root / "configs" / "search_space.yaml"
    space.write_text(space.read_text() + "tinyfam.family:\n  width: {choices: [2, 4]}\n")
    mini = {
        "prepare": {"image": {"size": [32, 32]}},
        "model": {"image_family": "tinyfam.family", "tinyfam.family": {"width": 4}},
        "train": {"max_epochs": 2},
    }
    _params(root, mini)
    dvc = str(VENV_BIN / "dvc")
    _run([dvc, "repro"], root, env)

    for name, family, size in (("capsules", "conv_ae", 64), ("mini", "tinyfam.family", 32)):
        record = json.loads((root / "models" / name / "detector" / "detector.json").read_text())
        assert record["spec"]["family"] == family
        assert record["spec"]["image_size"] == [size, size]
        assert (root / "reports" / name / "decision.json").is_file()

    # the registered plugin-family package: MLflow loads it with its shipped code
    uri = env["MLFLOW_TRACKING_URI"]
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    version = json.loads((root / "reports" / "mini" / "decision.json").read_text())["version"]
    loaded = mlflow.pyfunc.load_model(f"models:/vigil-mini-image/{version}")
    image = np.full((48, 48, 3), 90, np.uint8)
    png = cv2.imencode(".png", image)[1].tobytes()
    table = loaded.predict(__import__("pandas").DataFrame({"image": [png]}))
    score = float(table["score"][0])

    # vigil serve over HTTP answers with the same score; serving refuses a version the gate did
    # not pass unless a person forces it on the record (the tiny model is not gate-worthy)
    _run([str(VENV_BIN / "vigil"), "promote", "--model", "vigil-mini-image", "--force",
          str(version), "--reason", "plugin family test"], root, env)
    port = free_port()
    server = subprocess.Popen(
        [str(VENV_BIN / "vigil"), "serve", "--model-uri", f"models:/vigil-mini-image/{version}",
         "--port", str(port), "--no-follow"],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_until_ok(f"http://127.0.0.1:{port}/ready", server, lambda: server.stdout.read())
        answer = httpx.post(f"http://127.0.0.1:{port}/score", content=png,
                            headers={"content-type": "image/png"}, timeout=30).json()
        assert abs(answer["score"] - score) <= 1e-6, answer
    finally:
        server.terminate()
        server.wait(30)

    # change only mini's override: only mini's stages are out of date
    _params(root, {**mini, "evaluate": {"median_blur": 5}})
    status = json.loads(_run([dvc, "status", "--json"], root, env))
    assert status, "the override change must make some stage stale"
    assert all(stage.endswith("@mini") for stage in status), sorted(status)
