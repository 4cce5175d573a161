"""The prepare stage: a source folder -> ``data/prepared/<name>/`` (see ``vigil.data.prepared``).

Streaming: items are decoded and preprocessed by a small thread pool (OpenCV releases the GIL)
in a bounded window and appended to the output arrays in order, so memory does not grow with
the dataset. Bad files (unreadable, corrupt, zero bytes, unsupported channels, mask size
mismatch) are skipped, listed in a warning and counted in the manifest while they stay at or
below ``prepare.max_bad_fraction`` of the source files; beyond that the stage fails with the
list. Everything is deterministic: sorted inputs, seeded splits, no timestamps in the output.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from vigil.config import DatasetSpec, ImagePrep, PrepareConfig, VideoPrep
from vigil.data.ingest import (
    IMAGE_EXTENSIONS,
    ClipRecord,
    FrameLabel,
    ImageRecord,
    IngestError,
    VideoSource,
    mask_path,
    scan_images,
    scan_video,
)
from vigil.data.prepared import SPLITS, Item, PreparedWriter
from vigil.data.preprocess import (
    ImageDecodeError,
    PreprocessError,
    decode_image,
    decode_mask,
    preprocess_with_mask,
)
from vigil.data.splits import SplitError, split_labelled, split_normal
from vigil.data.video import (
    VIDEO_EXTENSIONS,
    DecodedFrame,
    FrameResampler,
    VideoDecodeError,
    read_video,
    resample_indices,
)

log = logging.getLogger(__name__)

ItemError = (ImageDecodeError, PreprocessError, VideoDecodeError)
ITEM_FIELDS = tuple(f.name for f in fields(Item))
IGNORED_SHOWN = 5  # ignored files named in the warning (all are in the manifest)


class PrepareError(ValueError):
    """The dataset cannot be prepared; the message names the file, folder or key."""


@dataclass(frozen=True)
class PrepareResult:
    root: Path
    n_items: int
    n_bad: int
    counts: dict[str, Any]
    content_hash: str
    seconds: float


@dataclass(frozen=True)
class _Loaded:
    """A decoded + preprocessed item, or the reason it could not be."""

    frame: np.ndarray | None = None  # uint8 (H, W, C)
    mask: np.ndarray | None = None  # uint8 (H, W) in {0, 1}, None: no mask file
    sha256: str = ""
    error: str | None = None


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def ordered_map(fn: Callable, items: Iterable, workers: int) -> Iterator:
    """``map(fn, items)`` on a thread pool, results in input order, at most 2*workers in flight."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _load_file(
    path: Path, origin: str, mask_file: Path | None, prep: ImagePrep, reference: np.ndarray | None
) -> _Loaded:
    """Read, hash, decode and preprocess one image file (and its mask)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        return _Loaded(error=f"{origin}: cannot read file ({error.strerror})")
    try:
        image = decode_image(data, origin)
        mask = None
        if mask_file is not None:
            mask = decode_mask(mask_file, f"{origin} mask {mask_file.name}")
        frame, mask = preprocess_with_mask(image, mask, prep, reference)
    except ItemError as error:
        text = str(error)
        return _Loaded(error=text if text.startswith(origin) else f"{origin}: {text}")
    except cv2.error as error:  # a codec or shape OpenCV rejects: still this file's problem
        return _Loaded(error=f"{origin}: OpenCV cannot process it ({error.err or error})")
    return _Loaded(frame=frame, mask=mask, sha256=hashlib.sha256(data).hexdigest())


class _BadFiles:
    """Collects bad files; fails as soon as their share exceeds ``max_fraction``."""

    def __init__(self, total: int, max_fraction: float, dataset: str):
        self.total, self.max_fraction, self.dataset = total, max_fraction, dataset
        self.entries: list[dict[str, str]] = []

    def add(self, origin: str, reason: str) -> None:
        self.entries.append({"origin": origin, "reason": reason})
        if len(self.entries) > self.max_fraction * self.total:
            self.fail()

    def fail(self) -> None:
        shown = "\n  ".join(e["reason"] for e in self.entries[:20])
        more = f"\n  ... and {len(self.entries) - 20} more" if len(self.entries) > 20 else ""
        raise PrepareError(
            f"dataset {self.dataset!r}: {len(self.entries)} bad file(s) of {self.total} exceed "
            f"prepare.max_bad_fraction={self.max_fraction}:\n  {shown}{more}"
        )

    def warn(self) -> None:
        if self.entries:
            listing = "; ".join(e["reason"] for e in self.entries[:20])
            log.warning(
                "dataset %r: skipped %d bad file(s) of %d (within prepare.max_bad_fraction=%s): %s",
                self.dataset,
                len(self.entries),
                self.total,
                self.max_fraction,
                listing,
            )


def warn_ignored(dataset: str, ignored: Iterable[str], supported: Iterable[str]) -> None:
    """Warn, with a count and the first few names, about source files skipped for their
    extension (they stay listed in the manifest's ``ignored_files``): a smaller dataset than the
    folder suggests must not go unnoticed."""
    ignored = list(ignored)
    if not ignored:
        return
    shown = ", ".join(ignored[:IGNORED_SHOWN])
    more = f" and {len(ignored) - IGNORED_SHOWN} more" if len(ignored) > IGNORED_SHOWN else ""
    log.warning(
        "dataset %r: ignored %d file(s) with an unsupported extension (supported: %s): %s%s "
        "(listed under ignored_files in the manifest)",
        dataset,
        len(ignored),
        " ".join(supported),
        shown,
        more,
    )


def _progress(total: int | None, desc: str, enabled: bool) -> tqdm:
    return tqdm(
        total=total, desc=desc, unit="frame", disable=not enabled, leave=False, mininterval=0.5
    )


# --- images ----------------------------------------------------------------------------------


def _image_splits(records: tuple[ImageRecord, ...], cfg: PrepareConfig) -> list[str]:
    train = [i for i, r in enumerate(records) if r.part == "train"]
    test = [i for i, r in enumerate(records) if r.part == "test"]
    splits = [""] * len(records)
    for i, split in zip(
        train, split_normal(len(train), cfg.split.val_fraction, cfg.split.seed, "images")
    ):
        splits[i] = split
    strata = [records[i].defect for i in test]
    for i, split in zip(
        test, split_labelled(strata, cfg.split.tune_fraction, cfg.split.seed, "images")
    ):
        splits[i] = split
    return splits


def _reference_image(
    records: Iterable[ImageRecord], prep: ImagePrep
) -> tuple[np.ndarray | None, str | None]:
    """The alignment reference: the first decodable normal training image, preprocessed."""
    if prep.align == "none":
        return None, None
    for record in records:
        loaded = _load_file(record.path, record.origin, None, prep, None)
        if loaded.error is None:
            return loaded.frame, record.origin
    return None, None


def prepare_images(
    name: str,
    root: Path,
    cfg: PrepareConfig,
    writer: PreparedWriter,
    *,
    workers: int,
    progress: bool,
    extra_dir: Path | None = None,
) -> dict[str, Any]:
    """Stream an MVTec-layout folder into ``writer``; returns the manifest (without its hash)."""
    source = scan_images(root, extra_dir)
    warn_ignored(name, source.ignored, IMAGE_EXTENSIONS)
    prep = cfg.image
    splits = _image_splits(source.records, cfg)
    train = [r for r, s in zip(source.records, splits) if s == "train"]
    reference, reference_origin = _reference_image(train, prep)
    bad = _BadFiles(len(source.records), cfg.max_bad_fraction, name)
    items: list[Item] = []
    zero_mask = np.zeros(prep.size, dtype=np.uint8)

    def load(record: ImageRecord) -> _Loaded:
        return _load_file(record.path, record.origin, record.mask_path, prep, reference)

    with _progress(len(source.records), f"prepare {name}", progress) as bar:
        for record, split, loaded in zip(
            source.records, splits, ordered_map(load, source.records, workers)
        ):
            bar.update()
            if loaded.error is not None:
                bad.add(record.origin, loaded.error)
                continue
            index = writer.append(loaded.frame, zero_mask if loaded.mask is None else loaded.mask)
            items.append(
                Item(
                    index=index,
                    origin=record.origin,
                    split=split,
                    label=record.label,
                    defect=record.defect,
                    has_mask=loaded.mask is not None,
                    sha256=loaded.sha256,
                )
            )
    bad.warn()
    extra = {"reference_origin": reference_origin, "ignored_files": list(source.ignored)}
    return _manifest_parts(name, root, "image", prep, cfg, items, bad, extra)


# --- video -----------------------------------------------------------------------------------


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
        _FrameRef(clip, i + 1, clip.frames[i], clip.frames[i].relative_to(root).as_posix())
        for i in kept
    ]


def _iter_video_file(
    clip: ClipRecord,
    prep: VideoPrep,
    reference: np.ndarray | None,
    root: Path,
    workers: int = 1,
    warnings: list[str] | None = None,
) -> Iterator[tuple[int, _Loaded]]:
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

    def load(decoded: DecodedFrame) -> tuple[int, _Loaded]:
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
            return index_1based, _Loaded(error=f"{clip.origin}#{index_1based}: {error}")
        sha = hashlib.sha256(np.ascontiguousarray(decoded.image).data).hexdigest()
        return index_1based, _Loaded(frame=frame, mask=mask, sha256=sha)

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
                    origin = path.relative_to(root).as_posix()
                    loaded = _load_file(path, origin, None, prep, None)
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
    bad = _BadFiles(n_files, cfg.max_bad_fraction, name)
    items: list[Item] = []
    clip_info: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []

    def load(ref: _FrameRef) -> _Loaded:
        mask_file = mask_path(ref.clip, ref.index_1based) if ref.clip.part == "test" else None
        return _load_file(ref.path, ref.origin, mask_file, prep, reference)

    unknown_fps = [c.origin for c in clips if c.source_fps is None]
    if prep.fps is not None and unknown_fps:
        log.info(
            "%d clip(s) without a known source fps (frame folders without fps.txt) keep all "
            "their frames: %s",
            len(unknown_fps),
            ", ".join(unknown_fps[:10]),
        )
    with _progress(None, f"prepare {name}", progress) as bar:
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
        "labels_csv": _relative(source.labels_csv, root),
        "target_fps": prep.fps,
        "clip_len": prep.clip_len,
        "clips": clip_info,
        "warnings": warnings,
    }
    return _manifest_parts(name, root, "video", prep, cfg, items, bad, extra)


def _write_clip(
    clip: ClipRecord,
    split: str,
    stream: Iterable[tuple[int, _Loaded]],
    writer: PreparedWriter,
    items: list[Item],
    bad: _BadFiles,
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
            origin = clip.frames[index_1based - 1].relative_to(root).as_posix()
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


# --- manifest --------------------------------------------------------------------------------


def _counts(items: list[Item]) -> dict[str, Any]:
    counts: dict[str, Any] = {"total": len(items)}
    for split in SPLITS:
        members = [it for it in items if it.split == split]
        by_defect: dict[str, int] = {}
        for it in members:
            by_defect[it.defect] = by_defect.get(it.defect, 0) + 1
        entry = {
            "items": len(members),
            "anomalous": sum(it.label for it in members),
            "with_mask": sum(it.has_mask for it in members),
            "by_defect": dict(sorted(by_defect.items())),
        }
        if any(it.video for it in members):
            entry["clips"] = len({it.video for it in members})
        counts[split] = entry
    return counts


def _check_splits(name: str, counts: dict[str, Any]) -> None:
    """After bad files are dropped, every split must still hold data (and tune/test anomalies)."""
    for split in SPLITS:
        if counts[split]["items"] == 0:
            raise PrepareError(
                f"dataset {name!r}: split {split!r} is empty after dropping bad files"
            )
    if counts["test"]["anomalous"] == 0:
        raise PrepareError(f"dataset {name!r}: the test split has no anomalous item")
    if counts["tune"]["anomalous"] == 0:
        log.warning(
            "dataset %r: the tune split has no anomalous item (too few anomalies to share)", name
        )


def _manifest_parts(
    name: str,
    root: Path,
    modality: str,
    prep: ImagePrep,
    cfg: PrepareConfig,
    items: list[Item],
    bad: _BadFiles,
    extra: dict[str, Any],
) -> dict[str, Any]:
    counts = _counts(items)
    _check_splits(name, counts)
    counts["bad_files"] = len(bad.entries)
    counts["source_files"] = bad.total
    # the reference is the first decodable train frame: the first train row written
    reference_index = None
    if extra.get("reference_origin") is not None:
        reference_index = next(it.index for it in items if it.split == "train")
    return {
        "dataset": name,
        "source": str(root),
        "modality": modality,
        "params": {
            "prep": prep.model_dump(mode="json"),
            "split": cfg.split.model_dump(mode="json"),
            "max_bad_fraction": cfg.max_bad_fraction,
        },
        "frame_shape": [*prep.size, prep.channels],
        "counts": counts,
        "bad_files": bad.entries,
        "reference_index": reference_index,
        **extra,
        "items": [{name: getattr(it, name) for name in ITEM_FIELDS} for it in items],
    }


def _content_hash(manifest: dict[str, Any], data_hash: str) -> str:
    """sha256 of the arrays, the items and the params: equal iff the prepared data is equal."""
    digest = hashlib.sha256(data_hash.encode())
    digest.update(json.dumps(manifest["params"], sort_keys=True).encode())
    for item in manifest["items"]:
        digest.update(json.dumps(item, sort_keys=True).encode())
    return digest.hexdigest()


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to the source root when inside it (manifests stay machine independent)."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


# --- entry -----------------------------------------------------------------------------------


def resolve_source(name: str, spec: DatasetSpec, base_dir: Path) -> tuple[Path, Path | None]:
    """(source folder, labels CSV or None), relative paths taken from ``base_dir``."""
    root = Path(spec.source)
    root = root if root.is_absolute() else base_dir / root
    if not root.is_dir():
        raise PrepareError(
            f"data.datasets.{name}.source: {spec.source!r} does not exist or is not a folder "
            f"(looked at {root}); run `dvc repro generate` for the built-in data or fix the path"
        )
    labels = None
    if spec.labels_csv:
        labels = Path(spec.labels_csv)
        labels = labels if labels.is_absolute() else base_dir / labels
        if not labels.is_file():
            raise PrepareError(
                f"data.datasets.{name}.labels_csv: {spec.labels_csv!r} not found ({labels})"
            )
    return root, labels


def prepare_dataset(
    name: str,
    spec: DatasetSpec,
    cfg: PrepareConfig,
    out_dir: Path | str,
    *,
    base_dir: Path | str = ".",
    workers: int | None = None,
    progress: bool = True,
    extra_dir: Path | str | None = None,
) -> PrepareResult:
    """Prepare one dataset into ``out_dir`` (written atomically).

    Raises ``PrepareError`` naming the file, folder or key for every problem with the data.

    ``extra_dir``: normal items added by ``vigil ingest`` (``data/extra/<name>``), if any.
    """
    start = time.perf_counter()
    root, labels = resolve_source(name, spec, Path(base_dir))
    extra = Path(extra_dir) if extra_dir is not None else None
    workers = workers or default_workers()
    prep = cfg.image if spec.modality == "image" else cfg.video
    with PreparedWriter(out_dir, (*prep.size, prep.channels)) as writer:
        try:
            if spec.modality == "image":
                manifest = prepare_images(
                    name, root, cfg, writer, workers=workers, progress=progress, extra_dir=extra
                )
            else:
                manifest = prepare_video(
                    name,
                    root,
                    labels,
                    cfg,
                    writer,
                    workers=workers,
                    progress=progress,
                    extra_dir=extra,
                )
        except (IngestError, SplitError, VideoDecodeError) as error:
            # VideoDecodeError here is source-wide (a bad fps.txt while scanning frame folders);
            # a bad video file is counted as a bad file inside prepare_video.
            raise PrepareError(f"dataset {name!r}: {error}") from None
        manifest["source"] = spec.source  # as configured, not the machine's absolute path
        manifest["content_hash"] = _content_hash(manifest, writer.data_hash())
        writer.commit(manifest)
    seconds = time.perf_counter() - start
    log.info(
        "prepared %r: %d items (%d bad files skipped) in %.1f s -> %s",
        name,
        len(manifest["items"]),
        len(manifest["bad_files"]),
        seconds,
        out_dir,
    )
    return PrepareResult(
        root=Path(out_dir),
        n_items=len(manifest["items"]),
        n_bad=len(manifest["bad_files"]),
        counts=manifest["counts"],
        content_hash=manifest["content_hash"],
        seconds=seconds,
    )
