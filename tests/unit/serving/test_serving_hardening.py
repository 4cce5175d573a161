"""Issue 15 over real sockets: decompression bombs get 413 from their header, a per-request
pixel budget, load shedding (503 + Retry-After), read deadlines for slow clients, no credential
in /ready, and /docs with no internet."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from conftest import png, sample_images

from tests.conftest import bomb_png, free_port
from vigil.serving import LimitSettings, ServerSettings, ServingConfig
from vigil.serving.app import create_app
from vigil.serving.follow import AliasFollower, ModelHolder


def _client(live_server, scorer, server: dict | None = None, **limits) -> httpx.Client:
    config = ServingConfig(server=ServerSettings(**(server or {})), limits=LimitSettings(**limits))
    started = live_server(create_app(ModelHolder(scorer), config))
    return httpx.Client(base_url=started.url, timeout=30)


def test_bombs_get_413_from_their_header_and_opencv_errors_never_become_500(
    live_server, image_scorer
):
    client = _client(live_server, image_scorer)
    for width, height in ((14000, 14000), (60000, 60000)):
        bomb = bomb_png(width, height)
        started = time.monotonic()
        answer = client.post("/score", content=bomb, headers={"content-type": "image/png"})
        assert answer.status_code == 413, answer.text
        assert f"body: image of {width}x{height}" in answer.json()["detail"]
        assert time.monotonic() - started < 5  # refused from the header, never decoded
        files = [("files", ("ok.png", png(sample_images(1)[0]))), ("files", ("b.png", bomb))]
        answer = client.post("/score/batch", files=files)
        assert answer.status_code == 413
        assert f"files[1] (b.png): image of {width}x{height}" in answer.json()["detail"]
    assert client.get("/health").status_code == 200


def test_per_image_and_per_request_pixel_budgets(live_server, image_scorer):
    client = _client(live_server, image_scorer, max_image_pixels=3000, max_request_pixels=5000)
    small = png(sample_images(1, size=48)[0])  # 48 x 48 = 2,304 pixels
    big = png(np.zeros((60, 60, 3), np.uint8))  # 3,600 pixels
    answer = client.post("/score", content=big)
    assert answer.status_code == 413
    assert "60x60 = 3,600 pixels exceeds the budget of 3,000" in answer.json()["detail"]
    two = [("files", (f"{i}.png", small)) for i in range(2)]
    assert client.post("/score/batch", files=two).status_code == 200  # 4,608 pixels
    three = [("files", (f"{i}.png", small)) for i in range(3)]
    for path in ("/score/batch", "/score/clip"):
        answer = client.post(path, files=three)
        assert answer.status_code == 413, answer.text
        assert "request of 3 image(s) with 6,912 pixels in all exceeds the limit of 5,000" in (
            answer.json()["detail"]
        )


def _slow_request(port: int, path: str = "/score") -> socket.socket:
    """A client that sends its headers and half of its body, then waits."""
    body = png(sample_images(1)[0])
    sock = socket.create_connection(("127.0.0.1", port))
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body[: len(body) // 2])
    return sock


def _read_status(sock: socket.socket, timeout: float = 20) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_a_full_queue_sheds_load_with_503_and_retry_after(live_server, image_scorer):
    client = _client(live_server, image_scorer, server={"max_in_flight": 1, "retry_after_s": 3})
    port = int(str(client.base_url).rsplit(":", 1)[1].strip("/"))
    good = png(sample_images(1)[0])
    slow = _slow_request(port)  # admitted, holds the one slot while its body trickles
    try:
        deadline = time.monotonic() + 20
        while (answer := client.post("/score", content=good)).status_code != 503:
            assert time.monotonic() < deadline, "the slow request was never admitted"
        assert answer.headers["retry-after"] == "3"
        assert "server busy" in answer.json()["detail"]
        assert client.get("/health").status_code == 200  # status endpoints are never shed
    finally:
        slow.close()
    deadline = time.monotonic() + 20
    while (answer := client.post("/score", content=good)).status_code == 503:
        assert time.monotonic() < deadline, "the slot was never released"
    assert answer.status_code == 200


def test_a_body_that_does_not_arrive_in_time_gets_408(live_server, image_scorer):
    client = _client(live_server, image_scorer, server={"read_timeout_s": 1})
    port = int(str(client.base_url).rsplit(":", 1)[1].strip("/"))
    slow = _slow_request(port)
    try:
        assert _read_status(slow).startswith(b"HTTP/1.1 408")
    finally:
        slow.close()
    assert client.post("/score", content=png(sample_images(1)[0])).status_code == 200


def test_a_connection_that_never_finishes_its_headers_is_closed(image_scorer):
    import uvicorn

    from vigil.serving.limits import uvicorn_options

    settings = ServerSettings(read_timeout_s=1)
    app = create_app(ModelHolder(image_scorer), ServingConfig(server=settings))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **uvicorn_options(settings))
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.02)
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # ... and never the blank line
        try:
            assert _read_status(sock) == b""  # closed by the server, no answer
        finally:
            sock.close()
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
    finally:
        server.should_exit = True
        thread.join(10)


def test_ready_never_shows_the_registry_credentials(live_server, image_scorer, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://vigil:hunter2@127.0.0.1:{free_port()}")
    holder = ModelHolder(image_scorer)
    AliasFollower(holder, "tiny-image", "champion", interval_s=60).poll_once()
    assert holder.registry.reachable is False and holder.registry.error
    started = live_server(create_app(holder, ServingConfig()))
    ready = httpx.get(f"{started.url}/ready").json()
    assert ready["status"] == "degraded"
    assert "hunter2" not in json.dumps(ready)


def test_docs_work_without_internet(live_server, image_scorer):
    client = _client(live_server, image_scorer)
    page = client.get("/docs")
    assert page.status_code == 200 and "/docs/static/swagger-ui-bundle.js" in page.text
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        answer = client.get(f"/docs/static/{asset}")
        assert answer.status_code == 200 and len(answer.content) > 100_000
    assert "/docs" not in client.get("/openapi.json").json()["paths"]


@pytest.fixture(autouse=True)
def _no_registry_from_the_environment(monkeypatch):
    monkeypatch.delenv("VIGIL_API_TOKEN", raising=False)
