"""The console's live panel: tail the score log and push new points as Server-Sent Events.

The score log (``vigil.serving.scorelog``) is the stream ``vigil watch --score-log PATH`` (and
``vigil serve --score-log PATH``) append to. ``ScoreLogTail`` follows it by byte offset: complete
lines only (a torn last line waits for its end), and a file that shrank (``copytruncate``) or was
replaced (rotation by rename) is read again from its start. ``event_stream`` polls the tail every
``poll_s`` and yields SSE messages:

- ``event: points`` with ``{"points": [...]}``; its ``id`` is the byte offset after the last line,
  so a client reconnecting with ``?offset=<id>`` misses nothing and repeats nothing;
- ``event: frame`` with the latest frame's log line (``<log>.latest/latest.json``) and a
  ``stamp`` that changes with every new frame (the PNGs are served beside the stream);
- a comment every few seconds, to keep proxies from closing an idle stream.

A stream ends after ``max_s`` (the browser reconnects at once): a server shutting down then never
waits long on an open stream.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from vigil.serving.scorelog import (
    IS_ANOMALY,
    LATEST_FILES,
    MODEL_VERSION,
    SCORE,
    THRESHOLD,
    TIME,
    latest_dir,
)

BYTES_PER_LINE = 200  # a generous size of one score line, to find the last N lines


def parse_line(raw: bytes) -> dict[str, Any] | None:
    """One score-log line -> ``{time, score, threshold, is_anomaly, model_version}``; None when
    the line is not a score (torn, another format, a non-finite score)."""
    try:
        row = json.loads(raw)
        score = float(row[SCORE])
        threshold = float(row[THRESHOLD])
    except (ValueError, KeyError, TypeError):
        return None
    if not (math.isfinite(score) and math.isfinite(threshold)):
        return None
    return {
        "time": row.get(TIME),
        "score": score,
        "threshold": threshold,
        "is_anomaly": bool(row.get(IS_ANOMALY, score >= threshold)),
        "model_version": row.get(MODEL_VERSION),
    }


class ScoreLogTail:
    """New complete lines of a growing file, by byte offset; survives truncation and rotation."""

    def __init__(self, path: Path | str, offset: int | None = None) -> None:
        self.path = Path(path)
        self.offset = offset
        self._inode: int | None = None

    def _stat(self) -> os.stat_result | None:
        try:
            return self.path.stat()
        except OSError:
            return None

    def last(self, n: int) -> list[dict[str, Any]]:
        """The last ``n`` scores now in the file; the tail then continues after them."""
        stat = self._stat()
        if stat is None:
            self.offset, self._inode = 0, None
            return []
        start = max(0, stat.st_size - n * BYTES_PER_LINE)
        with self.path.open("rb") as handle:
            handle.seek(start)
            data = handle.read(stat.st_size - start)
        end = data.rfind(b"\n") + 1  # complete lines only
        lines = data[:end].split(b"\n")
        if start > 0:
            lines = lines[1:]  # the first one is cut
        self.offset, self._inode = start + end, stat.st_ino
        points = [p for p in (parse_line(line) for line in lines if line.strip()) if p]
        return points[-n:]

    def poll(self) -> list[dict[str, Any]]:
        """Scores appended since the last call (all of a file seen for the first time)."""
        stat = self._stat()
        if stat is None:
            return []
        if self.offset is None or stat.st_size < self.offset or (
            self._inode is not None and stat.st_ino != self._inode
        ):
            self.offset = 0  # new, truncated or replaced: read it from the start
        self._inode = stat.st_ino
        if stat.st_size == self.offset:
            return []
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read(stat.st_size - self.offset)
        end = data.rfind(b"\n") + 1
        self.offset += end
        return [p for p in (parse_line(line) for line in data[:end].split(b"\n")) if p]


def latest_frame(log_path: Path | str) -> dict[str, Any] | None:
    """The latest frame's log line plus ``stamp`` (changes with each frame); None when absent."""
    folder = latest_dir(log_path)
    meta = folder / LATEST_FILES[2]
    try:
        stamp = meta.stat().st_mtime_ns
        line = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    if not all((folder / name).is_file() for name in LATEST_FILES[:2]):
        return None
    return {**(parse_line(json.dumps(line).encode()) or {}), "stamp": str(stamp)}


def _message(event: str, data: dict[str, Any], event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n"


async def event_stream(
    log_path: Path | str,
    *,
    offset: int | None,
    initial: int,
    is_disconnected: Callable[[], Any],
    poll_s: float = 0.2,
    max_s: float = 10.0,
    keepalive_s: float = 5.0,
) -> AsyncIterator[str]:
    """SSE messages for the live panel (see the module doc); ``offset``: resume after it."""
    tail = ScoreLogTail(log_path, offset)
    first = tail.last(initial) if offset is None else tail.poll()
    yield "retry: 500\n\n"
    yield _message("points", {"points": first, "initial": offset is None}, tail.offset)
    stamp = None
    started = last_sent = time.monotonic()
    while time.monotonic() - started < max_s:
        if await is_disconnected():
            return
        frame = latest_frame(log_path)
        if frame is not None and frame["stamp"] != stamp:
            stamp = frame["stamp"]
            yield _message("frame", frame)
            last_sent = time.monotonic()
        points = tail.poll()
        if points:
            yield _message("points", {"points": points, "initial": False}, tail.offset)
            last_sent = time.monotonic()
        elif time.monotonic() - last_sent > keepalive_s:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(poll_s)
    yield _message("end", {"offset": tail.offset}, tail.offset)
