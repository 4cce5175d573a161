"""Torch datasets over a ``PreparedDataset``: images for the autoencoder, clips for the predictor.

Frames stay uint8 in the (memory-mapped) prepared arrays and are normalized per item with
``vigil.data.preprocess.to_tensor``, the same function serving uses.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from vigil.config import ImagePrep
from vigil.data.prepared import PreparedDataset, Split
from vigil.data.preprocess import to_tensor


class EmptySplitError(ValueError):
    """A split that training needs has no items."""


class ImageDataset(Dataset):
    """Items of one split -> float32 tensors (C, H, W) in model input space."""

    def __init__(self, data: PreparedDataset, split: Split, prep: ImagePrep) -> None:
        self.data = data
        self.prep = prep
        self.rows = data.indices(split)
        if len(self.rows) == 0:
            raise EmptySplitError(f"{data.root}: split {split!r} has no items")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> torch.Tensor:
        return to_tensor(self.data.frames[self.rows[i]], self.prep)[0]


def clip_windows(clips: list[np.ndarray], clip_len: int, stride: int) -> list[np.ndarray]:
    """Row indices of every window of ``clip_len`` consecutive frames, ``stride`` apart, within
    each clip; a clip shorter than ``clip_len`` contributes nothing."""
    windows = []
    for rows in clips:
        for start in range(0, len(rows) - clip_len + 1, stride):
            windows.append(rows[start : start + clip_len])
    return windows


class ClipDataset(Dataset):
    """Fixed-length clips of one split -> float32 tensors (T, C, H, W) in model input space."""

    def __init__(
        self, data: PreparedDataset, split: Split, prep: ImagePrep, clip_len: int, stride: int
    ) -> None:
        self.data = data
        self.prep = prep
        self.windows = clip_windows(data.videos(split), clip_len, stride)
        if not self.windows:
            lengths = [len(c) for c in data.videos(split)]
            raise EmptySplitError(
                f"{data.root}: split {split!r} has no clip of {clip_len} frames "
                f"(clip lengths: {lengths}); lower prepare.video.clip_len"
            )

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> torch.Tensor:
        return to_tensor(self.data.frames[self.windows[i]], self.prep)
