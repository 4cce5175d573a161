"""The operator console's API over real sockets, with a real registry: the models panel, the
live stream (SSE over a real score log), the retrain panel's history, lock and auth."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import httpx
import mlflow
import numpy as np
import pytest
from conftest import make_model_dir, png, register, sample_images

from vigil.registry.promotion import TAG_FORCE_REASON, TAG_FORCED_AT, TAG_FORCED_BY
from vigil.serving.scorelog import ScoreLog, latest_dir, score_line
from vigil.serving import ConsoleSettings, ServingConfig
from vigil.serving.app import TOKEN_ENV, create_app
from vigil.serving.console.live import ScoreLogTail
from vigil.serving.follow import ModelHolder, RegistryStatus
from vigil.serving.loader import load_scorer

TOKEN = "s3cret-console"
RETRAIN_YAML = "datasets:\n  tiny:\n    inbox: inbox/tiny\n"


def _tag(name: str, version: str, tags: dict[str, str]) -> None:
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def _console(live_server, scorer, tmp_path: Path, **config) -> httpx.Client:
    settings = ConsoleSettings(root=str(tmp_path / "project"))
    app = create_app(ModelHolder(scorer), ServingConfig(console=settings, **config))
    return httpx.Client(base_url=live_server(app).url, timeout=30)


def _events(lines, wanted: int) -> list[tuple[str, dict]]:
    """The next ``wanted`` (event, data) pairs from an SSE response's ``iter_lines()``."""
    found: list[tuple[str, dict]] = []
    event, data = None, ""
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and event:
            found.append((event, json.loads(data)))
            event, data = None, ""
            if len(found) == wanted:
                break
    return found


def test_models_panel_shows_gate_promotion_and_refused_versions(
    live_server, image_registry, tmp_path: Path
) -> None:
    name, _ = image_registry
    _tag(name, "1", {"vigil.gate.passed": "true", "vigil.gate.reasons": "recall 1.0 >= 0.8: ok"})
    _tag(name, "1", {"vigil.metric.recall_at_threshold": "0.95", "vigil.metric.n_test": "9"})
    rejected = register(name, make_model_dir(tmp_path / "train2", "image", seed=1), alias=None)
    _tag(name, rejected, {"vigil.gate.passed": "false", "vigil.gate.reasons": "recall 0.2 < 0.8"})
    scorer = load_scorer(f"models:/{name}@champion")
    holder = ModelHolder(scorer)
    holder.registry = RegistryStatus(reachable=True, refused={"7": "ChecksumMismatchError: x"})
    app = create_app(holder, ServingConfig(console=ConsoleSettings(root=str(tmp_path))))
    client = httpx.Client(base_url=live_server(app).url, timeout=30)

    (model,) = client.get("/console/api/models").json()["models"]
    assert (model["name"], model["version"], model["alias"]) == (name, "1", "champion")
    assert "champion" in model["aliases"] and model["threshold"] == pytest.approx(0.05)
    assert model["gate"] == {"passed": True, "reasons": ["recall 1.0 >= 0.8: ok"]}
    assert model["promotion"]["by"] == "gate" and model["promotion"]["at"]
    assert model["metrics"]["recall_at_threshold"] == pytest.approx(0.95)
    assert "n_test" not in model["metrics"]  # counts are not operating-point metrics
    assert model["refused_versions"] == [{"version": "7", "reason": "ChecksumMismatchError: x"}]
    assert [v["version"] for v in model["gate_rejected_versions"]] == [rejected]
    assert model["gate_rejected_versions"][0]["reasons"] == ["recall 0.2 < 0.8"]

    forced = {TAG_FORCED_BY: "ana", TAG_FORCE_REASON: "line 3 trial", TAG_FORCED_AT: "2026-01-02"}
    _tag(name, "1", forced)
    config = ServingConfig(console=ConsoleSettings(root=str(tmp_path)))
    app = create_app(ModelHolder(scorer), config)
    client = httpx.Client(base_url=live_server(app).url, timeout=30)  # a fresh registry cache
    (model,) = client.get("/console/api/models").json()["models"]
    assert model["promotion"] == {
        "by": "forced", "who": "ana", "reason": "line 3 trial", "at": "2026-01-02"
    }
    page = client.get("/console")
    assert page.status_code == 200 and name in page.text and "console.js" in page.text
    assert client.get("/console/static/console.js").status_code == 200


