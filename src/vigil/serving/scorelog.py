"""The production score log: what serving writes and the drift trigger reads.

One JSON object per line, one line per scored image or frame, appended::

    {"time": "2026-11-23T01:35:12.345Z", "model_name": "vigil-capsules-image",
     "model_version": "3", "score": 0.0131, "threshold": 0.0204, "is_anomaly": false}

``vigil serve --score-log PATH`` and ``vigil watch --score-log PATH`` (or ``score_log:`` in
configs/serving.yaml) write it with ``ScoreLog``; ``vigil.scheduling.drift`` reads ``score`` and
``threshold`` from it (``drift.scores_log`` in configs/retrain.yaml). The format lives here, in
one place, so that the writer and the reader cannot disagree.

Appends are safe under concurrent requests and processes: each line is written whole by one
``write`` on a file opened with ``O_APPEND`` (the kernel places each write at the end, whole),
under a lock shared by the threads of the process; nothing is buffered, so a crash loses at
most the line being written, and the reader skips a torn last line. Rotation is left to the
system (``logrotate`` with ``copytruncate``, or a new path per day).

Latest frame (for the console's live panel): ``write_latest`` replaces, at most every
``latest_every_s``, the folder ``<log>.latest/`` beside the log (``latest_dir``): ``frame.png``
(the scored input), ``overlay.png`` (its heat map) and ``latest.json`` (the frame's log line),
each replaced atomically, ``latest.json`` last. ``vigil watch --score-log`` writes it.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

TIME = "time"
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
SCORE = "score"
THRESHOLD = "threshold"
IS_ANOMALY = "is_anomaly"
FIELDS = (TIME, MODEL_NAME, MODEL_VERSION, SCORE, THRESHOLD, IS_ANOMALY)
LATEST_SUFFIX = ".latest"
LATEST_FILES = ("frame.png", "overlay.png", "latest.json")


def latest_dir(log_path: Path | str) -> Path:
    """The folder beside a score log that holds its latest frame: ``<log>.latest``."""
    path = Path(log_path)
    return path.with_name(path.name + LATEST_SUFFIX)


def utc_stamp() -> str:
    """Now, UTC, to the millisecond: ``2026-11-23T01:35:12.345Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def score_line(
    model_name: str, model_version: str, score: float, threshold: float, is_anomaly: bool
) -> dict[str, Any]:
    """One log entry with exactly ``FIELDS``."""
    return {
        TIME: utc_stamp(),
        MODEL_NAME: model_name,
        MODEL_VERSION: str(model_version),
        SCORE: float(score),
        THRESHOLD: float(threshold),
        IS_ANOMALY: bool(is_anomaly),
    }


class ScoreLog:
    """Appends score lines to ``path`` (parent folders are created); thread- and process-safe.

    Use as a context manager or call ``close()``. ``write`` skips scores that are not finite
    (a video model's first frames have no score yet): they are not scored frames.
    """

    def __init__(self, path: Path | str, *, latest_every_s: float = 0.5) -> None:
        self.path = Path(path)
        self.latest_every_s = latest_every_s
        self._latest_at = -math.inf
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as error:
            raise OSError(f"score log {self.path}: cannot open for appending: {error}") from None
        self._lock = threading.Lock()

    def write(
        self,
        model_name: str,
        model_version: str,
        scores: Iterable[tuple[float, bool]],
        threshold: float,
    ) -> int:
        """Append one line per finite ``(score, is_anomaly)``; returns how many were written."""
        lines = [
            json.dumps(score_line(model_name, model_version, score, threshold, is_anomaly))
            for score, is_anomaly in scores
            if score is not None and math.isfinite(score)
        ]
        if not lines:
            return 0
        data = ("\n".join(lines) + "\n").encode("utf-8")
        with self._lock:
            written = 0
            while written < len(data):  # a regular file takes it in one write; loop to be sure
                written += os.write(self._fd, data[written:])
        return len(lines)

    def latest_due(self) -> bool:
        """True when ``write_latest`` would write now (``latest_every_s`` since the last one)."""
        return time.monotonic() - self._latest_at >= self.latest_every_s

    def write_latest(self, frame: Any, overlay: Any, line: dict[str, Any]) -> Path:
        """Replace ``<log>.latest/``: ``frame`` and ``overlay`` (BGR or gray uint8 arrays) as
        PNGs, then ``line`` (the frame's log entry) as ``latest.json``; returns the folder."""
        import cv2

        folder = latest_dir(self.path)
        folder.mkdir(parents=True, exist_ok=True)
        for name, image in zip(LATEST_FILES[:2], (frame, overlay), strict=True):
            ok, buffer = cv2.imencode(".png", image)
            if not ok:
                raise OSError(f"{folder / name}: PNG encoding failed")
            _replace(folder / name, buffer.tobytes())
        _replace(folder / LATEST_FILES[2], json.dumps(line).encode("utf-8"))
        self._latest_at = time.monotonic()
        return folder

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> ScoreLog:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file renamed over it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
