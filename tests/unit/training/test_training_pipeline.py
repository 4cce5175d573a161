"""pipelines/train.py: best-config override, outputs, exit codes (run in-process, real store)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import tiny_params

from tests.conftest import load_pipeline



def _write_params(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params().model_dump(mode="json")))
    return path


def test_train_stage_uses_best_config_and_writes_its_outputs(mlflow_store, image_dataset, tmp_path):
    train = load_pipeline("train")
    params = _write_params(tmp_path)
    out = tmp_path / "models" / "tiny"
    out.mkdir(parents=True)
    best = {"model": {"depth": 1, "filters": 4, "latent_channels": 3}, "objective": 1.5}
    (out / "best_config.json").write_text(json.dumps(best))
    code = train.main(["--dataset", "tiny", "--params", str(params), "--out", str(out),
                       "--data", str(image_dataset)])
    assert code == 0
    summary = json.loads((out / "train.json").read_text())
    assert summary["model_from"] == "best_config" and summary["epochs"] == 1
    assert summary["objective"] > 0 and len(summary["run_id"]) == 32
    spec = json.loads((out / "model.json").read_text())
    assert spec["model"]["depth"] == 1 and spec["model"]["latent_channels"] == 3
    assert (out / "weights.safetensors").is_file()


def test_train_stage_reports_bad_inputs_with_exit_code_2(mlflow_store, tmp_path, capsys):
    train = load_pipeline("train")
    params = _write_params(tmp_path)
    code = train.main(["--dataset", "tiny", "--params", str(params),
                       "--data", str(tmp_path / "nowhere")])
    assert code == 2
    assert "nowhere" in capsys.readouterr().err
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    (tmp_path / "models" / "tiny" / "best_config.json").write_text('{"model": {"depht": 2}}')
    code = train.main(["--dataset", "tiny", "--params", str(params)])
    assert code == 2
    assert "depht" in capsys.readouterr().err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("train: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_train_stage_reports_an_unreachable_tracking_store(
    image_dataset, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    code = load_pipeline("train").main(["--dataset", "tiny", "--params", str(_write_params(tmp_path)),
                                  "--out", str(tmp_path / "out"), "--data", str(image_dataset)])
    assert code == 2
    assert "http://127.0.0.1:9" in _one_error_line(capsys.readouterr().err)


def test_train_stage_reports_a_lightning_misconfiguration(
    mlflow_store, image_dataset, tmp_path, capsys
):
    """train.accelerator: gpu on a machine without one is Lightning's MisconfigurationException."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: accelerator=gpu is not a misconfiguration here")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params(accelerator="gpu").model_dump(mode="json")))
    code = load_pipeline("train").main(["--dataset", "tiny", "--params", str(params),
                                  "--out", str(tmp_path / "out"), "--data", str(image_dataset)])
    assert code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(params) in line and "Lightning" in line
