"""Video decoding, frame-rate resampling and fixed-length clips (shared by prepare and streaming).

Resampling keeps frames by timestamp: with a source at ``src`` fps and a target at ``dst`` fps,
the kept frames are the first ones at or after the times 0, 1/dst, 2/dst, ... (30 -> 15 fps keeps
every second frame; 55 -> 1 fps keeps one frame per second). A target at or above the source rate
keeps every frame (no frame is invented). A frame's label and mask travel with it.

Source rate rule: a video file's rate is the one in its container (``CAP_PROP_FPS``). A frame
folder has no rate of its own: it is read from ``fps.txt`` (one number) in the folder or in any
parent up to the dataset root; without one the rate is unknown and the frames are kept as they are
(no resampling), which is logged and recorded in the manifest.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mov", ".mkv")
FPS_FILE = "fps.txt"


class VideoDecodeError(ValueError):
    """A video file cannot be opened or decoded; the message names it."""


@dataclass(frozen=True)
class DecodedFrame:
    index: int  # 0-based index in the source (before resampling)
    timestamp: float  # seconds from the start (index / fps; NaN when the rate is unknown)
    image: np.ndarray  # uint8 BGR (H, W, 3) or gray (H, W), as OpenCV decodes it


class FrameResampler:
    """Decides frame by frame, from timestamps, which frames to keep for a target rate.

    Stateful and streaming: ``keep(t)`` for each incoming frame in time order. Usable for a file
    (t = index / fps) or a live camera (t from ``CAP_PROP_POS_MSEC`` or the wall clock).
    """

    def __init__(self, target_fps: float | None):
        if target_fps is not None and target_fps <= 0:
            raise ValueError(f"target fps must be > 0, got {target_fps}")
        self.period = None if target_fps is None else 1.0 / target_fps
        self._next: float | None = None

    def keep(self, timestamp: float) -> bool:
        if self.period is None or math.isnan(timestamp):
            return True
        if self._next is None:
            self._next = timestamp
        # small tolerance: 30 fps timestamps such as 2/30 are not exact in binary
        if timestamp + 1e-6 * self.period < self._next:
            return False
        while self._next <= timestamp + 1e-6 * self.period:
            self._next += self.period
        return True


def resample_indices(
    n_frames: int, source_fps: float | None, target_fps: float | None
) -> list[int]:
    """Indices (0-based) of the frames kept when resampling ``n_frames`` at ``source_fps``."""
    if source_fps is None or target_fps is None or target_fps >= source_fps:
        return list(range(n_frames))
    resampler = FrameResampler(target_fps)
    return [i for i in range(n_frames) if resampler.keep(i / source_fps)]


def clip_starts(n_frames: int, clip_len: int, stride: int | None = None) -> np.ndarray:
    """Start rows of the fixed-length clips (``clip_len`` frames, step ``stride`` = clip_len)
    that fit in a run of ``n_frames`` consecutive frames -> int64 (K,)."""
    if clip_len < 1:
        raise ValueError(f"clip_len must be >= 1, got {clip_len}")
    stride = stride or clip_len
    if n_frames < clip_len:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, n_frames - clip_len + 1, stride, dtype=np.int64)


def video_fps(path: Path | str) -> float | None:
    """The frame rate stored in a video file's container, or None when it is missing/invalid."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise VideoDecodeError(f"{path}: cannot open video (unsupported or corrupt file)")
        fps = capture.get(cv2.CAP_PROP_FPS)
    finally:
        capture.release()
    return float(fps) if fps and math.isfinite(fps) and fps > 0 else None


def read_video(
    path: Path | str,
    name: str | None = None,
    on_end: Callable[[int, int], None] | None = None,
) -> Iterator[DecodedFrame]:
    """Decode a video file frame by frame (streaming: one frame in memory at a time).

    Raises ``VideoDecodeError`` naming the file when it is empty, cannot be opened, or yields no
    frame at all. ``on_end(decoded, reported)`` is called after the last frame with the number
    of frames decoded and the count the container announces (0 if unknown), so callers can
    report a truncated file instead of silently keeping fewer frames.
    """
    path = Path(path)
    name = name or str(path)
    if not path.is_file():
        raise VideoDecodeError(f"{name}: no such file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(f"{name}: empty file (0 bytes)")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise VideoDecodeError(f"{name}: cannot open video (unsupported or corrupt file)")
        fps = capture.get(cv2.CAP_PROP_FPS)
        fps = float(fps) if fps and math.isfinite(fps) and fps > 0 else math.nan
        reported = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        reported = int(reported) if reported and math.isfinite(reported) and reported > 0 else 0
        index = 0
        while True:
            ok, image = capture.read()
            if not ok or image is None:
                break
            yield DecodedFrame(index=index, timestamp=index / fps, image=image)
            index += 1
        if index == 0:
            raise VideoDecodeError(f"{name}: no decodable frame (corrupt or truncated video)")
        if on_end is not None:
            on_end(index, reported)
    finally:
        capture.release()


def read_folder_fps(folder: Path, root: Path) -> float | None:
    """Frame-folder rate from the nearest ``fps.txt`` between ``folder`` and ``root``, or None."""
    folder, root = Path(os.path.abspath(folder)), Path(os.path.abspath(root))  # keep symlinks
    for candidate in [folder, *folder.parents]:
        fps_file = candidate / FPS_FILE
        if fps_file.is_file():
            text = fps_file.read_text().strip()
            try:
                fps = float(text)
            except ValueError:
                raise VideoDecodeError(
                    f"{fps_file}: expected one number (frames per second), got {text!r}"
                ) from None
            if not fps > 0:
                raise VideoDecodeError(f"{fps_file}: frames per second must be > 0, got {fps}")
            return fps
        if candidate == root or root not in candidate.parents:
            break
    return None
