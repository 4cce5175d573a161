"""``print``: video of a metal 3D-printing melt pool (laser powder bed fusion / weld torch).

Normal video: a bright melt pool (saturated core + orange glow halo that flickers) follows a
serpentine raster path (random hatch spacing, orientation, speed and start) over a dark grainy
powder bed. Behind it a cooling heat trail fades and the solidified track stays slightly brighter.
The bed slowly changes from one layer to the next (cross-fade to a new grain and hatch texture)
while the overall brightness drifts; every frame carries sensor noise; the file is MJPG.

Anomalous events in test videos (10-20 consecutive frames at the default frame counts), each frame
with a pixel mask:

- ``spark_shower``: many bright streaks radiating from the melt pool, new ones every frame.
- ``spatter``: bright droplets ejected from the pool, flying off with drag.
- ``blob``: a sudden large bright irregular blob near the pool, for the whole event.
- ``stall``: the pool stops moving while time goes on; it overheats and grows (mask = pool).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vigil.config import PrintGen
from vigil.data.synthetic._common import (
    DATASET_PRINT,
    grain,
    item_rng,
    smooth_noise,
    to_uint8,
    write_png,
)

ANOMALIES = ("spark_shower", "spatter", "blob", "stall")
LABELS_FILE = "frame_labels.csv"
LABELS_HEADER = ("video", "frame_file", "frame_index_1based", "label", "defect")
VIDEO_SUFFIX = ".avi"

_SPLIT_STREAM = {"training": 1, "testing": 2}
_ANOMALY_STREAM = 7  # anomalies draw from their own stream: normal content stays the same
_HOT_BGR = np.array([110.0, 195.0, 255.0], np.float32)  # emission color: white core, orange glow
_BED_TINT = np.array([0.96, 1.0, 1.05], np.float32)
_MIN_GAP = 4  # normal frames between two events
_EVENT_LEN = (10, 20)


@dataclass(frozen=True)
class Event:
    """One anomalous event: ``kind`` over frames ``start`` .. ``start + length - 1`` (0-based)."""

    kind: str
    start: int
    length: int

    def covers(self, t: int) -> bool:
        return self.start <= t < self.start + self.length


def plan_events(
    rng: np.random.Generator, n_frames: int, kinds: list[str] | tuple[str, ...]
) -> list[Event]:
    """Non-overlapping events, one per entry of ``kinds``, after a warm-up, at least 4 apart."""
    n = len(kinds)
    warmup = min(16, n_frames // 4)
    space = n_frames - warmup
    max_len = min(_EVENT_LEN[1], (space - _MIN_GAP * (n - 1)) // max(n, 1))
    if max_len < 2:
        raise ValueError(
            f"generate.print.frames_per_video={n_frames} is too short for {n} anomalous events "
            f"per video (each needs >= 2 frames, {_MIN_GAP} apart, after {warmup} warm-up frames)"
        )
    lengths = rng.integers(min(_EVENT_LEN[0], max_len), max_len + 1, n)
    slack = space - int(lengths.sum()) - _MIN_GAP * (n - 1)
    gaps_before = np.diff(np.r_[0, np.sort(rng.integers(0, slack + 1, n))])
    events, t = [], warmup
    for kind, gap, length in zip(kinds, gaps_before, lengths, strict=True):
        t += int(gap)
        events.append(Event(kind, t, int(length)))
        t += int(length) + _MIN_GAP
    return events


def _raster_path(rng: np.random.Generator, size: int, min_length: float) -> np.ndarray:
    """float32 (M, 2) polyline (x, y): a serpentine hatch, ping-ponged to ``min_length`` px."""
    margin = size * 0.14
    hatch = size * rng.uniform(0.08, 0.11)
    lines = np.arange(margin, size - margin + 1e-3, hatch)
    points = []
    for k, y in enumerate(lines):
        xs = (margin, size - margin) if k % 2 == 0 else (size - margin, margin)
        points += [(xs[0], y), (xs[1], y)]
    path = np.array(points, np.float32)
    if rng.random() < 0.5:
        path = path[:, ::-1]  # vertical hatches
    if rng.random() < 0.5:
        path = size - path  # start from the other corner
    one_way = float(np.linalg.norm(np.diff(path, axis=0), axis=1).sum())
    reps = int(np.ceil(min_length / one_way)) + 1
    legs = [path] + [(path if r % 2 == 0 else path[::-1])[1:] for r in range(1, reps)]
    return np.concatenate(legs).astype(np.float32)


class _Path:
    """Position along a polyline by arc length."""

    def __init__(self, points: np.ndarray):
        self.points = points
        self.cum = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))]

    @property
    def length(self) -> float:
        return float(self.cum[-1])

    def at(self, s: float) -> np.ndarray:
        return np.array(
            [np.interp(s, self.cum, self.points[:, 0]), np.interp(s, self.cum, self.points[:, 1])],
            np.float32,
        )


def _bed_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """float32 (size, size) gray powder bed: grain, mottling and the previous layer's hatches."""
    angle = rng.uniform(0, np.pi)
    period = size * rng.uniform(0.06, 0.09)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    hatches = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    return (
        rng.uniform(58, 72)
        + 9.0 * grain(rng, size, 0.8)
        + 6.0 * smooth_noise(rng, size, size / 6)
        + 4.0 * hatches
    ).astype(np.float32)


