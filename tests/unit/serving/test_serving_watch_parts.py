"""Stream-scoring parts that need no model: alert hysteresis, sources, read-ahead, URIs."""

from __future__ import annotations

import io
import json

import cv2
import numpy as np
import pytest
from fastapi import FastAPI, Request

from vigil.serving.pull import PullError, parse_model_uri
from vigil.serving.install import replace_dir
from vigil.serving.watch import AlertTracker, EventSink, SourceError, _read_ahead, open_source


def test_alert_fires_once_after_n_frames_above_and_ends_below():
    tracker = AlertTracker(n_frames=3, threshold=1.0)
    scores = [0.5, 1.2, 1.5, 0.9, 1.1, 1.1, 1.3, 2.0, 1.4, 0.2, 0.1]
    events = [(i, e) for i, s in enumerate(scores) if (e := tracker.update(i, i / 10, s))]
    assert [(i, e["event"]) for i, e in events] == [(6, "anomaly_start"), (9, "anomaly_end")]
    assert events[0][1]["frames_above"] == 3
    assert events[1][1]["peak_score"] == 2.0 and events[1][1]["started_frame"] == 6


def test_event_sink_writes_json_lines():
    stream = io.StringIO()
    sink = EventSink(stream, None, 1.0)
    sink.emit({"event": "anomaly_start", "frame": 4, "time_s": 0.4, "score": 2.0, "threshold": 1.0})
    assert json.loads(stream.getvalue())["frame"] == 4


def test_folder_source_reads_sorted_frames_with_fps_timestamps(tmp_path):
    for i in (2, 0, 1):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), np.full((8, 8), i * 50, dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("ignored")
    frames = list(open_source(str(tmp_path), source_fps=10.0))
    assert [f.index for f in frames] == [0, 1, 2]
    assert [int(f.image[0, 0]) for f in frames] == [0, 50, 100]
    assert frames[2].timestamp == pytest.approx(0.2)


def test_missing_source_and_empty_folder_are_clear_errors(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        open_source(str(tmp_path / "nope.mp4"))
    with pytest.raises(SourceError, match="no image files"):
        list(open_source(str(tmp_path)))


def test_read_ahead_keeps_order_and_reraises_reader_errors():
    def frames():
        yield from range(5)
        raise RuntimeError("decoder broke")

    seen = []
    with pytest.raises(RuntimeError, match="decoder broke"):
        for item in _read_ahead(frames(), 2):
            seen.append(item)
    assert seen == [0, 1, 2, 3, 4]


def test_parse_model_uri():
    assert parse_model_uri("models:/vigil-capsules-image@champion") == (
        "vigil-capsules-image",
        "champion",
        None,
    )
    assert parse_model_uri("models:/m/3") == ("m", None, "3")
    for bad in ("runs:/abc/model", "models:/@x", "models:/m/latest"):
        with pytest.raises(PullError):
            parse_model_uri(bad)


def test_replace_dir_installs_a_pulled_folder_and_refuses_anything_else(tmp_path):
    dest, staging = tmp_path / "model", tmp_path / "staging"
    (staging / "package").mkdir(parents=True)
    (staging / "manifest.json").write_text(json.dumps({"name": "m", "version": "7"}))
    replace_dir(staging, dest)
    assert json.loads((dest / "manifest.json").read_text())["version"] == "7"
    assert (dest / "versions" / "7" / "package").is_dir() and not staging.exists()
    stray = tmp_path / "stray"
    stray.mkdir()
    with pytest.raises(PullError, match="no manifest.json: not a pulled model folder"):
        replace_dir(stray, dest)
    assert json.loads((dest / "manifest.json").read_text())["version"] == "7"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "stray"]


def test_event_sink_posts_to_a_webhook_and_survives_a_dead_one(live_server, caplog):
    received = []
    hook = FastAPI()

    @hook.post("/alerts")
    async def alerts(request: Request) -> dict:
        received.append(await request.json())
        return {"ok": True}

    server = live_server(hook)
    event = {"event": "anomaly_start", "frame": 9, "time_s": 0.6, "score": 3.0, "threshold": 1.0}
    sink = EventSink(None, f"{server.url}/alerts", 2.0)
    sink.emit(event)
    sink.close()
    assert received == [event]
    dead = EventSink(None, f"{server.url}/missing", 2.0)
    dead.emit(event)  # 404: logged, not raised
    dead.close()
    assert "webhook" in caplog.text and "404" in caplog.text
