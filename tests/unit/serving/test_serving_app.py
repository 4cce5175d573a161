"""The HTTP service over real sockets: scoring answers, heat maps, limits, bad input, auth."""

from __future__ import annotations

import base64
import struct

import cv2
import httpx
import numpy as np
import pytest
from conftest import png, sample_images

from vigil.serving import LimitSettings, ServingConfig
from vigil.serving.app import create_app
from vigil.serving.follow import ModelHolder


def _serve(live_server, scorer, **limits):
    config = ServingConfig(limits=LimitSettings(**limits)) if limits else ServingConfig()
    server = live_server(create_app(ModelHolder(scorer), config))
    return httpx.Client(base_url=server.url, timeout=30)


def test_status_endpoints_and_openapi(live_server, image_scorer):
    client = _serve(live_server, image_scorer)
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["status"] == "ready" and ready["model_version"] == "local"
    info = client.get("/model").json()
    assert info["threshold"] == pytest.approx(0.05) and info["modality"] == "image"
    assert info["input_size"] == [32, 32] and info["channels"] == 3
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/score", "/score/batch", "/score/clip", "/score/heatmap", "/model"} <= set(paths)
    assert "multipart/form-data" in paths["/score"]["post"]["requestBody"]["content"]


def test_raw_and_multipart_bodies_give_the_in_process_score(live_server, image_scorer):
    client = _serve(live_server, image_scorer)
    image = sample_images(1)[0]
    expected = image_scorer.score_images([image])[0].score
    raw = client.post("/score", content=png(image), headers={"content-type": "image/png"})
    multi = client.post("/score", files={"file": ("a.png", png(image), "image/png")})
    for response in (raw, multi):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["score"] == pytest.approx(expected, rel=1e-6)
        assert body["is_anomaly"] == (expected >= 0.05)
        assert body["threshold"] == pytest.approx(0.05)
        assert body["model_version"] == "local" and body["latency_ms"] > 0
        assert "heatmap_png" not in body


def test_heatmap_as_base64_and_as_png(live_server, image_scorer):
    client = _serve(live_server, image_scorer)
    data = png(sample_images(1)[0])
    body = client.post("/score?heatmap=true", content=data).json()
    heat = cv2.imdecode(np.frombuffer(base64.b64decode(body["heatmap_png"]), np.uint8), 1)
    assert heat.shape == (32, 32, 3)
    response = client.post("/score/heatmap", content=data)
    assert response.headers["content-type"] == "image/png"
    assert cv2.imdecode(np.frombuffer(response.content, np.uint8), 1).shape == (32, 32, 3)
    assert float(response.headers["x-vigil-score"]) == pytest.approx(body["score"])


def test_batch_scores_each_image_and_rejects_empty_or_oversized(live_server, image_scorer):
    client = _serve(live_server, image_scorer, max_batch=3)
    images = sample_images(3)
    files = [("files", (f"{i}.png", png(im), "image/png")) for i, im in enumerate(images)]
    body = client.post("/score/batch", files=files).json()
    expected = [r.score for r in image_scorer.score_images(images)]
    assert [r["score"] for r in body["results"]] == pytest.approx(expected, rel=1e-6)
    empty = client.post("/score/batch", data={"note": "x"}, files={"other": ("a", b"x")})
    assert empty.status_code == 422 and "empty batch" in empty.json()["detail"]
    too_many = client.post("/score/batch", files=files + files[:1])
    assert too_many.status_code == 413 and "limit of 3" in too_many.json()["detail"]


def test_bad_input_gets_specific_4xx(live_server, image_scorer):
    client = _serve(live_server, image_scorer, max_request_bytes=200_000, max_image_side=64)
    good = png(sample_images(1)[0])

    def detail(response, status):
        assert response.status_code == status, response.text
        return response.json()["detail"]

    assert "not a decodable image" in detail(client.post("/score", content=b"hello, world"), 422)
    assert "truncated PNG" in detail(client.post("/score", content=good[: len(good) // 2]), 422)
    assert "empty" in detail(client.post("/score", content=b""), 422)
    big = png(np.zeros((80, 70, 3), np.uint8))
    assert "70x80 exceeds the limit of 64" in detail(client.post("/score", content=big), 413)
    noise = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    assert "exceeds the limit of 200000 bytes" in detail(
        client.post("/score", content=png(noise)), 413
    )
    five_channels = _tiff(8, 8, samples=5)
    assert "not a decodable image" in detail(client.post("/score", content=five_channels), 422)
    wrong_type = client.post("/score", json={"image": "x"})
    assert "unsupported content type" in detail(wrong_type, 415)
    assert "'file'" in detail(client.post("/score", files={"upload": ("a.png", good)}), 422)


def _tiff(height: int, width: int, samples: int) -> bytes:
    """An uncompressed TIFF with ``samples`` channels (OpenCV cannot write 5-channel images)."""
    data = bytes(height * width * samples)
    entries = [
        (256, 3, width),
        (257, 3, height),
        (258, 3, 8),
        (259, 3, 1),
        (262, 3, 1),
        (273, 4, 8),
        (277, 3, samples),
        (278, 3, height),
        (279, 4, len(data)),
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, 1) + packed
    return b"II*\x00" + struct.pack("<I", 8 + len(data)) + data + ifd + struct.pack("<I", 0)


def test_bearer_token_guards_scoring_only(live_server, image_scorer, monkeypatch):
    monkeypatch.setenv("VIGIL_API_TOKEN", "s3cret")
    client = _serve(live_server, image_scorer)
    data = png(sample_images(1)[0])
    assert client.get("/health").status_code == 200
    assert client.get("/model").status_code == 200
    assert client.post("/score", content=data).status_code == 401
    wrong = client.post("/score", content=data, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = client.post("/score", content=data, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200


def test_video_model_scores_clips_not_single_images(live_server, video_scorer):
    client = _serve(live_server, video_scorer)
    frames = sample_images(4)
    single = client.post("/score", content=png(frames[0]))
    assert single.status_code == 422 and "video model" in single.json()["detail"]
    files = [("files", (f"{i}.png", png(f), "image/png")) for i, f in enumerate(frames)]
    body = client.post("/score/clip", files=files).json()
    expected = [r.score for r in video_scorer.score_clip(frames)]
    scores = [r["score"] for r in body["results"]]
    assert scores[0] is None and not body["results"][0]["is_anomaly"]  # no prediction yet
    assert scores[1:] == pytest.approx(expected[1:], rel=1e-6)
    one = client.post("/score/clip", files=files[:1])
    assert one.status_code == 422 and "at least 2 frames" in one.json()["detail"]
