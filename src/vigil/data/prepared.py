"""The prepared-dataset format: what `prepare` writes and every later stage reads.

``data/prepared/<dataset>/`` holds three files, written atomically (temp folder, then rename):

- ``frames.npy``   uint8 (N, H, W, C): preprocessed images or video frames, RGB or gray, before
                   normalization (normalization happens in ``to_tensor`` so serving shares it).
- ``masks.npy``    uint8 (N, H, W) in {0, 1}: anomaly masks; all zero where an item has none.
- ``manifest.json`` source, modality, preprocessing params, counts, bad files, content hash, and
                   one entry per item (see ``Item``). Video frames of one clip are contiguous and
                   in time order, and a whole clip belongs to one split.

Splits: ``train`` and ``val`` hold normal items only; ``tune`` (sweep objective, threshold
calibration) and ``test`` (the gate) hold labelled normal and anomalous items.

Manifest keys: ``dataset``, ``source`` (as configured), ``modality``, ``params`` (``prep``: the
``ImagePrep``/``VideoPrep`` used, ``split``, ``max_bad_fraction``), ``frame_shape``, ``counts``
(per split: items, anomalous, with_mask, by_defect, clips; plus bad_files, source_files),
``bad_files`` ([{origin, reason}]), ``labelled_anomalies`` (anomalous items; 0: a normal-only
dataset, whose tune and test splits are empty or normal), ``reference_index`` (row of the alignment reference frame
when ``prep.align`` is set, else null: serving aligns to ``frames[reference_index]``),
``reference_origin``, ``ignored_files``, ``content_hash`` (sha256 of arrays, items and params),
``items``; video adds ``labels_csv``, ``target_fps``, ``clip_len`` and ``clips`` ({name: origin,
split, source_fps, resampled, frames}).

``PreparedWriter`` streams rows into the arrays (memory stays flat); ``write_prepared`` writes
in-memory arrays (small data, tests).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np

from vigil.config import ImagePrep

SPLITS = ("train", "val", "tune", "test")
FRAMES_FILE = "frames.npy"
MASKS_FILE = "masks.npy"
MANIFEST_FILE = "manifest.json"

Split = Literal["train", "val", "tune", "test"]


@dataclass(frozen=True, slots=True)
class Item:
    """One image or video frame in the prepared arrays."""

    index: int  # row in frames.npy / masks.npy
    origin: str  # source file (relative to the dataset source) it came from
    split: str
    label: int  # 0 normal, 1 anomalous
    defect: str  # "good" or the defect type
    has_mask: bool
    sha256: str  # of the source file (images) or of the decoded frame (video)
    video: str | None = None  # clip name, video only
    frame: int | None = None  # frame number within the clip after resampling, video only


class PreparedDataError(ValueError):
    """A prepared dataset folder is missing, incomplete, or inconsistent."""


@dataclass(frozen=True)
class PreparedDataset:
    root: Path
    manifest: dict[str, Any]
    frames: np.ndarray  # uint8 (N, H, W, C), memory-mapped
    masks: np.ndarray  # uint8 (N, H, W), memory-mapped
    items: tuple[Item, ...]

    @classmethod
    def load(cls, root: Path | str) -> PreparedDataset:
        root = Path(root)
        missing = [n for n in (FRAMES_FILE, MASKS_FILE, MANIFEST_FILE) if not (root / n).is_file()]
        if missing:
            raise PreparedDataError(
                f"{root}: not a prepared dataset (missing {', '.join(missing)}); "
                "run `dvc repro prepare` first"
            )
        manifest = json.loads((root / MANIFEST_FILE).read_text())
        frames = np.load(root / FRAMES_FILE, mmap_mode="r")
        masks = np.load(root / MASKS_FILE, mmap_mode="r")
        items = tuple(Item(**entry) for entry in manifest["items"])
        if not (len(items) == frames.shape[0] == masks.shape[0]):
            raise PreparedDataError(
                f"{root}: {len(items)} manifest items but {frames.shape[0]} frames and "
                f"{masks.shape[0]} masks"
            )
        return cls(root=root, manifest=manifest, frames=frames, masks=masks, items=items)

    @property
    def name(self) -> str:
        return self.manifest["dataset"]

    @property
    def modality(self) -> str:
        return self.manifest["modality"]

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]

    @property
    def prep(self) -> ImagePrep:
        """The preprocessing the frames went through (manifest ``params.prep``): the one source
        training, evaluation and the package use."""
        from vigil.config import VideoPrep

        try:
            raw = self.manifest["params"]["prep"]
        except (KeyError, TypeError):
            raise PreparedDataError(
                f"{self.root}: manifest.json has no params.prep (prepared by an older vigil); "
                "rerun `dvc repro -f prepare@<dataset>`"
            ) from None
        return (VideoPrep if self.modality == "video" else ImagePrep).model_validate(raw)

    @property
    def channels(self) -> int:
        return int(self.frames.shape[3])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    def indices(self, split: Split) -> np.ndarray:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return np.array([it.index for it in self.items if it.split == split], dtype=np.int64)

    def labels(self, split: Split) -> np.ndarray:
        return np.array([it.label for it in self.items if it.split == split], dtype=np.int64)

    def defects(self, split: Split) -> list[str]:
        return [it.defect for it in self.items if it.split == split]

    def videos(self, split: Split) -> list[np.ndarray]:
        """Row indices of each clip in ``split``, in time order (video datasets only)."""
        clips: dict[str, list[int]] = {}
        for it in self.items:
            if it.split == split and it.video is not None:
                clips.setdefault(it.video, []).append(it.index)
        return [np.array(rows, dtype=np.int64) for rows in clips.values()]


def write_prepared(
    root: Path | str,
    frames: np.ndarray,
    masks: np.ndarray,
    manifest: dict[str, Any],
) -> Path:
    """Write the three files atomically: into ``<root>.tmp-*`` then rename over ``root``."""
    root = Path(root)
    tmp = _temp_dir(root)
    try:
        np.save(tmp / FRAMES_FILE, np.ascontiguousarray(frames, dtype=np.uint8))
        np.save(tmp / MASKS_FILE, np.ascontiguousarray(masks, dtype=np.uint8))
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
        _replace_dir(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _temp_dir(root: Path) -> Path:
    root.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))


def _replace_dir(tmp: Path, root: Path) -> None:
    """Rename the finished ``tmp`` folder over ``root`` (the old one is removed afterwards)."""
    if root.exists():
        old = root.with_name(f".{root.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        root.rename(old)
        tmp.rename(root)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(root)


# --- streaming writer ------------------------------------------------------------------------

_NPY_HEADER_LEN = 128  # fixed, so the final shape can be written over the placeholder


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """A .npy v1.0 header for a C-ordered uint8 array of ``shape``, exactly 128 bytes long."""
    body = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    body = body.ljust(_NPY_HEADER_LEN - 10 - 1) + "\n"
    if len(body) != _NPY_HEADER_LEN - 10:
        raise ValueError(f"shape {shape} too large for a .npy header")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin1")


class ArrayWriter:
    """Appends uint8 rows of one shape to a .npy file, one at a time (memory stays flat).

    Plain sequential writes rather than a memmap: written pages go to the page cache, not to
    this process's resident memory. The header is rewritten with the final row count on
    ``close``; a running sha256 of the data is kept for the content hash.
    """

    def __init__(self, path: Path | str, row_shape: tuple[int, ...]):
        self.path = Path(path)
        self.row_shape = tuple(int(n) for n in row_shape)
        self.count = 0
        self.sha256 = hashlib.sha256()
        self._file = self.path.open("wb")
        self._file.write(_npy_header((0, *self.row_shape)))

    def append(self, row: np.ndarray) -> int:
        """Write one uint8 row of ``row_shape``; returns its row index."""
        if row.shape != self.row_shape or row.dtype != np.uint8:
            raise ValueError(
                f"{self.path.name}: row of shape {row.shape} {row.dtype}, expected "
                f"{self.row_shape} uint8"
            )
        data = np.ascontiguousarray(row).tobytes()
        self._file.write(data)
        self.sha256.update(data)
        self.count += 1
        return self.count - 1

    def close(self) -> int:
        if not self._file.closed:
            self._file.seek(0)
            self._file.write(_npy_header((self.count, *self.row_shape)))
            self._file.close()
        return self.count


class PreparedWriter:
    """Streams a prepared dataset into a temp folder; ``commit`` renames it over ``root``.

    Usage: ``with PreparedWriter(root, (H, W, C)) as w: w.append(frame, mask); ...;
    w.commit(manifest)``. Leaving the block without ``commit`` (an error) removes the temp folder.
    """

    def __init__(self, root: Path | str, frame_shape: tuple[int, int, int]):
        self.root = Path(root)
        self.frame_shape = tuple(frame_shape)
        self.tmp = _temp_dir(self.root)
        self.frames = ArrayWriter(self.tmp / FRAMES_FILE, self.frame_shape)
        self.masks = ArrayWriter(self.tmp / MASKS_FILE, self.frame_shape[:2])
        self.committed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.frames.close()
        self.masks.close()
        if not self.committed:
            shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def count(self) -> int:
        return self.frames.count

    def append(self, frame: np.ndarray, mask: np.ndarray) -> int:
        """Append frame uint8 (H, W, C) and mask uint8 (H, W); returns the row index."""
        self.masks.append(mask)
        return self.frames.append(frame)

    def data_hash(self) -> str:
        """sha256 over the frames and masks written so far."""
        return hashlib.sha256(
            (self.frames.sha256.hexdigest() + self.masks.sha256.hexdigest()).encode()
        ).hexdigest()

    def commit(self, manifest: dict[str, Any]) -> Path:
        self.frames.close()
        self.masks.close()
        with (self.tmp / MANIFEST_FILE).open("w") as handle:
            json.dump(manifest, handle, indent=1)  # streamed: no second copy as one string
        _replace_dir(self.tmp, self.root)
        self.committed = True
        return self.root
