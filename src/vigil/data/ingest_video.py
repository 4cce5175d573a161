"""Find the clips of a video source folder: video files or frame folders, their frame labels
and masks (see ``vigil.data.ingest`` for the layouts). Nothing is decoded here."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vigil.data.ingest import (
    EXTRA_PREFIX,
    GOOD,
    IMAGE_EXTENSIONS,
    IngestError,
    list_entries,
    list_files,
    natural_key,
    origin_of,
    require_dir,
)
from vigil.data.video import VIDEO_EXTENSIONS, VideoDecodeError, read_folder_fps, video_fps

LABELS_FILE = "frame_labels.csv"

log = logging.getLogger("vigil.data.ingest")


@dataclass(frozen=True)
class FrameLabel:
    label: int
    defect: str


@dataclass(frozen=True)
class ClipRecord:
    """One video clip: a video file or a folder of frames."""

    name: str  # unique in the dataset: "<training|testing>/<clip>"
    clip: str  # name as the labels CSV and the masks folder know it
    part: Literal["train", "test"]
    path: Path  # the video file or the frame folder
    origin: str  # path relative to the source root, posix
    frames: tuple[Path, ...]  # frame files in time order (empty for a video file)
    source_fps: float | None  # None: unknown (frame folder without fps.txt): no resampling
    labels: dict[int, FrameLabel] = field(default_factory=dict)  # by 1-based source frame index
    masks_dir: Path | None = None

    @property
    def is_file(self) -> bool:
        return not self.frames

    @property
    def anomalous(self) -> bool:
        return any(v.label for v in self.labels.values())


@dataclass(frozen=True)
class VideoSource:
    root: Path
    clips: tuple[ClipRecord, ...]
    ignored: tuple[str, ...]
    labels_csv: Path


def _scan_clips(root: Path, part: Literal["train", "test"]) -> tuple[list[ClipRecord], list[str]]:
    folder_name = "training" if part == "train" else "testing"
    folder = require_dir(root / folder_name, f"{folder_name} videos")
    return _scan_clip_folder(folder, root, part, folder_name)


def _scan_clip_folder(
    folder: Path, root: Path, part: Literal["train", "test"], folder_name: str
) -> tuple[list[ClipRecord], list[str]]:
    """Video files directly in ``folder`` and ``folder/frames/<clip>/`` frame folders."""
    clips: list[ClipRecord] = []
    videos, ignored = list_files(folder, VIDEO_EXTENSIONS, root)
    ignored = [p for p in ignored if not p.endswith(".csv")]
    for path in videos:
        try:
            fps = video_fps(path)
        except VideoDecodeError:
            fps = None  # reported as a bad file by the decoding loop, with the reason
        clips.append(
            ClipRecord(
                name=f"{folder_name}/{path.stem}",
                clip=path.stem,
                part=part,
                path=path,
                origin=origin_of(path, root),
                frames=(),
                source_fps=fps,
            )
        )
    frames_root = folder / "frames"
    if frames_root.is_dir():
        for clip_dir in sorted((p for p in list_entries(frames_root) if p.is_dir()), key=natural_key):
            files, skipped = list_files(clip_dir, IMAGE_EXTENSIONS, root)
            ignored += skipped
            if not files:
                raise IngestError(f"{clip_dir}: empty frame folder (no images)")
            clips.append(
                ClipRecord(
                    name=f"{folder_name}/{clip_dir.name}",
                    clip=clip_dir.name,
                    part=part,
                    path=clip_dir,
                    origin=origin_of(clip_dir, root),
                    frames=tuple(files),
                    source_fps=read_folder_fps(clip_dir, root),
                )
            )
    if not clips:
        raise IngestError(
            f"{folder}: no videos ({'/'.join(VIDEO_EXTENSIONS)} files) "
            "and no frames/<clip>/ folders"
        )
    return clips, ignored


def read_frame_labels(path: Path) -> dict[str, dict[str | int, FrameLabel]]:
    """Parse the labels CSV -> {clip: {frame_file or 1-based index: FrameLabel}}.

    Rows are keyed both by ``frame_file`` (when not empty) and by ``frame_index_1based`` (when
    present). Raises ``IngestError`` naming the file and line for missing columns or bad values.
    """
    if not path.is_file():
        raise IngestError(f"{path}: labels CSV not found (needed for the testing clips)")
    labels: dict[str, dict[str | int, FrameLabel]] = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or ())
        missing = {"video", "label"} - columns
        if missing or not columns & {"frame_file", "frame_index_1based"}:
            need = sorted(missing) or ["frame_file or frame_index_1based"]
            raise IngestError(
                f"{path}: missing column(s) {', '.join(need)} "
                "(expected video,frame_file,frame_index_1based,label[,defect])"
            )
        for line, row in enumerate(reader, start=2):
            try:
                label = int(row["label"])
                if label not in (0, 1):
                    raise ValueError
                index = row.get("frame_index_1based") or ""
                index = int(index) if index.strip() else None
            except (TypeError, ValueError):
                raise IngestError(
                    f"{path}:{line}: label must be 0 or 1 and frame_index_1based an integer "
                    f"(got {row})"
                ) from None
            defect = (row.get("defect") or "").strip() or ("anomaly" if label else GOOD)
            entry = FrameLabel(label, defect if label else GOOD)
            clip = labels.setdefault(str(row["video"]).strip(), {})
            frame_file = (row.get("frame_file") or "").strip()
            if frame_file:
                clip[frame_file] = entry
            if index is not None:
                clip[index] = entry
            if not frame_file and index is None:
                raise IngestError(f"{path}:{line}: neither frame_file nor frame_index_1based given")
    return labels


def _label_clip(clip: ClipRecord, rows: dict[str | int, FrameLabel], csv_path: Path) -> ClipRecord:
    """Attach labels by 1-based source index; a frame folder's frames must all be labelled."""
    if clip.is_file:
        labels = {k: v for k, v in rows.items() if isinstance(k, int)}
        if not labels:
            raise IngestError(
                f"{csv_path}: clip {clip.clip!r} (a video file) needs frame_index_1based values"
            )
    else:
        labels, unlabelled = {}, []
        for position, frame in enumerate(clip.frames, start=1):
            entry = rows.get(frame.name, rows.get(position))
            if entry is None:
                unlabelled.append(frame.name)
            else:
                labels[position] = entry
        if unlabelled:
            raise IngestError(
                f"{csv_path}: {len(unlabelled)} frame(s) of clip {clip.clip!r} have no label "
                f"(first: {', '.join(unlabelled[:5])})"
            )
    testing_dir = clip.path.parent if clip.is_file else clip.path.parents[1]
    masks_dir = testing_dir / "masks" / clip.clip
    return ClipRecord(
        name=clip.name,
        clip=clip.clip,
        part=clip.part,
        path=clip.path,
        origin=clip.origin,
        frames=clip.frames,
        source_fps=clip.source_fps,
        labels=labels,
        masks_dir=masks_dir if masks_dir.is_dir() else None,
    )


