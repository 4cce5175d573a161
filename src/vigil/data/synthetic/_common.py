"""Helpers shared by the synthetic generators: seeding, noise textures, atomic folder writes."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

T = TypeVar("T")

# Stream ids keep the random streams of the datasets and splits apart: item i of one split gets
# the same pixels whatever the counts of the other splits are.
DATASET_CAPSULES = 1
DATASET_PRINT = 2


def item_rng(seed: int, *stream: int) -> np.random.Generator:
    """An independent numpy Generator for one item, keyed by ``(seed, *stream)``."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *stream])


def smooth_noise(rng: np.random.Generator, size: int, cell: float) -> np.ndarray:
    """float32 (size, size) noise with unit-ish amplitude and features about ``cell`` px wide."""
    cells = max(2, int(np.ceil(size / max(cell, 1.0))) + 1)
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def grain(rng: np.random.Generator, size: int, sigma: float = 0.7) -> np.ndarray:
    """float32 (size, size) fine grain: white noise slightly blurred, std about 1."""
    noise = rng.standard_normal((size, size)).astype(np.float32)
    blurred = cv2.GaussianBlur(noise, (0, 0), sigma)
    return blurred / max(float(blurred.std()), 1e-6)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Round and clip a float image to uint8."""
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_png(path: Path, image: np.ndarray) -> None:
    """cv2.imwrite that raises (naming the file) instead of returning False."""
    if not cv2.imwrite(str(path), image):
        raise OSError(f"{path}: cv2.imwrite failed")


def build_atomically(target: Path | str, build: Callable[[Path], T]) -> T:
    """Run ``build(tmp)`` in a temp sibling folder of ``target``, then rename it over ``target``.

    Readers never see a half-written dataset: until the rename, the old ``target`` (if any) is
    untouched; on error the temp folder is removed and the old one stays.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the dataset is not
        result = build(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            target.rename(old / target.name)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result
