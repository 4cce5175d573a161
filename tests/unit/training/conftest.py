"""Tiny prepared datasets built in place with ``write_prepared`` (no generator or prepare code)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from vigil.config import Params, parse_params
from vigil.data.prepared import write_prepared


def _blob_image(rng: np.random.Generator, size: int, channels: int) -> np.ndarray:
    """A gray-green background with one soft bright blob: the 'normal' look."""
    image = np.full((size, size, channels), 60, np.uint8)
    center = tuple(int(c) for c in rng.integers(size // 4, 3 * size // 4, 2))
    cv2.circle(image, center, size // 5, (200,) * channels, -1)
    return cv2.GaussianBlur(image, (5, 5), 0).reshape(size, size, channels)


def _scratch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Add a dark line (the 'defect'); returns (image, mask)."""
    size = image.shape[0]
    p1 = tuple(int(c) for c in rng.integers(2, size - 2, 2))
    p2 = tuple(int(c) for c in rng.integers(2, size - 2, 2))
    out = image.copy()
    cv2.line(out, p1, p2, (0,) * image.shape[2], 2)
    mask = np.zeros((size, size), np.uint8)
    cv2.line(mask, p1, p2, 1, 2)
    return out.reshape(image.shape), mask


def _manifest(name: str, modality: str, frames: np.ndarray, items: list[dict]) -> dict:
    prep = {"size": list(frames.shape[1:3]), "channels": int(frames.shape[3])}
    if modality == "video":
        prep.update(clip_len=4, fps=None)
    return {
        "dataset": name,
        "modality": modality,
        "source": f"tests/{name}",
        "params": {"prep": prep},
        "content_hash": hashlib.sha256(frames.tobytes()).hexdigest(),
        "items": items,
    }


def _item(index: int, split: str, label: int, **extra) -> dict:
    return {
        "index": index, "origin": f"item{index}.png", "split": split, "label": label,
        "defect": "scratch" if label else "good", "has_mask": bool(label), "sha256": "0" * 64,
        **extra,
    }


def make_image_dataset(
    root: Path, size: int = 32, seed: int = 0, labelled_tune: bool = True
) -> Path:
    """16 train, 4 val, 6 tune (3 anomalous; none when not ``labelled_tune``), 4 test (2
    anomalous) RGB images."""
    rng = np.random.default_rng(seed)
    layout = [("train", 0)] * 16 + [("val", 0)] * 4
    layout += [("tune", 0), ("tune", int(labelled_tune))] * 3
    layout += [("test", 0), ("test", 1)] * 2
    frames, masks, items = [], [], []
    for index, (split, label) in enumerate(layout):
        image = _blob_image(rng, size, 3)
        mask = np.zeros((size, size), np.uint8)
        if label:
            image, mask = _scratch(image, rng)
        frames.append(image)
        masks.append(mask)
        items.append(_item(index, split, label))
    frames_a = np.stack(frames)
    write_prepared(root, frames_a, np.stack(masks), _manifest("tiny", "image", frames_a, items))
    return root


def make_video_dataset(root: Path, size: int = 32, n_frames: int = 12, seed: int = 0) -> Path:
    """Gray clips of a blob moving right: 2 train, 1 val, 1 tune (frames 6..8 anomalous)."""
    rng = np.random.default_rng(seed)
    layout = [("a", "train"), ("b", "train"), ("c", "val"), ("d", "tune")]
    frames, masks, items = [], [], []
    for clip, split in layout:
        y = int(rng.integers(size // 4, 3 * size // 4))
        for t in range(n_frames):
            image = np.full((size, size), 40, np.uint8)
            cv2.circle(image, (4 + 2 * t, y), 4, 220, -1)
            mask = np.zeros((size, size), np.uint8)
            label = int(split == "tune" and 6 <= t <= 8)
            if label:
                cv2.rectangle(image, (2, 2), (10, 10), 255, -1)
                mask[2:11, 2:11] = 1
            index = len(frames)
            frames.append(image[..., None])
            masks.append(mask)
            items.append(_item(index, split, label, video=clip, frame=t))
    frames_a = np.stack(frames)
    write_prepared(root, frames_a, np.stack(masks), _manifest("tinyvid", "video", frames_a, items))
    return root


def tune_clip_as_test(data_dir: Path) -> Path:
    """Copy the tiny video dataset's tune clip as a test clip (clip ``t``), so the evaluate
    stage can run on it."""
    from vigil.data.prepared import PreparedDataset

    data = PreparedDataset.load(data_dir)
    manifest = dict(data.manifest)
    rows = data.indices("tune")
    frames = np.concatenate([np.asarray(data.frames), np.asarray(data.frames[rows])])
    masks = np.concatenate([np.asarray(data.masks), np.asarray(data.masks[rows])])
    items = list(manifest["items"])
    for i, row in enumerate(rows):
        items.append({**items[int(row)], "index": len(data.items) + i, "split": "test",
                      "video": "t"})
    manifest["items"] = items
    write_prepared(data_dir, frames, masks, manifest)
    return data_dir


def tiny_params(video_family: str = "convlstm", **train) -> Params:
    """Params shrunk for tests: tiny models, 1 epoch, CPU; the families are the seeds'
    ``conv_ae`` and (unless named) ``convlstm`` (these tests exercise the machinery, not a
    family)."""
    return parse_params(
        {
            "data": {
                "datasets": {
                    "tiny": {"source": "tests/tiny", "modality": "image"},
                    "tinyvid": {"source": "tests/tinyvid", "modality": "video"},
                }
            },
            "prepare": {
                "image": {"size": [32, 32], "channels": 3},
                "video": {"size": [32, 32], "channels": 1, "clip_len": 4},
            },
            "model": {
                "image_family": "conv_ae",
                "video_family": video_family,
                "conv_ae": {"depth": 2, "filters": 8, "latent_channels": 4},
                "convlstm": {"encoder_depth": 2, "filters": 8, "hidden_channels": 8},
                "future_frame": {"context": 2, "depth": 2, "filters": 4,
                                 "bottleneck_channels": 4},
            },
            "train": {"max_epochs": 1, "batch_size": 8, "accelerator": "cpu",
                      "log_images_every_n_epochs": 1, **train},
        }
    )


@pytest.fixture()
def image_dataset(tmp_path: Path) -> Path:
    return make_image_dataset(tmp_path / "data" / "prepared" / "tiny")


@pytest.fixture()
def video_dataset(tmp_path: Path) -> Path:
    return make_video_dataset(tmp_path / "data" / "prepared" / "tinyvid")
