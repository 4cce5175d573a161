"""Several models per serving box (``vigil.serving.multi``): ``vigil serve --model A --model B``
over real HTTP on a real registry. Each model answers on its own routes with its own version and
threshold, the plain routes serve the first, ``/model`` lists them all, a model that cannot be
loaded is refused on its own, and a registry webhook naming one model swaps only that one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import make_model_dir, png, register, sample_images
from mlflow.webhooks.delivery import _generate_hmac_signature

from tests.conftest import free_port, wait_until_ok
from vigil.serving import load_serving_config
from vigil.serving.multi import ModelRef, parse_model_refs

REPO = Path(__file__).resolve().parents[3]
SECRET = "multi-webhook-secret"
ROUTES = ("score", "score/heatmap", "score/batch", "score/clip")


def _alias_event(name: str, version: str) -> tuple[bytes, dict[str, str]]:
    """A ``model_version_alias.created`` delivery signed exactly as MLflow signs it."""
    body = json.dumps({"entity": "model_version_alias", "action": "created",
                       "timestamp": "2026-01-01T00:00:00",
                       "data": {"name": name, "alias": "champion", "version": version}})  # fmt: skip
    stamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "X-MLflow-Delivery-Id": f"d-{name}",
               "X-MLflow-Timestamp": stamp,
               "X-MLflow-Signature": _generate_hmac_signature(SECRET, f"d-{name}", stamp, body)}  # fmt: skip
    return body.encode(), headers


def _scored(http: httpx.Client, prefix: str, route: str, image: bytes) -> tuple[str, str, float]:
    """(model_name, model_version, threshold) of one answer of ``prefix/route``."""
    if route in ("score/batch", "score/clip"):
        answer = http.post(f"{prefix}/{route}", files=[("files", ("a.png", image)),
                                                       ("files", ("b.png", image))])  # fmt: skip
    else:
        answer = http.post(f"{prefix}/{route}", content=image,
                           headers={"Content-Type": "image/png"})  # fmt: skip
    assert answer.status_code == 200, (prefix, route, answer.text)
    if route == "score/heatmap":
        assert answer.headers["content-type"] == "image/png"
        facts = answer.headers
        return facts["x-vigil-model-name"], facts["x-vigil-model-version"], float(
            facts["x-vigil-threshold"]
        )
    body = answer.json()
    return body["model_name"], str(body["model_version"]), body["threshold"]


def _wait_for(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_model_refs_from_flags_and_config(tmp_path):
    assert parse_model_refs(["cam-a", "cam-b@staging"], "champion", "--model") == [
        ModelRef("cam-a", "champion"),
        ModelRef("cam-b", "staging"),
    ]
    for bad, says in (("cam-a@", "not NAME"), ("@x", "not NAME"), ("a/b", "not NAME")):
        with pytest.raises(ValueError, match=says):
            parse_model_refs([bad], "champion", "--model")
    with pytest.raises(ValueError, match="given twice"):
        parse_model_refs(["cam-a", "cam-a@staging"], "champion", "--model")
    config = tmp_path / "serving.yaml"
    config.write_text("models: [cam-a, cam-b@staging]\nfollow: {alias: live}\n")
    loaded = load_serving_config(config)
    assert parse_model_refs(loaded.models, loaded.follow.alias, "models") == [
        ModelRef("cam-a", "live"),
        ModelRef("cam-b", "staging"),
    ]
    assert load_serving_config(REPO / "configs" / "serving.yaml").models == []


@pytest.mark.slow  # about 70 s here: a vigil serve process pulling three models
def test_serve_several_models_each_on_its_routes_and_following_its_alias(mlflow_store, tmp_path):
    register("cam-a", make_model_dir(tmp_path / "a1", seed=0, threshold=0.05))
    register("cam-b", make_model_dir(tmp_path / "b1", seed=1, threshold=0.07))
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store, "VIGIL_WEBHOOK_SECRET": SECRET,
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    env.pop("VIGIL_API_TOKEN", None)
    cmd = [str(Path(sys.executable).with_name("vigil")), "serve",
           "--model", "cam-a", "--model", "cam-b@champion", "--model", "cam-missing",
           "--config", str(REPO / "configs" / "serving.yaml"), "--host", "127.0.0.1",
           "--port", str(port), "--poll-interval", "3600"]  # fmt: skip  (webhooks only)
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    image = png(sample_images(1)[0])
    try:
        wait_until_ok(f"{url}/ready", proc, log.read_text, timeout=240)
        with httpx.Client(base_url=url, timeout=60) as http:
            listed = http.get("/model").json()
            assert (listed["name"], listed["version"], listed["threshold"]) == ("cam-a", "1", 0.05)
            by_name = {m["name"]: m for m in listed["models"]}
            assert list(by_name) == ["cam-a", "cam-b", "cam-missing"]
            assert by_name["cam-b"]["status"] == "serving"
            assert (by_name["cam-b"]["version"], by_name["cam-b"]["threshold"]) == ("1", 0.07)
            assert by_name["cam-b"]["route"] == "/models/cam-b"
            assert by_name["cam-b"]["following"] is True
            missing = by_name["cam-missing"]
            assert missing["status"] == "refused" and "cam-missing" in missing["error"]
            assert "refusing model models:/cam-missing@champion" in log.read_text()

            for route in ROUTES:
                assert _scored(http, "/models/cam-a", route, image) == ("cam-a", "1", 0.05)
                assert _scored(http, "/models/cam-b", route, image) == ("cam-b", "1", 0.07)
                assert _scored(http, "", route, image) == ("cam-a", "1", 0.05)  # the default
            assert http.get("/models/cam-b").json()["threshold"] == 0.07
            refused = http.post("/models/cam-missing/score", content=image)
            assert refused.status_code == 503 and "refused at start-up" in refused.text
            unknown = http.post("/models/cam-z/score", content=image)
            assert unknown.status_code == 404 and "cam-a, cam-b, cam-missing" in unknown.text

            # both aliases move; the webhook names cam-b: only cam-b swaps (polls are an hour apart)
            register("cam-a", make_model_dir(tmp_path / "a2", seed=2, threshold=0.06))
            register("cam-b", make_model_dir(tmp_path / "b2", seed=3, threshold=0.09))
            body, headers = _alias_event("cam-b", "2")
            assert http.post("/webhooks/mlflow", content=body, headers=headers).status_code == 202
            _wait_for(lambda: http.get("/models/cam-b").json()["version"] == "2")
            assert _scored(http, "/models/cam-b", "score", image) == ("cam-b", "2", 0.09)
            assert _scored(http, "/models/cam-a", "score", image) == ("cam-a", "1", 0.05)
            assert _scored(http, "", "score", image) == ("cam-a", "1", 0.05)

            body, headers = _alias_event("cam-a", "2")
            assert http.post("/webhooks/mlflow", content=body, headers=headers).status_code == 202
            _wait_for(lambda: http.get("/model").json()["version"] == "2")
            assert _scored(http, "", "score/batch", image) == ("cam-a", "2", 0.06)
            assert _scored(http, "/models/cam-b", "score", image) == ("cam-b", "2", 0.09)
    finally:
        proc.terminate()
        proc.wait(30)


def test_moving_one_alias_swaps_only_that_model(mlflow_store, tmp_path, live_server):
    """In process (fast): two models on one app, each polled by its own follower."""
    from vigil.serving.app import create_app
    from vigil.serving.multi import ModelSet, load_model

    register("cam-a", make_model_dir(tmp_path / "a1", seed=0, threshold=0.05))
    register("cam-b", make_model_dir(tmp_path / "b1", seed=1, threshold=0.07))
    refs = parse_model_refs(["cam-a", "cam-b", "cam-gone"], "champion", "--model")
    models = ModelSet([load_model(ref, max_concurrent=1) for ref in refs])
    server = live_server(create_app(models.default.holder, models=models))
    followers = models.start_following(interval_s=0.2, max_concurrent=1)
    image = png(sample_images(1)[0])
    try:
        assert [f.name for f in followers] == ["cam-a", "cam-b"]
        with httpx.Client(base_url=server.url, timeout=60) as http:
            assert _scored(http, "/models/cam-b", "score/clip", image) == ("cam-b", "1", 0.07)
            assert _scored(http, "", "score", image) == ("cam-a", "1", 0.05)
            register("cam-b", make_model_dir(tmp_path / "b2", seed=3, threshold=0.09))
            _wait_for(lambda: http.get("/models/cam-b").json()["version"] == "2")
            assert _scored(http, "/models/cam-b", "score/batch", image) == ("cam-b", "2", 0.09)
            assert _scored(http, "/models/cam-a", "score", image) == ("cam-a", "1", 0.05)
            statuses = {m["name"]: m["status"] for m in http.get("/model").json()["models"]}
            assert statuses == {"cam-a": "serving", "cam-b": "serving", "cam-gone": "refused"}
            panel = http.get("/console/api/models").json()["models"]  # the console lists both
            assert [(m["name"], str(m["version"])) for m in panel] == [("cam-a", "1"), ("cam-b", "2")]
    finally:
        models.stop_following()
