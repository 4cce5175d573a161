"""Find the items of a dataset source folder: which files, which labels, which masks.

Nothing is decoded here (that is ``prepare``'s streaming loop); layout problems such as missing or
empty folders, a test set without anomalies, or a labels CSV that does not match the frames are
reported here, before any work, with the folder or file they concern. A source without labelled
anomalies (``train/good`` alone, or with ``test/good`` only) is a normal-only dataset: prepare
accepts it and warns (``vigil.data.prepare_manifest``).

Layouts (the built-in generators write the same ones):

- images, MVTec AD: ``<root>/train/good/*``, ``<root>/test/<defect|good>/*`` (optional),
  ``<root>/ground_truth/<defect>/<stem>_mask.png`` (a defect type may have no masks at all, or
  miss some; those items get ``has_mask=False``).
- video (``vigil.data.ingest_video``): ``<root>/training/`` (normal) and ``<root>/testing/`` (labelled), each holding video files
  ``<clip>.avi|mp4|mov|mkv`` and/or frame folders ``frames/<clip>/NNN.jpg``. Labels:
  ``testing/frame_labels.csv`` (or ``DatasetSpec.labels_csv``) with columns
  ``video,frame_file,frame_index_1based,label[,defect]`` (``frame_file`` may be empty for video
  files, ``frame_index_1based`` may be missing for frame folders). Optional masks:
  ``testing/masks/<clip>/<frame_index_1based:04d>.png``.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GOOD = "good"


log = logging.getLogger(__name__)

EXTRA_PREFIX = "extra"  # origin prefix of items ingested into data/extra/<dataset>


class IngestError(ValueError):
    """The source folder or its labels do not follow the expected layout; names the path."""


@dataclass(frozen=True)
class ImageRecord:
    """One source image of an MVTec-layout folder."""

    path: Path
    origin: str  # path relative to the source root, posix
    part: Literal["train", "test"]
    label: int  # 0 normal, 1 anomalous
    defect: str  # "good" or the defect type (its folder name)
    mask_path: Path | None


@dataclass(frozen=True)
class ImageSource:
    root: Path
    records: tuple[ImageRecord, ...]
    ignored: tuple[str, ...]  # files that are not images (listed in the manifest)


def origin_of(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, posix, as valid UTF-8: bytes of a file name that are not
    UTF-8 (lone surrogates in Python) are written ``\\xNN``, so manifests and messages never
    carry lone surrogates; the file itself is still read by its real ``path``."""
    return os.fsencode(path.relative_to(root).as_posix()).decode("utf-8", "backslashreplace")


def natural_key(path: Path) -> list:
    """Sort key that orders ``2.jpg`` before ``10.jpg``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def list_entries(folder: Path) -> list[Path]:
    """The entries of ``folder``; a symbolic link that loops (``a -> b -> a``) is neither a file
    nor a folder and would be skipped without a word: it is named in a warning instead."""
    entries = list(folder.iterdir())
    for path in entries:
        if path.is_symlink():
            try:
                path.stat()
            except OSError as error:
                if error.errno == errno.ELOOP:
                    log.warning("%s: symbolic link loop (-> %s); skipped", path, os.readlink(path))
    return entries


def list_files(
    folder: Path, extensions: tuple[str, ...], root: Path
) -> tuple[list[Path], list[str]]:
    """(matching files in natural order, other non-hidden files relative to root)."""
    files, ignored = [], []
    for path in sorted(list_entries(folder), key=natural_key):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() in extensions:
            files.append(path)
        elif path.name != "fps.txt":
            ignored.append(origin_of(path, root))
    return files, ignored


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise IngestError(f"{path}: missing {what} folder")
    return path


# --- images ----------------------------------------------------------------------------------


def scan_images(root: Path | str, extra_dir: Path | None = None) -> ImageSource:
    """List the items of an MVTec-layout folder; raises ``IngestError`` naming the bad folder.

    ``extra_dir`` (``data/extra/<dataset>``, filled by ``vigil ingest``) holds more normal
    training images, flat; they join ``train/good``.
    """
    root = Path(root)
    if not root.is_dir():
        raise IngestError(f"{root}: source folder does not exist")
    train_good = require_dir(root / "train" / GOOD, "normal training images (train/good)")
    test_dir = root / "test"  # optional: a normal-only dataset may hold train/good alone
    records: list[ImageRecord] = []
    files, ignored = list_files(train_good, IMAGE_EXTENSIONS, root)
    if not files:
        raise IngestError(f"{train_good}: empty folder (no {'/'.join(IMAGE_EXTENSIONS)} images)")
    records += [
        ImageRecord(p, origin_of(p, root), "train", 0, GOOD, None) for p in files
    ]
    defect_dirs = []
    if test_dir.is_dir():
        defect_dirs = sorted(
            p for p in list_entries(test_dir) if p.is_dir() and not p.name.startswith(".")
        )
    for folder in defect_dirs:
        files, skipped = list_files(folder, IMAGE_EXTENSIONS, root)
        ignored += skipped
        if not files:
            raise IngestError(f"{folder}: empty folder (no images)")
        defect = folder.name
        label = 0 if defect == GOOD else 1
        for path in files:
            mask = None
            if label:
                candidate = root / "ground_truth" / defect / f"{path.stem}_mask.png"
                mask = candidate if candidate.is_file() else None
            records.append(
                ImageRecord(path, origin_of(path, root), "test", label, defect, mask)
            )
    if extra_dir is not None and extra_dir.is_dir():
        extra_files, skipped = list_files(extra_dir, IMAGE_EXTENSIONS, extra_dir)
        ignored += skipped
        records += [
            ImageRecord(p, f"{EXTRA_PREFIX}/{p.name}", "train", 0, GOOD, None) for p in extra_files
        ]
    return ImageSource(root=root, records=tuple(records), ignored=tuple(ignored))
