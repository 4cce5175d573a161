"""Inbox items: where a dataset's data is, what a new item must look like, and checking one.

An item is valid when it decodes (the same ``decode_image`` / ``read_video`` as `prepare`, with
the same decoded-pixel budget ``prepare.max_image_pixels``), has the dataset's frame size and
channel count, and (frame folders) is not made only of frames already in the dataset. Before an
item is decoded, ``screen_entry`` refuses what must never reach DVC: a name that is not valid
UTF-8, a hidden (dot) file, a symbolic link (its target may lie outside the inbox).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vigil.config import DatasetSpec, Params
from vigil.data.ingest import IMAGE_EXTENSIONS, natural_key
from vigil.data.preprocess import DEFAULT_MAX_IMAGE_PIXELS, ImageDecodeError, decode_image
from vigil.data.video import VIDEO_EXTENSIONS, VideoDecodeError, read_video
from vigil.scheduling import InboxSpec
from vigil.scheduling.dvc_tools import sha256_file

DEFAULT_EXTRA_DIR = "data/extra"
_SAMPLE_EXISTING = 16  # existing normal items decoded to infer the expected size and channels


def extra_root(params: Params) -> str:
    """Folder of ingested normal data: ``data.extra_dir`` in params.yaml, else ``data/extra``."""
    return getattr(params.data, "extra_dir", None) or DEFAULT_EXTRA_DIR


# --- the dataset: where its data is and what its items look like ----------------------------


@dataclass(frozen=True)
class DatasetFolders:
    name: str
    modality: str
    source: Path  # the dataset's raw folder (all of it is hashed for "already in the dataset")
    normal: Path  # its normal training part: train/good (images) or training (video)
    extra: Path  # <extra_dir>/<name>: ingested normal items, DVC-tracked


def dataset_folders(root: Path, params: Params, name: str) -> DatasetFolders:
    spec: DatasetSpec = params.dataset(name)
    source = (root / spec.source).resolve()
    normal = source / ("train/good" if spec.modality == "image" else "training")
    return DatasetFolders(name, spec.modality, source, normal, root / extra_root(params) / name)


def _media_files(folder: Path) -> Iterable[Path]:
    if not folder.is_dir():
        return []
    media = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
    return (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in media)


def known_hashes(folders: DatasetFolders) -> set[str]:
    """sha256 of every image and video file in the dataset's source and extra folders."""
    return {sha256_file(p) for f in (folders.source, folders.extra) for p in _media_files(f)}


@dataclass(frozen=True)
class Expected:
    """What a new item must look like: frame (height, width) and channels; None = any."""

    size: tuple[int, int] | None
    channels: frozenset[int] | None


def _frame_shape(frame: np.ndarray) -> tuple[tuple[int, int], int]:
    """uint8 (H, W) or (H, W, C) -> ((H, W), C)."""
    return (int(frame.shape[0]), int(frame.shape[1])), 1 if frame.ndim == 2 else int(frame.shape[2])


def _sample_existing(folders: DatasetFolders) -> list[tuple[tuple[int, int], int]]:
    """(size, channels) of up to a few existing normal frames (first frame of each clip)."""
    shapes = []
    for folder in (folders.normal, folders.extra):
        if not folder.is_dir():
            continue
        for path in sorted(_media_files(folder), key=natural_key):
            if len(shapes) >= _SAMPLE_EXISTING:
                return shapes
            try:
                if path.suffix.lower() in VIDEO_EXTENSIONS:
                    shapes.append(_frame_shape(next(iter(read_video(path))).image))
                else:
                    shapes.append(_frame_shape(decode_image(path)))
            except (ImageDecodeError, VideoDecodeError, StopIteration):
                continue  # prepare reports bad source files; they say nothing about the shape
    return shapes