def scan_video(
    root: Path | str, labels_csv: Path | str | None = None, extra_dir: Path | None = None
) -> VideoSource:
    """List the clips of a video source folder with their labels; raises ``IngestError``, or
    ``VideoDecodeError`` naming an ``fps.txt`` that is not a positive number.

    ``extra_dir`` (``data/extra/<dataset>``, filled by ``vigil ingest``) holds more normal
    clips in the layout of ``training/``; they join the training clips.
    """
    root = Path(root)
    if not root.is_dir():
        raise IngestError(f"{root}: source folder does not exist")
    train, ignored = _scan_clips(root, "train")
    # a fresh clone's data/extra/<d>/ holds only .gitkeep: no extra items
    if extra_dir is not None and extra_dir.is_dir() and any(
        not p.name.startswith(".") for p in extra_dir.iterdir()
    ):
        extra, skipped = _scan_clip_folder(extra_dir, extra_dir, "train", EXTRA_PREFIX)
        train += extra
        ignored += skipped
    test, skipped = _scan_clips(root, "test")
    ignored += skipped
    csv_path = Path(labels_csv) if labels_csv else root / "testing" / LABELS_FILE
    labels = read_frame_labels(csv_path)
    labelled = []
    for clip in test:
        if clip.clip not in labels:
            raise IngestError(
                f"{csv_path}: no labels for testing clip {clip.clip!r} ({clip.origin})"
            )
        labelled.append(_label_clip(clip, labels[clip.clip], csv_path))
    if not any(c.anomalous for c in labelled):
        raise IngestError(
            f"{csv_path}: the testing clips have no anomalous frame (every label is 0)"
        )
    return VideoSource(
        root=root, clips=tuple(train + labelled), ignored=tuple(ignored), labels_csv=csv_path
    )


def mask_path(clip: ClipRecord, index_1based: int) -> Path | None:
    """``testing/masks/<clip>/<index:04d>.png`` if it exists."""
    if clip.masks_dir is None:
        return None
    path = clip.masks_dir / f"{index_1based:04d}.png"
    return path if path.is_file() else None
