"""The HTTP service over real sockets: scoring answers, heat maps, limits, bad input, auth."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator

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
    image = sample_images(1)[0]  # 48x48 input, 32x32 model: overlays at the input's size
    data = png(image)
    body = client.post("/score?heatmap=true", content=data).json()
    heat = cv2.imdecode(np.frombuffer(base64.b64decode(body["heatmap_png"]), np.uint8), 1)
    expected = image_scorer.score_images([image], heatmap=True)[0].overlay
    assert heat.shape == (48, 48, 3) and np.array_equal(heat, expected)
    response = client.post("/score/heatmap", content=data)
    assert response.headers["content-type"] == "image/png"
    assert cv2.imdecode(np.frombuffer(response.content, np.uint8), 1).shape == (48, 48, 3)
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
    wrong_type = client.post("/score", json={"image": "x"})
    assert "unsupported content type" in detail(wrong_type, 415)
    assert "'file'" in detail(client.post("/score", files={"upload": ("a.png", good)}), 422)


def test_chunked_bodies_over_the_limit_get_413_while_read(live_server, image_scorer):
    """No Content-Length (Transfer-Encoding: chunked): the limit holds for raw and multipart."""
    client = _serve(live_server, image_scorer, max_request_bytes=20_000)
    noise = np.random.default_rng(0).integers(0, 255, (120, 120, 3), dtype=np.uint8)
    big, small = png(noise), png(sample_images(1)[0])  # ~43 kB (a valid image) and ~5 kB
    assert len(big) > 20_000 > len(small)
    boundary = "vigil-test-boundary"
    multipart = {"content-type": f"multipart/form-data; boundary={boundary}"}

    def post(path: str, body: bytes, headers: dict | None = None) -> httpx.Response:
        response = client.post(path, content=_chunks(body), headers=headers)
        assert "content-length" not in response.request.headers
        assert response.request.headers["transfer-encoding"] == "chunked"
        return response

    over = {"detail": "request body exceeds the limit of 20000 bytes"}
    batch = _form(boundary, "files", small, small, small, small, small)
    for response in (
        post("/score", bytes(100_000)),
        post("/score", _form(boundary, "file", big), multipart),
        post("/score/heatmap", _form(boundary, "file", big), multipart),
        post("/score/batch", batch, multipart),
        post("/score/clip", batch, multipart),
    ):
        assert (response.status_code, response.json()) == (413, over), response.request.url
    # under the limit, chunked bodies are scored as usual; the service is still healthy
    fits = _form(boundary, "file", small)
    for response in (post("/score", fits, multipart), post("/score", small)):
        assert response.status_code == 200, response.text
    assert client.get("/health").status_code == 200


def _chunks(data: bytes, size: int = 1024) -> Iterator[bytes]:
    """``data`` as a generator: httpx sends it chunked, with no Content-Length."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _form(boundary: str, field: str, *files: bytes) -> bytes:
    """A multipart/form-data body with one ``field`` part per file."""
    parts = [
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
        f"filename=\"{i}.png\"\r\nContent-Type: image/png\r\n\r\n".encode() + data + b"\r\n"
        for i, data in enumerate(files)
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def test_unsupported_channel_counts_name_the_count_and_what_the_model_takes(
    live_server, image_scorer
):
    client = _serve(live_server, image_scorer)
    takes = "the model takes 3-channel (RGB) images"

    def detail(response):
        assert response.status_code == 422, response.text
        return response.json()["detail"]

    five = detail(client.post("/score", content=_tiff(8, 8, samples=5)))
    assert "body: unsupported channel count 5" in five and takes in five
    two = detail(client.post("/score", content=_tiff(8, 8, samples=2)))  # 2 bands, not alpha
    assert "unsupported channel count 2" in two and takes in two
    good = png(sample_images(1)[0])
    files = [("files", ("ok.png", good)), ("files", ("six.tif", _tiff(8, 8, samples=6)))]
    six = detail(client.post("/score/batch", files=files))
    assert "files[1] (six.tif): unsupported channel count 6" in six and takes in six
    # gray + alpha and color + alpha are converted (alpha dropped), as in training
    gray_alpha = _pil_png(np.full((16, 16, 2), 128, np.uint8), "LA")
    bgra = png(np.full((16, 16, 4), 128, np.uint8))
    alpha_tiff = _tiff(8, 8, samples=2, extra_samples=2)
    for data in (gray_alpha, bgra, alpha_tiff):
        assert client.post("/score", content=data).status_code == 200


def _pil_png(array: np.ndarray, mode: str) -> bytes:
    """A PNG written by PIL (OpenCV cannot write gray + alpha)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, "PNG")
    return buffer.getvalue()


def _tiff(height: int, width: int, samples: int, extra_samples: int | None = None) -> bytes:
    """An uncompressed TIFF with ``samples`` channels (OpenCV cannot write 5-channel images);
    ``extra_samples`` (1, 2: alpha) marks what the channels past the first are."""
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
    if extra_samples is not None:
        entries.append((338, 3, extra_samples))
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
