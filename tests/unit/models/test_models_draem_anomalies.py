"""The DRAEM family's synthetic-anomaly generator: coverage, determinism, untouched pixels
outside the mask, half the samples clean, every texture kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vigil.models.draem.anomalies import (
    TEXTURES,
    TRAIN_STREAM,
    VAL_STREAM,
    AnomalySettings,
    SyntheticAnomalies,
    anomaly_mask,
    corrupt,
    procedural_texture,
    unpack,
)

SIZE = 48


class Images(torch.utils.data.Dataset):
    """Smooth random normal images (C, H, W) in [0, 1]."""

    def __init__(self, n: int, channels: int = 3, size: int = SIZE) -> None:
        rng = np.random.default_rng(7)
        base = rng.uniform(0.2, 0.8, (n, channels, 1, 1))
        ramp = np.linspace(0, 0.2, size)[None, None, None, :]
        self.images = torch.from_numpy((base + ramp).astype(np.float32)).expand(n, channels, size, size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i].clone()


@pytest.mark.parametrize("low,high", [(0.005, 0.25), (0.1, 0.1), (0.3, 0.6)])
def test_mask_coverage_stays_within_the_bounds(low, high):
    for i in range(40):
        mask = anomaly_mask(np.random.default_rng(i), (SIZE, SIZE), low, high)
        assert set(np.unique(mask)) <= {0.0, 1.0}
        coverage = mask.mean()
        assert low - 1 / mask.size <= coverage <= high + 1 / mask.size, (i, coverage)


@pytest.mark.parametrize("kind", [k for k in TEXTURES if k != "shifted"])
def test_procedural_textures_are_in_unit_range(kind):
    texture = procedural_texture(np.random.default_rng(1), kind, (SIZE, 40), 3)
    assert texture.shape == (SIZE, 40, 3) and texture.dtype == np.float32
    assert texture.min() >= 0 and texture.max() <= 1


def test_corruption_changes_only_pixels_inside_the_mask():
    image = Images(1)[0].permute(1, 2, 0).numpy()
    other = image[::-1].copy()
    changed = 0
    for i in range(30):
        out, mask = corrupt(np.random.default_rng(i), image, other, AnomalySettings(probability=1.0))
        outside = mask == 0
        assert mask.any()
        np.testing.assert_array_equal(out[outside], image[outside])
        changed += int((np.abs(out - image).max(axis=2) > 1e-4)[mask == 1].mean() > 0.5)
    assert changed >= 20  # the anomalies are visible (opacity < 1)


def test_samples_are_reproducible_under_a_seed_and_vary_with_epoch_and_stream():
    images = Images(6)
    a = SyntheticAnomalies(images, AnomalySettings(), seed=3)
    b = SyntheticAnomalies(images, AnomalySettings(), seed=3)
    for i in reversed(range(len(images))):  # order does not matter
        assert torch.equal(a[i], b[i])
    first = torch.stack([a[i] for i in range(len(a))])
    a.epoch = 1
    assert not torch.equal(first, torch.stack([a[i] for i in range(len(a))]))
    val = SyntheticAnomalies(images, AnomalySettings(), seed=3, stream=VAL_STREAM)
    assert not torch.equal(first, torch.stack([val[i] for i in range(len(val))]))
    assert TRAIN_STREAM != VAL_STREAM


def test_half_the_samples_are_clean_and_packing_round_trips():
    images = Images(8)
    data = SyntheticAnomalies(images, AnomalySettings(probability=0.5), seed=0)
    clean = total = 0
    for epoch in range(25):
        data.epoch = epoch
        batch = torch.stack([data[i] for i in range(len(data))])
        corrupted, target, mask = unpack(batch, 3)
        assert mask.shape == (8, 1, SIZE, SIZE)
        assert torch.equal(target, torch.stack([images[i] for i in range(8)]))
        empty = mask.flatten(1).amax(1) == 0
        assert torch.equal(corrupted[empty], target[empty])  # a clean sample is the image itself
        clean += int(empty.sum())
        total += len(empty)
    assert 0.4 <= clean / total <= 0.6, clean / total


def test_random_crops_have_the_crop_size_and_gray_images_work():
    data = SyntheticAnomalies(Images(3, channels=1), AnomalySettings(probability=1.0), seed=0, crop=32)
    sample = data[0]
    assert sample.shape == (3, 32, 32)
    corrupted, clean, mask = unpack(sample[None], 1)
    assert mask.sum() > 0 and torch.equal(corrupted[mask == 0], clean[mask == 0])
