"""The tune-split objective on real (tiny) trained models, and its bad-input errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from vigil.config import ImagePrep, VideoPrep
from vigil.data.prepared import PreparedDataset, write_prepared
from vigil.models.conv_ae.config import ConvAEConfig
from vigil.models.conv_ae.network import ConvAutoencoder
from vigil.models.convlstm.config import ConvLSTMConfig
from vigil.models.convlstm.network import FramePredictor
from vigil.sweep.objective import (
    INFEASIBLE_OBJECTIVE,
    NoAnomaliesError,
    check_tune_split,
    tune_errors,
)

SIZE = 16


def make_images(root: Path, anomalies: bool = True, seed: int = 0) -> Path:
    """8 train, 2 val, 4 tune (2 with a bright square + mask when ``anomalies``) RGB 16x16."""
    rng = np.random.default_rng(seed)
    layout = ["train"] * 8 + ["val"] * 2 + ["tune"] * 4
    frames = rng.integers(40, 80, (len(layout), SIZE, SIZE, 3)).astype(np.uint8)
    masks = np.zeros((len(layout), SIZE, SIZE), np.uint8)
    items = []
    for i, split in enumerate(layout):
        label = int(anomalies and split == "tune" and i % 2 == 1)
        if label:
            frames[i, 4:9, 4:9] = 250
            masks[i, 4:9, 4:9] = 1
        items.append(
            {
                "index": i,
                "origin": f"i{i}.png",
                "split": split,
                "label": label,
                "defect": "spot" if label else "good",
                "has_mask": bool(label),
                "sha256": "0" * 64,
            }
        )
    manifest = {
        "dataset": "tinysweep",
        "modality": "image",
        "source": "tests",
        "content_hash": hashlib.sha256(frames.tobytes()).hexdigest(),
        "params": {"prep": ImagePrep(size=(SIZE, SIZE)).model_dump(mode="json")},
        "items": items,
    }
    return write_prepared(root, frames, masks, manifest)


def make_video(root: Path, anomalies: bool = True) -> Path:
    """Gray 16x16 clips of 8 frames: 2 train, 1 val, 1 tune (frames 4-5 anomalous)."""
    frames, masks, items = [], [], []
    for clip, split in [("a", "train"), ("b", "train"), ("c", "val"), ("d", "tune")]:
        for t in range(8):
            image = np.full((SIZE, SIZE, 1), 40, np.uint8)
            image[6:10, t : t + 4] = 200
            mask = np.zeros((SIZE, SIZE), np.uint8)
            label = int(anomalies and split == "tune" and t in (4, 5))
            if label:
                image[0:4, 10:14] = 255
                mask[0:4, 10:14] = 1
            items.append(
                {
                    "index": len(frames),
                    "origin": f"{clip}/{t}.png",
                    "split": split,
                    "label": label,
                    "defect": "flash" if label else "good",
                    "has_mask": bool(label),
                    "sha256": "0" * 64,
                    "video": clip,
                    "frame": t,
                }
            )
            frames.append(image)
            masks.append(mask)
    frames_a = np.stack(frames)
    manifest = {
        "dataset": "tinysweepvid",
        "modality": "video",
        "source": "tests",
        "content_hash": hashlib.sha256(frames_a.tobytes()).hexdigest(),
        "params": {"prep": VideoPrep(size=(SIZE, SIZE), channels=1).model_dump(mode="json")},
        "items": items,
    }
    return write_prepared(root, frames_a, np.stack(masks), manifest)


def test_image_ratio_matches_a_direct_computation(tmp_path):
    data = PreparedDataset.load(make_images(tmp_path / "img"))
    torch.manual_seed(0)
    model = ConvAutoencoder(3, ConvAEConfig(depth=2, filters=4, latent_channels=2)).eval()
    errors = tune_errors(model, data, "conv_ae", max_normal_error=10.0)
    rows = data.indices("tune")
    x = torch.from_numpy(np.asarray(data.frames[rows])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        maps = model(x).error_map[:, 0].numpy()
    masks = np.asarray(data.masks[rows], bool)
    assert errors.total_error == pytest.approx(maps.mean(), rel=1e-5)
    assert errors.anomaly_error == pytest.approx(maps[masks].mean(), rel=1e-5)
    assert errors.normal_error == pytest.approx(maps[data.labels("tune") == 0].mean(), rel=1e-5)
    assert errors.ratio == pytest.approx(errors.anomaly_error / errors.total_error)
    assert errors.feasible and errors.objective == errors.ratio
    assert errors.ratio > 1.0  # the bright squares are far from anything the model makes


def test_normal_error_cap_marks_the_trial_infeasible(tmp_path):
    data = PreparedDataset.load(make_images(tmp_path / "img"))
    model = ConvAutoencoder(3, ConvAEConfig(depth=2, filters=4, latent_channels=2))
    errors = tune_errors(model, data, "conv_ae", max_normal_error=1e-9)
    assert not errors.feasible
    assert errors.objective == INFEASIBLE_OBJECTIVE
    assert errors.ratio > 0  # still reported


def test_video_ratio_uses_anomalous_frames(tmp_path):
    data = PreparedDataset.load(make_video(tmp_path / "vid"))
    model = FramePredictor(1, ConvLSTMConfig(encoder_depth=1, filters=4, hidden_channels=4))
    errors = tune_errors(model, data, "convlstm", 10.0)
    assert errors.ratio == pytest.approx(errors.anomaly_error / errors.total_error)
    assert errors.anomaly_error > errors.normal_error > 0


@pytest.mark.parametrize("maker", [make_video])  # images: synthetic evidence (test_sweep_synthetic)
def test_tune_split_without_anomalies_explains_how_to_label(tmp_path, maker):
    data = PreparedDataset.load(maker(tmp_path / "d", anomalies=False))
    with pytest.raises(NoAnomaliesError) as info:
        check_tune_split(data)
    text = str(info.value)
    assert "labelled anomalies" in text
    assert ("ground_truth" in text) if data.modality == "image" else ("frame_labels.csv" in text)