class MeltPoolScene:
    """Renders the frames of one clip, in order; anomalies come from their own Generator."""

    def __init__(
        self,
        rng: np.random.Generator,
        anomaly_rng: np.random.Generator,
        size: int,
        fps: int,
        n_frames: int,
    ):
        self.rng, self.arng, self.size, self.n_frames = rng, anomaly_rng, size, n_frames
        self.per_30 = 30.0 / fps  # rates are set for 30 fps and scaled
        self.speed = size * rng.uniform(0.5, 0.75) / fps  # px per frame
        self.path = _Path(_raster_path(rng, size, self.speed * n_frames + size))
        self.s = rng.uniform(0, self.path.length - self.speed * n_frames)
        self.textures = (_bed_texture(rng, size), _bed_texture(rng, size))
        t = np.arange(n_frames, dtype=np.float32)
        center, width = rng.uniform(0.3, 0.7) * n_frames, n_frames / 8.0
        self.layer = 1.0 / (1.0 + np.exp(-(t - center) / width))
        freq, phase = rng.uniform(0.3, 0.8), rng.uniform(0, 2 * np.pi)
        self.drift = 1.0 + 0.07 * np.sin(2 * np.pi * freq * t / n_frames + phase)
        flicker = np.zeros(n_frames, np.float32)
        shocks = rng.standard_normal(n_frames)
        for i in range(1, n_frames):
            flicker[i] = 0.6 * flicker[i - 1] + 0.4 * shocks[i]
        self.flicker = 1.0 + 0.25 * flicker
        self.heat = np.zeros((size, size), np.float32)
        self.track = np.zeros((size, size), np.float32)
        self.yy, self.xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
        self.prev = self.path.at(self.s)
        self.stall_frames = 0
        self.droplets: list[list[np.ndarray | float]] = []  # [pos, vel, radius]
        self.blob: tuple[np.ndarray, np.ndarray] | None = None  # (emission, mask)

    def render(self, t: int, event: Event | None) -> tuple[np.ndarray, np.ndarray]:
        """Frame ``t``: ``frame`` uint8 (S, S, 3) BGR, ``mask`` uint8 (S, S) (255 = anomaly)."""
        size = self.size
        kind = event.kind if event is not None else None
        if kind == "stall":
            self.stall_frames += 1
        else:
            self.stall_frames = 0
            self.s += self.speed
        pos = self.path.at(self.s)

        self.heat *= 0.8**self.per_30
        thick = max(1, round(size / 40))
        cv2.line(self.heat, _fx(self.prev), _fx(pos), 1.0, thick, cv2.LINE_AA, 4)
        cv2.line(
            self.track, _fx(self.prev), _fx(pos), 1.0, max(1, round(size / 24)), cv2.LINE_AA, 4
        )
        self.prev = pos

        w = float(self.layer[t])
        bed = ((1 - w) * self.textures[0] + w * self.textures[1]) * self.drift[t] + 9.0 * self.track

        growth = 1.0 + min(1.0, 0.15 * self.stall_frames * self.per_30)  # a dwelling pool overheats
        sigma_core = size / 64.0
        sigma_halo = size / 20.0 * growth
        r2 = (self.xx - pos[0]) ** 2 + (self.yy - pos[1]) ** 2
        emission = (
            2.0 * np.exp(-r2 / (2 * sigma_core**2))
            + 0.55 * self.flicker[t] * growth * np.exp(-r2 / (2 * sigma_halo**2))
            + 0.45 * cv2.GaussianBlur(self.heat, (0, 0), size / 80.0)
        )
        mask = np.zeros((size, size), np.uint8)
        if kind is not None:
            extra = self._anomaly(kind, t - event.start, pos, mask, sigma_halo)
            emission = emission + extra
        if event is None or t == event.start + event.length - 1:
            self.droplets, self.blob = [], None

        frame = bed[:, :, None] * _BED_TINT + emission[:, :, None] * _HOT_BGR
        frame += self.rng.normal(0, 2.5, frame.shape).astype(np.float32)
        return to_uint8(frame), mask

    def _anomaly(
        self, kind: str, k: int, pos: np.ndarray, mask: np.ndarray, sigma_halo: float
    ) -> np.ndarray:
        """Emission float32 (S, S) of the anomaly at its k-th frame; draws its ``mask``."""
        size, rng = self.size, self.arng
        layer = np.zeros((size, size), np.float32)
        if kind == "spark_shower":
            for _ in range(int(rng.integers(14, 27))):
                angle = rng.uniform(0, 2 * np.pi)
                d = np.array([np.cos(angle), np.sin(angle)], np.float32)
                a = pos + d * size * rng.uniform(0.02, 0.06)
                b = a + d * size * rng.uniform(0.08, 0.22)
                width = int(rng.integers(1, 3)) * max(1, round(size / 96))
                cv2.line(layer, _fx(a), _fx(b), float(rng.uniform(0.7, 1.3)), width, cv2.LINE_AA, 4)
                cv2.line(mask, _fx(a), _fx(b), 255, width + 2, cv2.LINE_8, 4)
        elif kind == "spatter":
            for _ in range(int(rng.integers(5, 8)) if k == 0 else int(rng.integers(2, 5))):
                angle = rng.uniform(0, 2 * np.pi)
                vel = np.array([np.cos(angle), np.sin(angle)]) * size * rng.uniform(0.025, 0.05)
                radius = rng.uniform(1.2, 2.2) * size / 96
                self.droplets.append([pos.copy(), vel * self.per_30, radius])
            alive = []
            for drop in self.droplets:
                start = drop[0]
                drop[0] = start + drop[1]
                drop[1] = drop[1] * 0.93**self.per_30
                width = max(2, round(2 * drop[2]))
                cv2.line(layer, _fx(start), _fx(drop[0]), 1.4, width, cv2.LINE_AA, 4)
                cv2.line(mask, _fx(start), _fx(drop[0]), 255, width + 2, cv2.LINE_8, 4)
                if (0 <= drop[0]).all() and (drop[0] < size).all():
                    alive.append(drop)
            self.droplets = alive
        elif kind == "blob":
            if self.blob is None:
                self.blob = self._new_blob(pos)
            blob_emission, blob_mask = self.blob
            layer += blob_emission * float(0.95 + 0.15 * rng.standard_normal())
            mask |= blob_mask
        elif kind == "stall":
            radius = max(3.0, 2.5 * sigma_halo)
            cv2.circle(mask, _fx(pos), round(radius * 16), 255, -1, cv2.LINE_8, 4)
        return layer

    def _new_blob(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        size, rng = self.size, self.arng
        center = np.clip(pos + rng.uniform(-0.12, 0.12, 2) * size, 0.15 * size, 0.85 * size)
        radius = size * rng.uniform(0.08, 0.13)
        angles = np.sort(rng.uniform(0, 2 * np.pi, 14))
        radii = radius * rng.uniform(0.75, 1.1, 14)
        pts = center + np.stack([np.cos(angles), np.sin(angles)], 1) * radii[:, None]
        poly = [np.round(pts * 16).astype(np.int32)]
        emission = np.zeros((size, size), np.float32)
        cv2.fillPoly(emission, poly, 1.0, cv2.LINE_AA, 4)
        emission = cv2.GaussianBlur(emission, (0, 0), radius * 0.15)
        mask = np.zeros((size, size), np.uint8)
        cv2.fillPoly(mask, poly, 255, cv2.LINE_8, 4)
        return emission, cv2.dilate(mask, np.ones((3, 3), np.uint8))


def _fx(point: np.ndarray) -> tuple[int, int]:
    """A float (x, y) as fixed-point ints for OpenCV drawing with shift=4."""
    return round(float(point[0]) * 16), round(float(point[1]) * 16)


def render_clip(
    seed: int, split: str, index: int, cfg: PrintGen, kinds: tuple[str, ...] = ()
) -> tuple[np.ndarray, np.ndarray, list[Event]]:
    """Render one clip without writing it.

    Returns ``frames`` uint8 (T, S, S, 3) BGR, ``masks`` uint8 (T, S, S) and the events (one per
    entry of ``kinds``; none for a normal clip).
    """
    rng = item_rng(seed, DATASET_PRINT, _SPLIT_STREAM[split], index)
    anomaly_rng = item_rng(seed, DATASET_PRINT, _SPLIT_STREAM[split], index, _ANOMALY_STREAM)
    n = cfg.frames_per_video
    events = plan_events(anomaly_rng, n, kinds) if kinds else []
    scene = MeltPoolScene(rng, anomaly_rng, cfg.frame_size, cfg.fps, n)
    frames = np.empty((n, cfg.frame_size, cfg.frame_size, 3), np.uint8)
    masks = np.zeros((n, cfg.frame_size, cfg.frame_size), np.uint8)
    for t in range(n):
        event = next((e for e in events if e.covers(t)), None)
        frames[t], masks[t] = scene.render(t, event)
    return frames, masks, events


def write_video(path: Path, frames: np.ndarray, fps: int) -> None:
    """Write uint8 (T, H, W, 3) BGR frames as MJPG AVI, and check it decodes to T frames."""
    height, width = frames.shape[1:3]
    fourcc = cv2.VideoWriter_fourcc(*"MJPG")
    writer = cv2.VideoWriter(str(path), cv2.CAP_OPENCV_MJPEG, fourcc, float(fps), (width, height))
    if not writer.isOpened():
        raise OSError(f"{path}: cannot open an MJPG video writer")
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 95)
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()
    decoded = count_frames(path)
    if decoded != len(frames):
        raise OSError(f"{path}: wrote {len(frames)} frames but {decoded} decode back")


