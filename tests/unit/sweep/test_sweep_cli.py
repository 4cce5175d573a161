"""pipelines/sweep.py (and ``vigil sweep``): failures a user can fix end in one stderr line
naming the problem and exit status 2, never a traceback (run in-process)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_sweep_objective import make_images
from test_sweep_study import tiny_params

from tests.conftest import load_pipeline



def _run(tmp_path: Path, capsys, **sweep) -> tuple[int, str]:
    """Run the stage in ``tmp_path`` on the tiny dataset; (exit status, stderr)."""
    make_images(tmp_path / "data" / "prepared" / "tinysweep")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params(tmp_path, **sweep).model_dump(mode="json")))
    code = load_pipeline("sweep").main(["--dataset", "tinysweep", "--params", str(params)])
    return code, capsys.readouterr().err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("sweep: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_unreachable_storage_url(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, err = _run(tmp_path, capsys, storage="postgresql://vigil:secret@127.0.0.1:1/nowhere")
    assert code == 2
    line = _one_error_line(err)
    assert "postgresql://vigil:***@127.0.0.1:1/nowhere" in line and "secret" not in line
    assert not (tmp_path / "models").exists()


def test_unreachable_tracking_store(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    code, err = _run(tmp_path, capsys)
    assert code == 2
    assert "http://127.0.0.1:9" in _one_error_line(err)


def test_no_completed_trial(mlflow_store, tmp_path, capsys):
    """Every trial fails (images too small for the depth): a SweepError, reported."""
    space = tmp_path / "too_deep.yaml"
    space.write_text("conv_ae:\n  depth: {choices: [6]}\n")  # 16x16 images need depth <= 4
    code, err = _run(tmp_path, capsys, n_trials=1, space=str(space))
    assert code == 2
    assert "no completed trial" in _one_error_line(err)


@pytest.mark.parametrize("workers", ["0", "-1"])
def test_bad_worker_count(tmp_path, capsys, workers):
    code = load_pipeline("sweep").main(["--dataset", "tinysweep", "--workers", workers])
    assert code == 2
    assert f"--workers must be >= 1, got {workers}" in _one_error_line(capsys.readouterr().err)