def test_live_stream_pushes_new_points_and_the_latest_frame(
    live_server, image_scorer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    log_path = tmp_path / "scores.jsonl"
    with ScoreLog(log_path) as log:
        log.write("m", "3", [(0.01, False), (0.02, False)], 0.05)
    client = _console(live_server, image_scorer, tmp_path, score_log=str(log_path))
    assert client.get("/console/api/live/stream").status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with client.stream("GET", "/console/api/live/stream", headers=auth) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        ((event, first),) = _events(lines, 1)
        assert event == "points" and first["initial"]
        assert [p["score"] for p in first["points"]] == [0.01, 0.02]
        frame = sample_images(1, size=40)[0]
        with ScoreLog(log_path) as log:
            written = time.monotonic()
            log.write("m", "3", [(0.09, True)], 0.05)
            log.write_latest(frame, frame[::-1], score_line("m", "3", 0.09, 0.05, True))
        events = dict(_events(lines, 2))
        assert time.monotonic() - written < 2.0
    assert [p["score"] for p in events["points"]["points"]] == [0.09]
    assert events["points"]["points"][0]["is_anomaly"] is True
    assert events["frame"]["score"] == 0.09 and events["frame"]["stamp"]
    overlay = client.get("/console/api/live/latest/overlay.png", headers=auth)
    decoded = cv2.imdecode(np.frombuffer(overlay.content, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(decoded, frame[::-1])
    assert client.get("/console/api/live/latest/secrets.txt", headers=auth).status_code == 404


def test_live_stream_without_a_score_log_says_how_to_get_one(
    live_server, image_scorer, tmp_path: Path
) -> None:
    response = _console(live_server, image_scorer, tmp_path).get("/console/api/live/stream")
    assert response.status_code == 404 and "--score-log" in response.json()["detail"]


def test_tail_reads_complete_lines_and_follows_truncation(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    line = json.dumps(score_line("m", "1", 0.5, 1.0, False))
    path.write_text(f"{line}\n{line}\nnot json\n" + line[:10])  # a torn last line
    tail = ScoreLogTail(path)
    assert len(tail.last(1)) == 1 and tail.poll() == []
    with path.open("a") as handle:
        handle.write(line[10:] + "\n")
    assert [p["score"] for p in tail.poll()] == [0.5]
    path.write_text(line.replace("0.5", "0.25") + "\n")  # copytruncate: shorter file
    assert [p["score"] for p in tail.poll()] == [0.25]


def test_watch_writes_the_latest_frame_beside_the_score_log(image_scorer, tmp_path: Path) -> None:
    from vigil.serving.watch import watch

    frames = tmp_path / "frames"
    frames.mkdir()
    for i, image in enumerate(sample_images(3, size=40)):
        (frames / f"{i:03d}.png").write_bytes(png(image))
    log_path = tmp_path / "scores.jsonl"
    watch(image_scorer, str(frames), target_fps=None, events=None, score_log=log_path)
    folder = latest_dir(log_path)
    assert sorted(p.name for p in folder.iterdir()) == ["frame.png", "latest.json", "overlay.png"]
    assert json.loads((folder / "latest.json").read_text())["model_version"] == "local"
    assert cv2.imread(str(folder / "overlay.png")) is not None


def _write_record(root: Path, status: str, **extra) -> dict:
    from vigil.scheduling import load_retrain_config
    from vigil.scheduling.retrain import Cycle, write_record

    cfg = load_retrain_config(root / "configs" / "retrain.yaml")
    record = Cycle(root, cfg, print).record
    record.update(status=status, finished=record["started"], **extra)
    record["durations_s"]["total"] = 1.5
    write_record(root, cfg, record)
    return record


def test_retrain_history_and_who_may_run_a_cycle(
    live_server, image_scorer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vigil.scheduling.lock import RetrainLock

    root = tmp_path / "project"
    (root / "configs").mkdir(parents=True)
    client = _console(live_server, image_scorer, tmp_path)
    assert client.get("/console/api/retrain").json()["available"] is False
    (root / "configs" / "retrain.yaml").write_text(RETRAIN_YAML)
    dataset = {
        "trigger": ["new_data"], "data_version_before": "aaa", "data_version_after": "bbb",
        "candidate_version": "4", "verdict": "fail", "champion_before": "3",
        "champion_after": "3", "quarantined": {"x.png": "duplicate"},
    }
    failed = _write_record(
        root, "failed", trigger=["new_data"], datasets={"tiny": dataset},
        error={"step": "repro", "message": "`dvc repro` failed (exit 1)", "tail": "..."},
    )
    (root / "reports" / "retrain" / "zzz-broken.json").write_text("{half")
    history = client.get("/console/api/retrain").json()
    assert history["available"] and not history["running"]
    broken, cycle = history["cycles"]
    assert broken["status"] == "unreadable" and "zzz-broken.json" in broken["error"]["message"]
    assert cycle["cycle_id"] == failed["cycle_id"] and cycle["duration_s"] == 1.5
    assert cycle["datasets"]["tiny"]["verdict"] == "fail"
    assert cycle["datasets"]["tiny"]["quarantined"] == 1
    assert cycle["error"] == {"step": "repro", "message": "`dvc repro` failed (exit 1)"}

    # No token configured on the server: nobody runs a cycle from a browser.
    assert client.post("/console/api/retrain/run").status_code == 403
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    client = _console(live_server, image_scorer, tmp_path)
    assert client.post("/console/api/retrain/run").status_code == 401
    wrong = client.post("/console/api/retrain/run", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with RetrainLock(root / ".vigil" / "retrain.lock"):  # `vigil retrain` running meanwhile
        busy = client.post("/console/api/retrain/run", headers=auth)
    assert busy.status_code == 409 and "another retraining cycle is running" in busy.text