def count_frames(path: Path) -> int:
    """Frames that cv2.VideoCapture decodes from ``path``."""
    capture = cv2.VideoCapture(str(path))
    n = 0
    try:
        while capture.grab():
            n += 1
    finally:
        capture.release()
    return n


def _clip_name(prefix: str, index: int, count: int) -> str:
    return f"{prefix}_{index:0{max(3, len(str(count - 1)))}d}"


def generate_print(root: Path | str, cfg: PrintGen, seed: int) -> dict[str, int]:
    """Write the dataset into ``root``; returns counts (videos, frames, anomalous frames).

    ``training/train_NNN.avi`` (normal), ``testing/test_NNN.avi``, ``testing/frame_labels.csv``
    (``video,frame_file,frame_index_1based,label,defect``; ``frame_file`` empty for video files)
    and ``testing/masks/<clip>/<frame_index_1based:04d>.png`` for every anomalous frame. Event
    kinds cycle through ``ANOMALIES`` over all test events, so each kind is equally frequent.
    """
    root = Path(root)
    (root / "training").mkdir(parents=True, exist_ok=True)
    (root / "testing").mkdir(parents=True, exist_ok=True)
    for i in range(cfg.n_train_videos):
        frames, _, _ = render_clip(seed, "training", i, cfg)
        write_video(
            root / "training" / f"{_clip_name('train', i, cfg.n_train_videos)}.avi", frames, cfg.fps
        )

    rows: list[tuple[str, str, int, int, str]] = []
    per_video = cfg.anomalies_per_test_video
    anomalous = 0
    for i in range(cfg.n_test_videos):
        kinds = tuple(ANOMALIES[(i * per_video + j) % len(ANOMALIES)] for j in range(per_video))
        frames, masks, events = render_clip(seed, "testing", i, cfg, kinds)
        clip = _clip_name("test", i, cfg.n_test_videos)
        write_video(root / "testing" / f"{clip}{VIDEO_SUFFIX}", frames, cfg.fps)
        mask_dir = root / "testing" / "masks" / clip
        mask_dir.mkdir(parents=True, exist_ok=True)
        for t in range(len(frames)):
            event = next((e for e in events if e.covers(t)), None)
            if event is not None:
                write_png(mask_dir / f"{t + 1:04d}.png", masks[t])
                anomalous += 1
            rows.append((clip, "", t + 1, int(event is not None), event.kind if event else "good"))
    with open(root / "testing" / LABELS_FILE, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(LABELS_HEADER)
        writer.writerows(rows)
    return {
        "train_videos": cfg.n_train_videos,
        "test_videos": cfg.n_test_videos,
        "test_frames": len(rows),
        "anomalous_frames": anomalous,
    }
