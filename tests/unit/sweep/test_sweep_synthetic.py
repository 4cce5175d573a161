"""Synthetic evidence for normal-only image datasets: the val set with pasted anomalies, and the
sweep objective measured on it when the tune split has no anomaly masks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from vigil.config import ImagePrep
from vigil.data.prepared import PreparedDataset, write_prepared
from vigil.models.conv_ae.config import ConvAEConfig
from vigil.models.conv_ae.network import ConvAutoencoder
from vigil.sweep.objective import NoAnomaliesError, check_tune_split, raw_detector, tune_errors
from vigil.sweep.synthetic import synthetic_val

SIZE = 16


def normal_only(root: Path, n_val: int = 3, seed: int = 0) -> Path:
    """A prepared normal-only image dataset: 6 train, ``n_val`` val, no tune or test items."""
    rng = np.random.default_rng(seed)
    layout = ["train"] * 6 + ["val"] * n_val
    frames = rng.integers(40, 80, (len(layout), SIZE, SIZE, 3)).astype(np.uint8)
    items = [
        {"index": i, "origin": f"train/good/{i}.png", "split": s, "label": 0, "defect": "good",
         "has_mask": False, "sha256": "0" * 64}
        for i, s in enumerate(layout)
    ]
    manifest = {
        "dataset": "normalonly", "modality": "image", "source": "tests",
        "content_hash": hashlib.sha256(frames.tobytes()).hexdigest(),
        "params": {"prep": ImagePrep(size=(SIZE, SIZE)).model_dump(mode="json"),
                   "split": {"seed": seed}},
        "labelled_anomalies": 0,
        "items": items,
    }
    return write_prepared(root, frames, np.zeros(frames.shape[:3], np.uint8), manifest)


def test_synthetic_val_pastes_one_anomaly_per_copy_and_nothing_outside_it(tmp_path):
    data = PreparedDataset.load(normal_only(tmp_path / "d"))
    val = np.asarray(data.frames[data.indices("val")])
    synthetic = synthetic_val(data)
    n = len(val)
    assert synthetic.frames.shape == (2 * n, SIZE, SIZE, 3)
    assert synthetic.labels.tolist() == [0] * n + [1] * n
    np.testing.assert_array_equal(synthetic.frames[:n], val)  # the clean half is the val split
    assert not synthetic.masks[:n].any()
    for i in range(n):
        mask = synthetic.masks[n + i]
        assert 0 < mask.mean() <= 0.25 + 1 / mask.size  # the generator's coverage bounds
        np.testing.assert_array_equal(synthetic.frames[n + i][~mask], val[i][~mask])
    assert (synthetic.frames[n:] != val).any()


def test_synthetic_val_is_reproducible_and_follows_the_seed(tmp_path):
    data = PreparedDataset.load(normal_only(tmp_path / "d"))
    first, again = synthetic_val(data), synthetic_val(data)
    np.testing.assert_array_equal(first.frames, again.frames)
    np.testing.assert_array_equal(first.masks, again.masks)
    other = synthetic_val(data, seed=123)
    assert not np.array_equal(first.masks, other.masks)


def test_objective_on_a_normal_only_dataset_uses_synthetic_evidence(tmp_path):
    data = PreparedDataset.load(normal_only(tmp_path / "d"))
    assert check_tune_split(data) == "synthetic"
    torch.manual_seed(0)
    model = ConvAutoencoder(3, ConvAEConfig(depth=2, filters=4, latent_channels=2)).eval()
    errors = tune_errors(model, data, "conv_ae", max_normal_error=10.0)
    assert errors.evidence == "synthetic" and errors.as_dict()["evidence"] == "synthetic"
    synthetic = synthetic_val(data)
    maps = raw_detector(model, data, "conv_ae").score_prepared(synthetic.frames).maps
    assert errors.total_error == pytest.approx(maps.mean(), rel=1e-5)
    assert errors.anomaly_error == pytest.approx(maps[synthetic.masks].mean(), rel=1e-5)
    assert errors.normal_error == pytest.approx(maps[synthetic.labels == 0].mean(), rel=1e-5)
    assert errors.feasible and errors.objective == pytest.approx(errors.ratio)


def test_image_dataset_with_neither_tune_masks_nor_val_images_still_fails(tmp_path):
    data = PreparedDataset.load(normal_only(tmp_path / "d", n_val=0))
    with pytest.raises(NoAnomaliesError, match="ground_truth"):
        check_tune_split(data)
