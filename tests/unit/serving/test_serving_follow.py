"""Following the alias: hot swap under concurrent requests, broken versions refused, degraded
readiness when the registry goes away (real registry, real HTTP)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import torch
from conftest import make_model_dir, png, register, sample_images

from vigil.serving.app import create_app
from vigil.serving.follow import AliasFollower, ModelHolder
from vigil.serving.loader import load_scorer


def _wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_champion_move_swaps_without_failed_or_mixed_answers(image_registry, tmp_path, live_server):
    name, _ = image_registry
    holder = ModelHolder(load_scorer(f"models:/{name}@champion", cache_dir=tmp_path / "cache"))
    follower = AliasFollower(
        holder, name, "champion", interval_s=0.2, model_dir=tmp_path / "deploy"
    )
    server = live_server(create_app(holder))
    data = png(sample_images(1)[0])
    answers: list[list[tuple[int, float]]] = [[] for _ in range(4)]
    errors: list[str] = []
    stop = threading.Event()

    def client(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while not stop.is_set():
                response = http.post("/score", content=data)
                if response.status_code != 200:
                    errors.append(response.text)
                    continue
                body = response.json()
                answers[i].append((int(body["model_version"]), body["score"]))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    follower.start()
    for thread in threads:
        thread.start()
    try:
        _wait_for(lambda: all(len(a) >= 3 for a in answers))
        register(name, make_model_dir(tmp_path / "train2", "image", seed=1))  # version 2
        _wait_for(lambda: holder.current.info.version == "2")
        counts = [len(a) for a in answers]
        _wait_for(lambda: all(len(a) > c + 2 for a, c in zip(answers, counts, strict=True)))
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        follower.stop()
    assert errors == []
    for client_answers in answers:
        versions = [v for v, _ in client_answers]
        assert versions == sorted(versions), "a client saw an older version after a newer one"
        assert versions[0] == 1 and versions[-1] == 2
    by_version: dict[int, set[float]] = {}
    for v, score in (pair for a in answers for pair in a):
        by_version.setdefault(v, set()).add(round(score, 12))
    # every answer is one model's answer: one score per version for the same image, not a mix
    assert len(by_version[1]) == 1 and len(by_version[2]) == 1 and by_version[1] != by_version[2]
    assert (tmp_path / "deploy" / "manifest.json").is_file()  # a restart would load version 2
    assert holder.current.info.alias == "champion"


def test_broken_version_is_refused_and_the_old_one_keeps_serving(
    image_registry, tmp_path, live_server, caplog
):
    name, _ = image_registry
    holder = ModelHolder(load_scorer(f"models:/{name}@champion", cache_dir=tmp_path / "cache"))
    follower = AliasFollower(holder, name, "champion", interval_s=60)
    broken = make_model_dir(tmp_path / "train2", "image", seed=1)
    weights = broken.model_dir / "weights.safetensors"
    from safetensors.torch import load_file, save_file

    save_file(
        {k: torch.full_like(v, float("nan")) for k, v in load_file(weights).items()}, str(weights)
    )
    register(name, broken)  # version 2: scores are NaN
    assert follower.poll_once() is None
    assert holder.current.info.version == "1"
    assert "refusing" in caplog.text and "non-finite" in caplog.text
    client = httpx.Client(base_url=live_server(create_app(holder)).url)
    info = client.get("/model").json()
    assert info["version"] == "1" and "non-finite" in info["refused_versions"]["2"]
    assert client.post("/score", content=png(sample_images(1)[0])).json()["model_version"] == "1"
    assert follower.poll_once() is None  # remembered: not pulled again


def test_registry_gone_keeps_serving_with_degraded_readiness(
    image_registry, tmp_path, live_server, monkeypatch
):
    name, _ = image_registry
    holder = ModelHolder(load_scorer(f"models:/{name}@champion", cache_dir=tmp_path / "cache"))
    follower = AliasFollower(holder, name, "champion", interval_s=60)
    client = httpx.Client(base_url=live_server(create_app(holder)).url, timeout=30)
    follower.poll_once()
    assert client.get("/ready").json()["status"] == "ready"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    follower.poll_once()
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "degraded" and "unreachable" in ready.json()["registry_error"]
    answer = client.post("/score", content=png(sample_images(1)[0]))
    assert answer.status_code == 200 and answer.json()["model_version"] == "1"


@pytest.mark.parametrize("source", ["missing-dir", "models:/no-such-model@champion"])
def test_unloadable_model_is_a_clear_error(mlflow_store, tmp_path, source):
    from vigil.serving.loader import ModelLoadError
    from vigil.serving.pull import PullError

    with pytest.raises((ModelLoadError, PullError), match="not found|cannot resolve|no registered model"):
        load_scorer(source if source.startswith("models:") else str(tmp_path / source))
