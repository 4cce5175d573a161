"""Serving wired end to end: a trained tiny predictor flags injected anomalies in a generated
`print` video through `vigil watch`; the Docker entrypoint command serves the registry's champion
outside Docker; `vigil pull` + `vigil serve` from the registry alone; `mlflow models serve`
answers with the same scores."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import torch

from tests.conftest import free_port, wait_until_ok
from vigil.config import EvaluateConfig, ImagePrep, PrintGen, VideoPrep
from vigil.models.conv_ae.config import ConvAEConfig
from vigil.models.convlstm.config import ConvLSTMConfig

REPO = Path(__file__).resolve().parents[2]
SERVING_MAIN = "import sys; from vigil.cli import main; sys.exit(main())"
POSTPROCESS = EvaluateConfig(median_blur=3, smoothing_window=3, score="topk_mean")




def _train_predictor(clips: np.ndarray, prep: VideoPrep, steps: int) -> torch.nn.Module:
    """A tiny FramePredictor trained on normal clips uint8 (K, T, h, w, C) for ``steps`` steps."""
    from vigil.data.preprocess import to_tensor
    from vigil.models.spec import build_model, model_spec

    cfg = ConvLSTMConfig(encoder_depth=2, filters=8, hidden_channels=8)
    spec = model_spec("convlstm", prep.channels, prep.size, cfg, prep=prep)
    torch.manual_seed(0)
    model = build_model(spec).train()
    k, t = clips.shape[:2]
    data = to_tensor(clips.reshape(k * t, *clips.shape[2:]), prep).reshape(
        k, t, prep.channels, *prep.size
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        batch = data[rng.integers(0, k, 8)]
        loss = model(batch).score.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.spec = spec
    return model.eval()


def _preprocess(frames_bgr: np.ndarray, prep: VideoPrep) -> np.ndarray:
    from vigil.data.preprocess import preprocess_frame

    return np.stack([preprocess_frame(f, prep) for f in frames_bgr])


def test_watch_flags_the_injected_anomalies_of_a_print_video(tmp_path, capsys):
    from vigil.data.synthetic.melt_pool import render_clip, write_video
    from vigil.detector import Detector, DetectorRecord
    from vigil.registry.package import stage_artifacts
    from vigil.cli import main

    gen = PrintGen(frame_size=48, fps=15, frames_per_video=64)
    prep = VideoPrep(size=(32, 32), channels=1, fps=15, clip_len=8)
    normal = [render_clip(1, "training", i, gen)[0] for i in range(4)]
    clips = np.stack(
        [c for video in normal[:3] for c in _preprocess(video, prep).reshape(8, 8, 32, 32, 1)]
    )
    model = _train_predictor(clips, prep, steps=60)
    detector = Detector(model, DetectorRecord(spec=model.spec, postprocess=POSTPROCESS))
    held_out = detector.score_clips([_preprocess(normal[3], prep)])[0].scores
    threshold = float(np.nanmax(held_out)) * 1.3  # above everything normal, as calibration would
    detector = detector.calibrated(threshold=threshold, pixel_threshold=threshold)
    detector_dir = detector.save(tmp_path / "detector")
    package = stage_artifacts(detector_dir, tmp_path / "package")

    frames, _, events = render_clip(7, "testing", 0, gen, kinds=("blob", "spark_shower"))
    video = tmp_path / "line.avi"
    write_video(video, frames, gen.fps)
    code = main(
        [
            "watch",
            str(video),
            "--model-dir",
            str(package),
            "--alert-frames",
            "2",
            "--output",
            str(tmp_path / "side.avi"),
            "--config",
            str(REPO / "configs" / "serving.yaml"),
        ]
    )
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    starts = [e["frame"] for e in lines if e["event"] == "anomaly_start"]
    assert lines[-1]["event"] == "summary" and lines[-1]["frames_scored"] == len(frames)
    lag = POSTPROCESS.smoothing_window + 2  # smoothing and the N-frame rule delay an alert
    for event in events:  # every injected event raises an alert while it lasts
        assert any(event.start <= s < event.start + event.length + lag for s in starts), (
            event,
            starts,
        )
    for s in starts:  # and nothing else does
        assert any(e.start <= s < e.start + e.length + lag for e in events), (s, events)
    assert (tmp_path / "side.avi").stat().st_size > 0


# --- from the registry ---------------------------------------------------------------------------


def _register_tiny_image_model(root: Path, name: str) -> str:
    import mlflow

    from vigil.detector import Detector, DetectorRecord
    from vigil.models.spec import build_model, model_spec
    from vigil.registry.integrity import BASIS_TAG, CHECKSUM_TAG
    from vigil.registry.package import log_package

    prep = ImagePrep(size=(32, 32), channels=3)
    spec = model_spec(
        "conv_ae", 3, prep.size, ConvAEConfig(depth=2, filters=4, latent_channels=4), prep=prep
    )
    torch.manual_seed(0)
    record = DetectorRecord(
        spec=spec, postprocess=POSTPROCESS, threshold=0.05, pixel_threshold=0.05
    )
    detector_dir = Detector(build_model(spec), record).save(root / "detector")
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("serving-it", artifact_location=(root / "store").as_uri())
    mlflow.set_experiment(experiment_id=experiment)  # logged models follow it, not the run
    with mlflow.start_run(experiment_id=experiment) as run:
        logged = log_package(detector_dir, run_id=run.info.run_id)
    version = mlflow.register_model(logged.model_uri, name).version
    client.set_model_version_tag(name, version, CHECKSUM_TAG, logged.checksum)
    client.set_model_version_tag(name, version, BASIS_TAG, "gate")  # may serve
    client.set_registered_model_alias(name, "champion", version)
    return str(version)


def _docker_cmd() -> list[str]:
    """The Dockerfile's default command (its JSON-form CMD line)."""
    text = (REPO / "Dockerfile").read_text()
    match = re.search(r"^CMD (\[.*\])\s*$", text, re.MULTILINE)
    assert match, "Dockerfile has no JSON-form CMD"
    return json.loads(match.group(1))




