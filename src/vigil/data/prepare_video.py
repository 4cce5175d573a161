"""The prepare stage for video: clips (video files or frame folders) streamed into a writer.

Clips are written in split order, frames in time order within a clip; frames are resampled to
``prepare.video.fps`` and labelled from the labels CSV.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vigil.config import PrepareConfig, VideoPrep
from vigil.data.ingest import IMAGE_EXTENSIONS, origin_of
from vigil.data.ingest_video import ClipRecord, FrameLabel, VideoSource, mask_path, scan_video
from vigil.data.prepare_items import (
    BadFiles,
    ItemError,
    Loaded,
    PrepareError,
    load_file,
    log,
    ordered_map,
    progress_bar,
    warn_ignored,
)
from vigil.data.prepare_manifest import manifest_parts, relative_to_root
from vigil.data.prepared import SPLITS, Item, PreparedWriter
from vigil.data.preprocess import decode_mask, preprocess_with_mask
from vigil.data.splits import split_labelled, split_normal
from vigil.data.video import (
    VIDEO_EXTENSIONS,
    DecodedFrame,
    FrameResampler,
    VideoDecodeError,
    read_video,
    resample_indices,
)


def _video_splits(source: VideoSource, cfg: PrepareConfig) -> dict[str, str]:
    train = [c for c in source.clips if c.part == "train"]
    test = [c for c in source.clips if c.part == "test"]
    seed = cfg.split.seed
    out = dict(
        zip(
            (c.name for c in train), split_normal(len(train), cfg.split.val_fraction, seed, "clips")
        )
    )
    strata = ["anomalous" if c.anomalous else "normal" for c in test]
    out.update(
        zip((c.name for c in test), split_labelled(strata, cfg.split.tune_fraction, seed, "clips"))
    )
    return out


@dataclass(frozen=True)
class _FrameRef:
    """One frame of a frame folder to load (source index is 1-based)."""

    clip: ClipRecord
    index_1based: int
    path: Path
    origin: str


def _clip_frames(clip: ClipRecord, target_fps: float | None, root: Path) -> list[_FrameRef]:
    kept = resample_indices(len(clip.frames), clip.source_fps, target_fps)
    return [
        _FrameRef(clip, i + 1, clip.frames[i], origin_of(clip.frames[i], root))
        for i in kept
    ]


def _iter_video_file(
    clip: ClipRecord,
    prep: VideoPrep,
    reference: np.ndarray | None,
    root: Path,
    workers: int = 1,
    warnings: list[str] | None = None,
) -> Iterator[tuple[int, Loaded]]:
    """(1-based source index, loaded frame) for the kept frames of a video file, in order.

    This thread decodes while ``workers`` threads preprocess. A decode failure of the whole file
    raises ``VideoDecodeError``; a bad mask only loses its frame (reported like a bad file). A
    file with fewer frames than its container announces or its labels list adds to ``warnings``.
    """
    resampler = FrameResampler(prep.fps if clip.source_fps else None)

    def check_length(decoded: int, reported: int) -> None:
        labelled = max(clip.labels, default=0)
        if warnings is not None and (reported > decoded + 1 or labelled > decoded):
            message = (
                f"{clip.origin}: decoded {decoded} frames, the container announces {reported}"
                f" and the labels CSV lists {labelled}: truncated video?"
            )
            log.warning(message)
            warnings.append(message)

    frames = read_video(clip.path, clip.origin, on_end=check_length)
    kept = (d for d in frames if resampler.keep(d.timestamp))

    def load(decoded: DecodedFrame) -> tuple[int, Loaded]:
        index_1based = decoded.index + 1
        mask_file = mask_path(clip, index_1based) if clip.part == "test" else None
        try:
            mask = (
                decode_mask(mask_file, mask_file.relative_to(root).as_posix())
                if mask_file
                else None
            )
            frame, mask = preprocess_with_mask(decoded.image, mask, prep, reference)
        except (*ItemError, cv2.error) as error:
            return index_1based, Loaded(error=f"{clip.origin}#{index_1based}: {error}")
        sha = hashlib.sha256(np.ascontiguousarray(decoded.image).data).hexdigest()
        return index_1based, Loaded(frame=frame, mask=mask, sha256=sha)

    yield from ordered_map(load, kept, workers)


def _reference_frame(
    clips: list[ClipRecord], prep: VideoPrep, root: Path
) -> tuple[np.ndarray | None, str | None]:
    """The alignment reference: the first decodable frame of the training clips, preprocessed."""
    if prep.align == "none":
        return None, None
    for clip in clips:
        try:
            if clip.is_file:
                for index_1based, loaded in _iter_video_file(clip, prep, None, root):
                    if loaded.error is None:
                        return loaded.frame, f"{clip.origin}#{index_1based}"
            else:
                for path in clip.frames:
                    origin = origin_of(path, root)
                    loaded = load_file(path, origin, None, prep, None)
                    if loaded.error is None:
                        return loaded.frame, origin
        except VideoDecodeError:
            continue
    return None, None


def prepare_video(
    name: str,
    root: Path,
    labels_csv: Path | None,
    cfg: PrepareConfig,
    writer: PreparedWriter,
    *,
    workers: int,
    progress: bool,
    extra_dir: Path | None = None,
) -> dict[str, Any]:
    """Stream a video folder into ``writer`` clip by clip; returns the manifest (without hash)."""
    source = scan_video(root, labels_csv, extra_dir)
    warn_ignored(name, source.ignored, (*VIDEO_EXTENSIONS, *IMAGE_EXTENSIONS))
    prep = cfg.video
    clip_split = _video_splits(source, cfg)
    # clips in split order so that each split's clips are contiguous, time order within a clip
    clips = sorted(source.clips, key=lambda c: (SPLITS.index(clip_split[c.name]), c.name))
    reference, reference_origin = _reference_frame(
        [c for c in clips if clip_split[c.name] == "train"], prep, root
    )
    n_files = sum(1 if c.is_file else len(c.frames) for c in clips)
    bad = BadFiles(n_files, cfg.max_bad_fraction, name)
    items: list[Item] = []
    clip_info: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []

    def load(ref: _FrameRef) -> Loaded:
        mask_file = mask_path(ref.clip, ref.index_1based) if ref.clip.part == "test" else None
        return load_file(ref.path, ref.origin, mask_file, prep, reference, cfg.max_image_pixels)

    unknown_fps = [c.origin for c in clips if c.source_fps is None]
    if prep.fps is not None and unknown_fps:
        log.warning(
            "dataset '%s': prepare.video.fps=%s has no effect on %d clip(s) without a known "
            "source fps (frame folders without fps.txt): all their frames are kept. Put the "
            "capture rate in an fps.txt (one number) in the source folder to resample: %s",
            name, prep.fps, len(unknown_fps), ", ".join(unknown_fps[:10]),
        )
    with progress_bar(None, f"prepare {name}", progress) as bar:
        for clip in clips:
            split = clip_split[clip.name]
            resampled = (
                prep.fps is not None and clip.source_fps is not None and prep.fps < clip.source_fps
            )
            if clip.is_file:
                stream = _iter_video_file(clip, prep, reference, root, workers, warnings)
            else:
                refs = _clip_frames(clip, prep.fps, root)
                stream = zip((r.index_1based for r in refs), ordered_map(load, refs, workers))
            try:
                n_frames = _write_clip(clip, split, stream, writer, items, bad, bar.update, root)
            except VideoDecodeError as error:
                bad.add(clip.origin, str(error))
                n_frames = 0
            clip_info[clip.name] = {
                "origin": clip.origin,
                "split": split,
                "source_fps": clip.source_fps,
                "resampled": resampled,
                "frames": n_frames,
            }
    bad.warn()
    extra = {
        "reference_origin": reference_origin,
        "ignored_files": list(source.ignored),
        "labels_csv": relative_to_root(source.labels_csv, root),
        "target_fps": prep.fps,
        "clip_len": prep.clip_len,
        "clips": clip_info,
        "warnings": warnings,
    }
    return manifest_parts(name, root, "video", prep, cfg, items, bad, extra)


def _write_clip(
    clip: ClipRecord,
    split: str,
    stream: Iterable[tuple[int, Loaded]],
    writer: PreparedWriter,
    items: list[Item],
    bad: BadFiles,
    tick: Callable[[], Any],
    root: Path,
) -> int:
    """Append the loaded frames of one clip (time order) and their items; returns the count."""
    n_frames = 0
    zero_mask = np.zeros(writer.frame_shape[:2], dtype=np.uint8)
    for index_1based, loaded in stream:
        tick()
        if clip.is_file:
            origin = clip.origin
        else:
            origin = origin_of(clip.frames[index_1based - 1], root)
        if loaded.error is not None:
            bad.add(f"{origin}#{index_1based}" if clip.is_file else origin, loaded.error)
            continue
        label = _frame_label(clip, index_1based)
        row = writer.append(loaded.frame, zero_mask if loaded.mask is None else loaded.mask)
        items.append(
            Item(
                index=row,
                origin=origin,
                split=split,
                label=label.label,
                defect=label.defect,
                has_mask=loaded.mask is not None,
                sha256=loaded.sha256,
                video=clip.name,
                frame=n_frames,
            )
        )
        n_frames += 1
    return n_frames


def _frame_label(clip: ClipRecord, index_1based: int) -> FrameLabel:
    if clip.part == "train":
        return FrameLabel(0, "good")
    label = clip.labels.get(index_1based)
    if label is None:
        raise PrepareError(
            f"{clip.origin}: frame {index_1based} has no row in the labels CSV "
            "(video files need one row per frame, by frame_index_1based)"
        )
    return label