def expected_shape(folders: DatasetFolders, spec: InboxSpec) -> Expected:
    """Resolve ``auto`` against existing normal data (exact size only when all of it agrees)."""
    sample = _sample_existing(folders) if "auto" in (spec.size, spec.channels) else []
    if spec.size == "auto":
        sizes = {s for s, _ in sample}
        size = sizes.pop() if len(sizes) == 1 else None
    else:
        size = tuple(spec.size) if spec.size is not None else None
    if spec.channels == "auto":
        channels = frozenset(c for _, c in sample) or None
    else:
        channels = frozenset([spec.channels]) if spec.channels is not None else None
    return Expected(size=size, channels=channels)


# --- validating one item ---------------------------------------------------------------------


class InvalidItem(ValueError):
    """An inbox item that cannot be ingested; the message is its quarantine reason."""


def _check_frame(frame: np.ndarray, expected: Expected, what: str) -> None:
    size, channels = _frame_shape(frame)
    if expected.size is not None and size != expected.size:
        raise InvalidItem(
            f"{what}: size {size[0]}x{size[1]} (h x w) but the dataset's images are "
            f"{expected.size[0]}x{expected.size[1]}"
        )
    if expected.channels is not None and channels not in expected.channels:
        raise InvalidItem(
            f"{what}: {channels} channel(s) but the dataset has {sorted(expected.channels)}"
        )


def _validate_image(path: Path, expected: Expected, max_pixels: int | None) -> str:
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise InvalidItem(
            f"not an image file ({path.suffix or 'no extension'}); expected "
            f"{'/'.join(IMAGE_EXTENSIONS)}"
        )
    try:
        image = decode_image(path, path.name, max_pixels)
    except ImageDecodeError as error:
        raise InvalidItem(str(error)) from None
    _check_frame(image, expected, path.name)
    return sha256_file(path)


def _validate_video_file(path: Path, expected: Expected, min_frames: int) -> str:
    count = 0
    try:
        for frame in read_video(path, path.name):
            if count == 0:
                _check_frame(frame.image, expected, f"{path.name} frame 0")
            count += 1
    except VideoDecodeError as error:
        raise InvalidItem(str(error)) from None
    if count < min_frames:
        raise InvalidItem(f"{path.name}: {count} decodable frame(s), need at least {min_frames}")
    return sha256_file(path)


