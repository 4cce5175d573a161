"""The prepare stage's per-item plumbing: load one file, count bad ones, warn, pool, progress.

Shared by ``vigil.data.prepare_images`` and ``vigil.data.prepare_video``. Every module of the
stage logs to the one ``vigil.data.prepare`` logger, so a single name configures the stage.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from vigil.config import ImagePrep
from vigil.data.preprocess import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageDecodeError,
    PreprocessError,
    decode_image,
    decode_mask,
    preprocess_with_mask,
)
from vigil.data.video import VideoDecodeError

log = logging.getLogger("vigil.data.prepare")

ItemError = (ImageDecodeError, PreprocessError, VideoDecodeError)
IGNORED_SHOWN = 5  # ignored files named in the warning (all are in the manifest)


class PrepareError(ValueError):
    """The dataset cannot be prepared; the message names the file, folder or key."""


@dataclass(frozen=True)
class Loaded:
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


def load_file(
    path: Path,
    origin: str,
    mask_file: Path | None,
    prep: ImagePrep,
    reference: np.ndarray | None,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> Loaded:
    """Read, hash, decode and preprocess one image file (and its mask); an image or mask over
    ``max_pixels`` decoded pixels (``prepare.max_image_pixels``) is a bad file, refused unread."""
    try:
        data = path.read_bytes()
    except OSError as error:
        return Loaded(error=f"{origin}: cannot read file ({error.strerror})")
    try:
        image = decode_image(data, origin, max_pixels)
        mask = None
        if mask_file is not None:
            mask = decode_mask(mask_file, f"{origin} mask {mask_file.name}", max_pixels)
        frame, mask = preprocess_with_mask(image, mask, prep, reference)
    except ItemError as error:
        text = str(error)
        return Loaded(error=text if text.startswith(origin) else f"{origin}: {text}")
    except cv2.error as error:  # a codec or shape OpenCV rejects: still this file's problem
        return Loaded(error=f"{origin}: OpenCV cannot process it ({error.err or error})")
    return Loaded(frame=frame, mask=mask, sha256=hashlib.sha256(data).hexdigest())


class BadFiles:
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


def progress_bar(total: int | None, desc: str, enabled: bool) -> tqdm:
    return tqdm(
        total=total, desc=desc, unit="frame", disable=not enabled, leave=False, mininterval=0.5
    )
