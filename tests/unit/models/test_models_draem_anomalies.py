"""The DRAEM family's synthetic-anomaly generator: coverage, determinism, untouched pixels
outside the mask, half the samples clean, every texture kind, thin scars."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from vigil.models.draem.anomalies import (
    SCAR_MAX_COVERAGE,
    TEXTURES,
    TRAIN_STREAM,
    VAL_STREAM,
    AnomalySettings,
    SyntheticAnomalies,
    anomaly_mask,
    corrupt,
    procedural_texture,
    scar_mask,
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


def _half_width(mask: np.ndarray) -> float:
    """The radius of the largest disc inside the mask, in pixels."""
    return float(cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5).max())


@pytest.mark.parametrize("low,high", [(0.005, 0.25), (0.01, 0.02), (0.1, 0.3)])
def test_scar_masks_are_thin_and_keep_their_coverage_bounds(low, high):
    widths = []
    for i in range(40):
        mask = scar_mask(np.random.default_rng(i), (SIZE, SIZE), low, high)
        assert set(np.unique(mask)) <= {0.0, 1.0}
        # capped at SCAR_MAX_COVERAGE so they stay thin, unless min_coverage asks for more
        top = max(low, min(high, SCAR_MAX_COVERAGE))
        assert low - 1 / mask.size <= mask.mean() <= top + 1 / mask.size, (i, mask.mean())
        widths.append(_half_width(mask))
    if low < SCAR_MAX_COVERAGE < high:  # the cap binds: scars are thinner than blobs of the range
        blobs = [_half_width(anomaly_mask(np.random.default_rng(i), (SIZE, SIZE), low, high))
                 for i in range(40)]
        assert np.median(widths) <= 2.5 and np.median(widths) < np.median(blobs)


def test_scar_share_picks_the_mask_shape_and_zero_keeps_the_blob_draws():
    image = Images(1)[0].permute(1, 2, 0).numpy()
    for i in range(10):
        blob = corrupt(np.random.default_rng(i), image, None, AnomalySettings(probability=1.0))
        same = corrupt(np.random.default_rng(i), image, None,
                       AnomalySettings(probability=1.0, scar_share=0.0))
        scar = corrupt(np.random.default_rng(i), image, None,
                       AnomalySettings(probability=1.0, scar_share=1.0))
        np.testing.assert_array_equal(blob[1], same[1])
        np.testing.assert_array_equal(blob[0], same[0])
        assert scar[1].mean() <= SCAR_MAX_COVERAGE + 1 / scar[1].size


@pytest.mark.parametrize("kind", [k for k in TEXTURES if k != "shifted"])
def test_procedural_textures_are_in_unit_range(kind):
    texture = procedural_texture(np.random.default_rng(1), kind, (SIZE, 40), 3)
    assert texture.shape == (SIZE, 40, 3) and texture.dtype == np.float32
    assert texture.min() >= 0 and texture.max() <= 1


@pytest.mark.parametrize("scar_share", [0.0, 1.0])
def test_corruption_changes_only_pixels_inside_the_mask(scar_share):
    image = Images(1)[0].permute(1, 2, 0).numpy()
    other = image[::-1].copy()
    changed = 0
    settings = AnomalySettings(probability=1.0, scar_share=scar_share)
    for i in range(30):
        out, mask = corrupt(np.random.default_rng(i), image, other, settings)
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
