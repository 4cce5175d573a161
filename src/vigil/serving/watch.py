"""Stream scoring: ``vigil watch SOURCE`` on a video file, a frame folder or a camera/RTSP URL.

Frames are decoded on a reader thread (decode overlaps inference), resampled by timestamp to the
model's rate (``vigil.data.video.FrameResampler``), and pushed through one ``FrameStream``, which
carries the ConvLSTM state frame to frame and smooths the score with a moving average (image
models score each frame on its own). An alert fires when the smoothed score stays above the
model's threshold for ``alert_frames`` frames in a row (``watch.alert_frames``, by default the
model's own ``evaluate.alert_frames``, the rule its event metrics measured): a log line plus a
JSON event on stdout
and, optionally, a POST to a webhook. An optional side-by-side video
(``vigil.serving.sidebyside``) shows the frame number, score, threshold and an alarm banner over
input | prediction | heat-map overlay over a strip with the score timeline and the threshold.

Score log (opt-in, for the retrain drift trigger): ``vigil watch --score-log PATH`` (or
``score_log: PATH`` in configs/serving.yaml) appends one JSON line per scored frame, with its
smoothed score: ``{"time", "model_name", "model_version", "score", "threshold", "is_anomaly"}``
(``vigil.serving.scorelog``, read by ``vigil.scheduling.drift``). Frames without a score yet
(a video model's first frame) are not logged. Beside it, ``<log>.latest/`` holds the latest
scored frame and its heat map (twice a second at most), for the console's live panel.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import cv2

from vigil.data.video import DecodedFrame, FrameResampler, read_folder_fps, read_video
from vigil.serving.scorelog import ScoreLog, score_line
from vigil.serving import WatchSettings
from vigil.detector import ItemScore
from vigil.serving.loader import FrameStream, Scorer
from vigil.serving.sidebyside import SideBySideWriter
from vigil.serving.sidebyside import bgr as _bgr

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class SourceError(ValueError):
    """A watch source cannot be opened or read; the message names it."""


@dataclass
class WatchSummary:
    source: str
    model_version: str
    frames_read: int = 0
    frames_scored: int = 0
    alerts: list[dict[str, Any]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)  # smoothed, one per scored frame
    frame_indices: list[int] = field(default_factory=list)  # source index of each scored frame
    wall_s: float = 0.0

    @property
    def read_fps(self) -> float:
        return self.frames_read / self.wall_s if self.wall_s else 0.0

    @property
    def scored_fps(self) -> float:
        return self.frames_scored / self.wall_s if self.wall_s else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "event": "summary",
            "source": self.source,
            "model_version": self.model_version,
            "frames_read": self.frames_read,
            "frames_scored": self.frames_scored,
            "alerts": len(self.alerts),
            "wall_s": round(self.wall_s, 3),
            "read_fps": round(self.read_fps, 1),
            "scored_fps": round(self.scored_fps, 1),
        }


# --- sources -----------------------------------------------------------------------------------


def open_source(source: str, source_fps: float | None = None) -> Iterator[DecodedFrame]:
    """Frames of a video file, a frame folder (sorted names), a camera index or a stream URL.

    Timestamps come from the file's rate, ``source_fps`` / ``fps.txt`` for folders, and the
    capture position (or the wall clock) for cameras. Raises SourceError naming the source.
    """
    path = Path(source)
    if path.is_dir():
        return _folder_frames(path, source_fps)
    if path.is_file():
        return read_video(path)
    if source.isdigit() or "://" in source:
        return _capture_frames(source)
    raise SourceError(f"{source}: no such file or folder, and not a camera index or stream URL")


def _folder_frames(folder: Path, source_fps: float | None) -> Iterator[DecodedFrame]:
    from vigil.data.preprocess import decode_image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise SourceError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    fps = source_fps or read_folder_fps(folder, folder)
    for index, file in enumerate(files):
        timestamp = index / fps if fps else math.nan
        yield DecodedFrame(index=index, timestamp=timestamp, image=decode_image(file))


def _capture_frames(source: str) -> Iterator[DecodedFrame]:
    capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not capture.isOpened():
        raise SourceError(f"{source}: cannot open camera or stream")
    started = time.monotonic()
    try:
        index = 0
        while True:
            ok, image = capture.read()
            if not ok or image is None:
                break
            position = capture.get(cv2.CAP_PROP_POS_MSEC)
            timestamp = (
                position / 1000.0 if position and position > 0 else time.monotonic() - started
            )
            yield DecodedFrame(index=index, timestamp=timestamp, image=image)
            index += 1
    finally:
        capture.release()


def _read_ahead(frames: Iterator[DecodedFrame], size: int) -> Iterator[DecodedFrame]:
    """Decode on a background thread, ``size`` frames ahead; re-raises the reader's errors."""
    buffer: queue.Queue = queue.Queue(maxsize=size)
    done = object()
    stop = threading.Event()

    def reader() -> None:
        try:
            for frame in frames:
                if stop.is_set():
                    return
                buffer.put(frame)
        except Exception as error:  # noqa: BLE001 - handed to the consumer
            buffer.put(error)
        buffer.put(done)

    thread = threading.Thread(target=reader, name="vigil-watch-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is done:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a reader waiting on a full queue
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(0.05)


# --- alerts ------------------------------------------------------------------------------------


class AlertTracker:
    """Raises one event when the smoothed score is above threshold ``n_frames`` in a row and one
    when it falls back below."""

    def __init__(self, n_frames: int, threshold: float) -> None:
        self.n_frames = n_frames
        self.threshold = threshold
        self._run = 0
        self._active: dict[str, Any] | None = None

    @property
    def active(self) -> bool:
        """An alert has started and not ended yet."""
        return self._active is not None

    def update(self, frame: int, timestamp: float, score: float) -> dict[str, Any] | None:
        if score >= self.threshold:
            self._run += 1
            if self._active is not None:
                self._active["peak_score"] = max(self._active["peak_score"], score)
                return None
            if self._run >= self.n_frames:
                self._active = {
                    "event": "anomaly_start",
                    "frame": frame,
                    "time_s": _finite(timestamp),
                    "score": score,
                    "peak_score": score,
                    "threshold": self.threshold,
                    "frames_above": self._run,
                }
                return dict(self._active)
            return None
        self._run = 0
        if self._active is None:
            return None
        ended = {
            "event": "anomaly_end",
            "frame": frame,
            "time_s": _finite(timestamp),
            "started_frame": self._active["frame"],
            "peak_score": self._active["peak_score"],
            "threshold": self.threshold,
        }
        self._active = None
        return ended


def _finite(value: float) -> float | None:
    return round(value, 4) if math.isfinite(value) else None


class EventSink:
    """Writes alert events: a log line, a JSON line on ``stream``, a POST to ``webhook``."""

    def __init__(self, stream: TextIO | None, webhook: str | None, timeout_s: float) -> None:
        self.stream = stream
        self.webhook = webhook
        self.timeout_s = timeout_s
        self._client = None
        if webhook:
            import httpx

            self._client = httpx.Client(timeout=timeout_s)

    def emit(self, event: dict[str, Any]) -> None:
        if event["event"] == "anomaly_start":
            log.warning(
                "ANOMALY at frame %s (t=%ss): smoothed score %.5g > threshold %.5g",
                event["frame"],
                event["time_s"],
                event["score"],
                event["threshold"],
            )
        elif event["event"] == "anomaly_end":
            log.info("anomaly over at frame %s (peak %.5g)", event["frame"], event["peak_score"])
        if self.stream is not None:
            self.stream.write(json.dumps(event) + "\n")
            self.stream.flush()
        if self._client is not None:
            try:
                self._client.post(self.webhook, json=event).raise_for_status()
            except Exception as error:  # noqa: BLE001 - a dead webhook must not stop the watch
                log.error("webhook %s failed: %s", self.webhook, error)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


# --- the loop -------------------------------------------------------------------------------------


def watch(
    scorer: Scorer,
    source: str,
    settings: WatchSettings | None = None,
    *,
    source_fps: float | None = None,
    target_fps: float | None | str = "model",
    output: Path | str | None = None,
    webhook: str | None = None,
    events: TextIO | None | str = "stdout",
    max_frames: int | None = None,
    on_frame: Callable[[int, ItemScore], None] | None = None,
    score_log: Path | str | None = None,
) -> WatchSummary:
    """Score ``source`` frame by frame; returns counts, alerts, smoothed scores and rates.

    ``events``: where JSON events go: ``"stdout"`` (default, resolved at call time), a text
    stream, or None. ``target_fps``: ``"model"`` resamples to the model's rate, a number to that
    rate, None keeps every frame. ``max_frames`` stops after that many source frames (cameras never end).
    ``score_log``: append each scored frame's line to this JSONL file (see the module doc).
    """
    settings = settings or WatchSettings()
    if events == "stdout":
        events = sys.stdout
    fps = scorer.info.fps if target_fps == "model" else target_fps
    resampler = FrameResampler(float(fps) if fps else None)
    stream: FrameStream = scorer.stream()
    alerts = AlertTracker(settings.alert_run(scorer.detector), scorer.info.threshold)
    sink = EventSink(events, webhook, settings.webhook_timeout_s)
    summary = WatchSummary(source=source, model_version=scorer.info.version)
    writer = None
    scores_out = ScoreLog(score_log) if score_log is not None else None
    info = scorer.info
    started = time.perf_counter()
    try:
        for decoded in _read_ahead(open_source(source, source_fps), settings.read_queue):
            summary.frames_read += 1
            if max_frames is not None and summary.frames_read > max_frames:
                summary.frames_read -= 1
                break
            if not resampler.keep(decoded.timestamp):
                continue
            latest = scores_out is not None and scores_out.latest_due()  # console live panel
            result = stream.push(decoded.image, heatmap=output is not None or latest)
            summary.frames_scored += 1
            summary.scores.append(result.score)
            summary.frame_indices.append(decoded.index)
            if scores_out is not None:
                scores_out.write(
                    info.name, info.version, [(result.score, result.is_anomaly)], info.threshold
                )
                if latest and math.isfinite(result.score):
                    line = score_line(
                        info.name, info.version, result.score, info.threshold, result.is_anomaly
                    )
                    scores_out.write_latest(_bgr(stream.last_frame), result.overlay, line)
            event = alerts.update(decoded.index, decoded.timestamp, result.score)
            if event is not None:
                event.update(source=source, model_version=scorer.info.version)
                summary.alerts.append(event)
                sink.emit(event)
            if output is not None:
                if writer is None:
                    writer = SideBySideWriter(
                        Path(output),
                        float(fps or 15.0),
                        scorer.info.threshold,
                        settings.timeline_frames,
                    )
                writer.write(
                    stream.last_frame,
                    stream.last_prediction,
                    result.overlay,
                    result.score,
                    index=decoded.index,
                    flagged=bool(result.is_anomaly),
                    alarm=alerts.active,
                )
            if on_frame is not None:
                on_frame(decoded.index, result)
    finally:
        summary.wall_s = time.perf_counter() - started
        if writer is not None:
            writer.close()
        if scores_out is not None:
            scores_out.close()
        sink.close()
    if events is not None:
        events.write(json.dumps(summary.as_dict()) + "\n")
        events.flush()
    return summary
