"""The opt-in score log: `serve` appends one line per scored image over real HTTP, under
concurrent requests, and the retrain drift trigger reads what it wrote; `watch` logs each frame."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from conftest import png, sample_images

from vigil.scheduling import DriftConfig
from vigil.scheduling.drift import check_drift
from vigil.serving.scorelog import FIELDS
from vigil.serving import ServingConfig, load_serving_config
from vigil.serving.app import create_app
from vigil.serving.follow import ModelHolder
from vigil.serving.watch import watch

REPO = Path(__file__).resolve().parents[3]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_score_log_is_off_by_default() -> None:
    assert ServingConfig().score_log is None
    assert load_serving_config(REPO / "configs" / "serving.yaml").score_log is None


def test_serve_logs_every_scored_image_and_drift_reads_it(
    live_server, image_scorer, tmp_path: Path
) -> None:
    log_path = tmp_path / "logs" / "scores.jsonl"
    app = create_app(ModelHolder(image_scorer), ServingConfig(score_log=str(log_path)))
    client = httpx.Client(base_url=live_server(app).url, timeout=60)
    images = [png(image) for image in sample_images(24, seed=3)]

    def one(data: bytes) -> dict:
        response = client.post("/score", content=data, headers={"content-type": "image/png"})
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(8) as pool:  # concurrent requests append to one file
        singles = list(pool.map(one, images))
    files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images[:5])]
    batch = client.post("/score/batch", files=files).json()["results"]
    bad = client.post("/score", content=b"not an image", headers={"content-type": "image/png"})
    assert bad.status_code == 422  # not scored: not logged

    rows = _rows(log_path)
    assert len(rows) == 24 + 5 and all(tuple(row) == FIELDS for row in rows)
    assert {(r["model_name"], r["model_version"]) for r in rows} == {
        (image_scorer.info.name, "local")
    }
    answered = sorted(a["score"] for a in singles + batch)
    assert sorted(r["score"] for r in rows) == pytest.approx(answered)
    for row in rows:
        assert row["threshold"] == pytest.approx(0.05)
        assert row["is_anomaly"] == (row["score"] >= row["threshold"])

    cfg = DriftConfig(scores_log="logs/scores.jsonl", window=29, min_samples=10)
    result = check_drift(cfg, tmp_path)
    share = float(np.mean([r["is_anomaly"] for r in rows]))
    assert result.n_recent == 29 and result.alarm_fraction == pytest.approx(share)
    assert result.fired == (share > cfg.max_alarm_fraction)


def test_watch_logs_each_scored_frame(image_scorer, tmp_path: Path) -> None:
    for i, image in enumerate(sample_images(5, seed=4)):
        cv2.imwrite(str(tmp_path / f"{i:04d}.png"), image)
    log_path = tmp_path / "watch.jsonl"
    summary = watch(image_scorer, str(tmp_path), target_fps=None, events=None, score_log=log_path)
    rows = _rows(log_path)
    assert len(rows) == summary.frames_scored == 5
    assert [r["score"] for r in rows] == pytest.approx(summary.scores)
    assert all(r["model_version"] == summary.model_version for r in rows)
