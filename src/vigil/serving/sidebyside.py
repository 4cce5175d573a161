"""The ``vigil watch --output`` video: what the model saw, expected and flagged, frame by frame.

Each output frame is a header bar over three panels over a timeline strip::

    | frame 42   score 0.0231   threshold 0.0187                        ANOMALY  ALARM |
    | input            | prediction / reconstruction | heat-map overlay               |
    | score timeline (green), threshold (red line), frames above threshold (red dots)  |

The header is dark gray on a normal frame and red on a flagged one (smoothed score at or above the
threshold), with ``ANOMALY`` on the right; ``ALARM`` is added while an alert is active (the score
stayed above the threshold for the alert's run of frames, ``WatchSettings.alert_run``). A frame without a score yet (a
video model's first frame) reads ``score --``. The file is written under a temporary name and
renamed when closed, so a reader never sees a half-written video under the final name.
"""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path

import cv2
import numpy as np

PANEL = 192  # panel height and width in pixels
STRIP = 64  # timeline strip height
HEADER = 32  # header bar height (frame number, score, threshold, banner)
NORMAL_BG = (48, 48, 48)  # BGR
FLAGGED_BG = (0, 0, 200)  # BGR red
TEXT = (255, 255, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX
PANEL_LABELS = ("input", "prediction", "overlay")


class VideoWriterError(OSError):
    """The output video cannot be written; the message names the file."""


class SideBySideWriter:
    """Header (frame, score, threshold, alarm banner) over input | prediction | heat-map
    overlay, over a score timeline strip, into an mp4 (``mp4v``) or avi (``MJPG``) file."""

    def __init__(self, path: Path, fps: float, threshold: float, timeline_frames: int) -> None:
        self.path = path
        self.threshold = threshold
        self.history: deque[float] = deque(maxlen=timeline_frames)
        self.size = (3 * PANEL, HEADER + PANEL + STRIP)  # (width, height)
        fourcc = cv2.VideoWriter_fourcc(*("mp4v" if path.suffix.lower() == ".mp4" else "MJPG"))
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
        self.writer = cv2.VideoWriter(str(self.tmp), fourcc, max(fps, 1.0), self.size)
        if not self.writer.isOpened():
            raise VideoWriterError(f"{path}: cannot open a video writer for this file type")

    def write(
        self,
        frame: np.ndarray,
        prediction: np.ndarray | None,
        overlay: np.ndarray,
        score: float,
        *,
        index: int,
        flagged: bool,
        alarm: bool = False,
    ) -> None:
        """One output frame. ``frame``/``prediction``: uint8 (h, w, C) RGB or gray (the prepared
        frame and what the network expected); ``overlay``: BGR (h, w, 3) heat-map overlay;
        ``index``: the source frame number; ``flagged``: the score is at or above the threshold;
        ``alarm``: an alert is active."""
        self.history.append(score)
        panels = [
            _panel(bgr(frame)),
            _panel(bgr(prediction) if prediction is not None else np.zeros_like(overlay)),
            _panel(overlay),
        ]
        for i, (panel, label) in enumerate(zip(panels, PANEL_LABELS, strict=True)):
            panels[i] = _label(panel, label)
        width = self.size[0]
        header = self._header(width, score, index, flagged, alarm)
        self.writer.write(np.vstack([header, np.hstack(panels), self._strip(width)]))

    def _header(self, width: int, score: float, index: int, flagged: bool, alarm: bool):
        bar = np.full((HEADER, width, 3), FLAGGED_BG if flagged else NORMAL_BG, dtype=np.uint8)
        shown = f"{score:.4g}" if math.isfinite(score) else "--"
        text = f"frame {index}  score {shown}  threshold {self.threshold:.4g}"
        cv2.putText(bar, text, (6, 21), FONT, 0.45, TEXT, 1, cv2.LINE_AA)
        if flagged or alarm:
            banner = " ".join(word for word, on in (("ANOMALY", flagged), ("ALARM", alarm)) if on)
            (w, _), _ = cv2.getTextSize(banner, FONT, 0.6, 2)
            cv2.putText(bar, banner, (width - w - 8, 23), FONT, 0.6, TEXT, 2, cv2.LINE_AA)
        return bar

    def _strip(self, width: int) -> np.ndarray:
        strip = np.full((STRIP, width, 3), 24, dtype=np.uint8)
        values = np.nan_to_num(np.asarray(self.history, dtype=np.float64))  # NaN: no score yet
        top = max(float(values.max()), 2.0 * self.threshold, 1e-12)
        y_thr = int(STRIP - 1 - (STRIP - 2) * self.threshold / top)
        cv2.line(strip, (0, y_thr), (width - 1, y_thr), (0, 0, 255), 1)
        xs = np.linspace(0, width - 1, self.history.maxlen)[: len(values)]
        ys = STRIP - 1 - (STRIP - 2) * values / top
        points = np.stack([xs, ys], axis=1).astype(np.int32)
        cv2.polylines(strip, [points], False, (0, 255, 0), 1)
        for x, y in points[values >= self.threshold]:
            cv2.circle(strip, (int(x), int(y)), 2, (0, 0, 255), -1)
        return strip

    def close(self) -> None:
        self.writer.release()
        self.tmp.replace(self.path)


def bgr(image: np.ndarray) -> np.ndarray:
    """uint8 RGB or gray (h, w[, 1|3]) -> BGR (h, w, 3)."""
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(
            np.ascontiguousarray(image.reshape(image.shape[:2])), cv2.COLOR_GRAY2BGR
        )
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)


def _panel(image: np.ndarray) -> np.ndarray:
    return cv2.resize(image, (PANEL, PANEL), interpolation=cv2.INTER_NEAREST)


def _label(panel: np.ndarray, label: str) -> np.ndarray:
    """The panel's name in its bottom-left corner, on a dark box so it reads on any image."""
    panel = np.ascontiguousarray(panel)
    (w, h), _ = cv2.getTextSize(label, FONT, 0.4, 1)
    cv2.rectangle(panel, (0, PANEL - h - 8), (w + 8, PANEL - 1), (0, 0, 0), -1)
    cv2.putText(panel, label, (4, PANEL - 5), FONT, 0.4, TEXT, 1, cv2.LINE_AA)
    return panel