def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


@contextmanager
def _served(args: list[str], env: dict[str, str]) -> Iterator[str]:
    """`vigil <args>` in a subprocess, ready; yields its base URL and stops it afterwards.
    ``args`` must contain ``--port``."""
    process = subprocess.Popen(
        [sys.executable, "-c", SERVING_MAIN, *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{args[args.index('--port') + 1]}"
    try:
        wait_until_ok(f"{url}/ready", process, lambda: process.stderr.read().decode())
        yield url
    finally:
        process.terminate()
        process.wait(30)


def _assert_serves_version_1(url: str, name: str, headers: dict[str, str] | None = None) -> None:
    info = httpx.get(f"{url}/model").json()
    assert info["name"] == name and info["version"] == "1" and info["alias"] == "champion"
    image = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    answer = httpx.post(f"{url}/score", content=_png(image), headers=headers, timeout=30)
    assert answer.status_code == 200 and answer.json()["model_version"] == "1"


def test_docker_default_command_serves_the_champion_outside_docker(mlflow_store, tmp_path):
    name = "vigil-tiny-image"
    _register_tiny_image_model(tmp_path, name)
    cmd = _docker_cmd()
    assert cmd[:2] == ["vigil", "serve"]
    port = free_port()
    args = [a for a in cmd[2:]]
    args[args.index("--port") + 1] = str(port)
    args[args.index("--host") + 1] = "127.0.0.1"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_store,
        "VIGIL_MODEL_NAME": name,
        "VIGIL_API_TOKEN": "tok",
    }
    with _served(["serve", *args], env) as url:
        _assert_serves_version_1(url, name, headers={"Authorization": "Bearer tok"})


def test_serve_score_log_feeds_the_drift_trigger(mlflow_store, tmp_path):
    """`vigil serve --score-log` (a subprocess, real HTTP, concurrent clients) writes the log
    that the retrain drift check reads."""
    from concurrent.futures import ThreadPoolExecutor

    from vigil.scheduling import DriftConfig
    from vigil.scheduling.drift import check_drift

    name = "vigil-tiny-image"
    _register_tiny_image_model(tmp_path, name)
    port = free_port()
    log_path = tmp_path / "logs" / "scores.jsonl"
    serve = ["serve", "--model-uri", f"models:/{name}@champion", "--no-follow", "--port", str(port)]
    process = subprocess.Popen(
        [sys.executable, "-c", SERVING_MAIN, *serve, "--score-log", str(log_path)],
        env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_store},
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    rng = np.random.default_rng(1)
    images = [_png(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(20)]
    try:
        wait_until_ok(f"{url}/ready", process, lambda: process.stderr.read().decode())
        with httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda data: client.post("/score", content=data), images))
    finally:
        process.terminate()
        process.wait(30)
    assert [a.status_code for a in answers] == [200] * 20
    rows = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(rows) == 20 and {r["model_version"] for r in rows} == {"1"}
    assert sorted(r["score"] for r in rows) == pytest.approx(
        sorted(a.json()["score"] for a in answers)
    )
    cfg = DriftConfig(scores_log="logs/scores.jsonl", window=20, min_samples=20)
    result = check_drift(cfg, tmp_path)
    assert result.n_recent == 20
    assert result.alarm_fraction == pytest.approx(np.mean([r["is_anomaly"] for r in rows]))