def _validate_frame_folder(
    path: Path, expected: Expected, min_frames: int, known: set[str], max_pixels: int | None
) -> str:
    frames = sorted(
        (p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")), key=natural_key
    )
    images = [p for p in frames if p.suffix.lower() in IMAGE_EXTENSIONS]
    others = [p.name for p in frames if p.suffix.lower() not in IMAGE_EXTENSIONS + (".txt",)]
    if others:
        raise InvalidItem(f"{path.name}/: non-image files {others[:5]} in a frame folder")
    if len(images) < min_frames:
        raise InvalidItem(f"{path.name}/: {len(images)} frame(s), need at least {min_frames}")
    if any(p.is_dir() for p in path.iterdir()):
        raise InvalidItem(f"{path.name}/: nested folders; a clip is one flat folder of frames")
    first_size = None
    digests = []
    for frame_path in images:
        try:
            image = decode_image(frame_path, f"{path.name}/{frame_path.name}", max_pixels)
        except ImageDecodeError as error:
            raise InvalidItem(str(error)) from None
        _check_frame(image, expected, f"{path.name}/{frame_path.name}")
        size = image.shape[:2]
        if first_size is not None and size != first_size:
            raise InvalidItem(
                f"{path.name}/{frame_path.name}: size {size} differs from the "
                f"clip's first frame {first_size}"
            )
        first_size = size
        digests.append(sha256_file(frame_path))
    if all(d in known for d in digests):
        raise InvalidItem(f"{path.name}/: every frame is already in the dataset")
    clip = hashlib.sha256()
    for frame_path, digest in zip(images, digests):
        clip.update(f"{frame_path.name}:{digest}\n".encode())
    return clip.hexdigest()


def validate_item(
    path: Path,
    modality: str,
    expected: Expected,
    min_frames: int,
    known: set[str],
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> str:
    """Check one inbox entry; returns its content hash or raises ``InvalidItem`` with the reason.

    ``max_pixels``: the decoded-pixel budget per image (``prepare.max_image_pixels``); a larger
    image is refused from its header, unread."""
    screen_entry(path)
    if path.is_file() and path.stat().st_size == 0:
        raise InvalidItem(f"{path.name}: empty file (0 bytes)")
    if modality == "image":
        if path.is_dir():
            raise InvalidItem(f"{path.name}/: a folder in an image inbox; drop image files")
        return _validate_image(path, expected, max_pixels)
    if path.is_dir():
        return _validate_frame_folder(path, expected, min_frames, known, max_pixels)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        raise InvalidItem(
            f"{path.name}: a loose image in a video inbox; put the frames of one clip in a folder"
        )
    if path.suffix.lower() not in VIDEO_EXTENSIONS:
        raise InvalidItem(
            f"{path.name}: not a video ({'/'.join(VIDEO_EXTENSIONS)}) or frame folder"
        )
    return _validate_video_file(path, expected, min_frames)




# --- before decoding: names, hidden files, links, items still being written --------------------


def display_name(name: str) -> str:
    """``name`` as valid UTF-8: bytes that are not UTF-8 (held by Python as lone surrogates)
    are shown as ``\\xNN``, so reasons, records and quarantine names never carry them."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def screen_entry(path: Path) -> None:
    """Refuse, before anything reads it, an entry that must never be decoded or reach DVC:
    a name (or, in a frame folder, a frame's name) that is not valid UTF-8, a hidden dot-file,
    or a symbolic link (its content would come from wherever it points, maybe outside the
    inbox). Raises ``InvalidItem`` with the reason."""
    name = display_name(path.name)
    if name != path.name:
        raise InvalidItem(
            f"{name}: the file name is not valid UTF-8 (shown with \\x escapes); DVC and the "
            "manifest need UTF-8 names: rename it and put it back in the inbox"
        )
    if path.name.startswith("."):
        raise InvalidItem(
            f"{name}: a hidden file (its name starts with '.'), not ingested; rename it without "
            "the leading dot to ingest it"
        )
    inbox = path.parent.resolve()
    if path.is_symlink():
        _refuse_link(path, name, inbox)
    if path.is_dir():
        for child in path.iterdir():
            child_name = display_name(child.name)
            if child_name != child.name:
                raise InvalidItem(f"{name}/{child_name}: a frame name that is not valid UTF-8")
            if child.is_symlink():
                _refuse_link(child, f"{name}/{child_name}", inbox)


def _refuse_link(path: Path, name: str, inbox: Path) -> None:
    target = display_name(os.readlink(path))
    outside = not path.resolve().is_relative_to(inbox)
    where = " outside the inbox" if outside else ""
    raise InvalidItem(
        f"{name}: a symbolic link to {target}{where}; links are not ingested: copy the file "
        "itself into the inbox"
    )


def item_state(path: Path) -> tuple:
    """What changes while an item is written: size and mtime of the file, or of a folder and
    each file in it (a clip whose frames are still arriving)."""
    try:
        stat = path.lstat()
        state: list = [(path.name, stat.st_size, stat.st_mtime_ns)]
        if path.is_dir() and not path.is_symlink():
            for child in sorted(path.iterdir()):
                child_stat = child.lstat()
                state.append((child.name, child_stat.st_size, child_stat.st_mtime_ns))
    except OSError:
        return ("gone",)
    return tuple(state)


def newest_mtime(state: tuple) -> float:
    """The latest modification time (seconds) in an ``item_state``; 0 when it is gone."""
    return max((entry[2] for entry in state if len(entry) == 3), default=0) / 1e9