def test_a_model_that_cannot_be_pulled_is_a_startup_error(mlflow_store, monkeypatch, capsys):
    from vigil.cli import main

    monkeypatch.setenv("VIGIL_MODEL_NAME", "no-such-model")
    assert main(["serve", "--port", str(free_port())]) == 1
    assert "cannot load model models:/no-such-model@champion" in capsys.readouterr().err


def test_pull_cli_installs_and_reports_errors(mlflow_store, tmp_path, capsys):
    from vigil.cli import main

    name = "vigil-tiny-image"
    _register_tiny_image_model(tmp_path, name)
    dest = tmp_path / "deploy"
    assert main(["pull", "--model", name, "--alias", "champion", "--dest", str(dest), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["version"] == "1" and (dest / "manifest.json").is_file()
    assert main(["pull", "--model", name, "--alias", "nope", "--dest", str(dest)]) == 1
    assert "cannot resolve" in capsys.readouterr().err


def test_serve_model_dir_loads_the_current_pulled_version(mlflow_store, tmp_path, capsys):
    """`vigil pull` then `vigil serve --model-dir` (a subprocess): the folder loads through its
    `current` link, as a plain folder would."""
    from vigil.cli import main

    name = "vigil-tiny-image"
    _register_tiny_image_model(tmp_path, name)
    dest = tmp_path / "deploy"
    assert main(["pull", "--model", name, "--dest", str(dest)]) == 0
    capsys.readouterr()
    assert os.readlink(dest / "current") == "versions/1"
    port = free_port()
    serve = ["serve", "--model-dir", str(dest), "--no-follow", "--port", str(port)]
    with _served(serve, {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store}) as url:
        _assert_serves_version_1(url, name)


def test_mlflow_models_serve_answers_with_the_same_scores(mlflow_store, tmp_path):
    from vigil.registry.package import invocation_payload
    from vigil.serving.loader import load_scorer

    name = "vigil-tiny-image"
    _register_tiny_image_model(tmp_path, name)
    scorer = load_scorer(f"models:/{name}@champion", cache_dir=tmp_path / "cache")
    images = [
        np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8) for i in range(3)
    ]
    expected = [r.score for r in scorer.score_images(images)]
    port = free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = (
        f"{mlflow_bin} models serve -m models:/{name}@champion --env-manager local "
        f"--host 127.0.0.1 --port {port} --workers 1"
    )
    path = f"{mlflow_bin.parent}{os.pathsep}{os.environ.get('PATH', '')}"  # it execs uvicorn
    process = subprocess.Popen(
        shlex.split(cmd),
        env={**os.environ, "PATH": path},
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ok(
            f"{url}/ping", process, lambda: process.stderr.read().decode(), timeout=180
        )
        response = httpx.post(
            f"{url}/invocations", json=invocation_payload([_png(i) for i in images]), timeout=60
        )
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert [p["score"] for p in predictions] == pytest.approx(expected, rel=1e-5)
    finally:
        process.terminate()
        process.wait(30)
