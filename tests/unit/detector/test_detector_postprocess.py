"""The post-processing chain on synthetic error maps with a known blob."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from vigil.config import EvaluateConfig
from vigil.detector import postprocess as pp

REPO = Path(__file__).resolve().parents[3]


def blob_map(size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Low noise + a 12x12 hot square + isolated hot pixels; returns (map, true blob mask)."""
    rng = np.random.default_rng(seed)
    error = rng.uniform(0.0, 0.01, (size, size)).astype(np.float32)
    truth = np.zeros((size, size), np.uint8)
    truth[20:32, 30:42] = 1
    error[truth == 1] = 0.5
    hot = rng.integers(0, size, (15, 2))
    hot = hot[truth[hot[:, 0], hot[:, 1]] == 0]
    error[hot[:, 0], hot[:, 1]] = 1.0  # salt noise: larger than the blob itself
    return error, truth


def test_chain_on_a_blob_keeps_the_blob_and_drops_hot_pixels():
    cfg = EvaluateConfig(median_blur=7, min_area=10, score="max")
    error, truth = blob_map()
    smoothed = pp.smooth_map(error, cfg)
    assert smoothed.dtype == np.float32 and smoothed.shape == error.shape
    assert smoothed[truth == 0].max() < 0.02  # isolated hot pixels are gone
    mask = pp.binarize(smoothed, 0.25, cfg.min_area)
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.8
    # Without the median, a max score is set by a single hot pixel; with it, by the blob.
    assert pp.image_score(error, cfg) == pytest.approx(1.0)
    assert pp.image_score(smoothed, cfg) == pytest.approx(0.5, abs=0.01)


def test_binarize_drops_components_under_min_area():
    maps = np.zeros((2, 20, 20), np.float32)
    maps[:, 2:4, 2:4] = 1.0  # 4 px
    maps[:, 10:15, 10:15] = 1.0  # 25 px
    masks = pp.binarize(maps, 0.5, min_area=10)
    assert masks.shape == (2, 20, 20) and masks.dtype == np.uint8
    assert masks[:, 2:4, 2:4].sum() == 0
    assert masks[:, 10:15, 10:15].all()
    assert pp.binarize(maps[0], 0.5, min_area=0).sum() == 29


@pytest.mark.parametrize("kernel", [3, 5, 7, 9])
def test_median_blur_matches_an_exact_float_median(kernel):
    rng = np.random.default_rng(kernel)
    maps = rng.gamma(2.0, 0.01, (3, 40, 40)).astype(np.float32)
    out = pp.median_blur(maps, kernel)
    for m, o in zip(maps, out):
        exact = ndimage.median_filter(m, size=kernel, mode="nearest")
        # Float kernels are exact; larger ones are quantized against the map's max.
        assert np.abs(o - exact).max() <= m.max() / 255 + 1e-7


def test_median_blur_rejects_even_kernels_and_keeps_non_finite_maps_broken():
    with pytest.raises(ValueError, match="odd"):
        pp.median_blur(np.zeros((8, 8), np.float32), 4)
    bad = np.zeros((8, 8), np.float32)
    bad[0, 0] = np.nan
    assert np.isnan(pp.median_blur(bad, 7)).all()  # stays visibly broken
    assert (pp.median_blur(np.zeros((8, 8), np.float32), 7) == 0).all()


def test_predicted_error_mask_subtracts_and_clips_only_when_enabled():
    error = np.array([[0.5, 0.1], [0.2, 0.0]], np.float32)
    predicted = np.array([[0.2, 0.3], [0.2, 0.1]], np.float32)
    np.testing.assert_allclose(pp.mask_predicted_error(error, predicted), [[0.3, 0], [0, 0]])
    on = EvaluateConfig(use_error_head=True, median_blur=1)
    off = EvaluateConfig(use_error_head=False, median_blur=1)
    np.testing.assert_allclose(pp.smooth_map(error, on, predicted), [[0.3, 0], [0, 0]])
    np.testing.assert_allclose(pp.smooth_map(error, off, predicted), error)
    with pytest.raises(ValueError, match="shape"):
        pp.mask_predicted_error(error, predicted[:1])


def test_image_score_summaries_on_a_batch():
    rng = np.random.default_rng(1)
    maps = rng.random((4, 10, 10)).astype(np.float32)
    flat = maps.reshape(4, -1)
    np.testing.assert_allclose(pp.image_score(maps, EvaluateConfig(score="mean")), flat.mean(1),
                               rtol=1e-6)
    np.testing.assert_allclose(pp.image_score(maps, EvaluateConfig(score="max")), flat.max(1))
    cfg = EvaluateConfig(score="topk_mean", topk_fraction=0.05)  # 5 of 100 pixels
    expected = np.sort(flat, axis=1)[:, -5:].mean(1)
    np.testing.assert_allclose(pp.image_score(maps, cfg), expected, rtol=1e-6)
    assert isinstance(pp.image_score(maps[0], cfg), float)
    tiny = EvaluateConfig(score="topk_mean", topk_fraction=1e-6)  # at least one pixel
    np.testing.assert_allclose(pp.image_score(maps, tiny), flat.max(1))


def test_roi_zeroes_outside_and_rejects_a_roi_that_does_not_fit():
    maps = np.ones((2, 10, 12), np.float32)
    out = pp.apply_roi(maps, (2, 3, 4, 5))
    assert out.sum() == 2 * 4 * 5 and out[:, 3:8, 2:6].all()
    assert pp.apply_roi(maps, None) is maps
    with pytest.raises(ValueError, match="does not fit"):
        pp.apply_roi(maps, (10, 0, 4, 4))
    cfg = EvaluateConfig(median_blur=1, score="max", roi=(2, 3, 4, 5))  # the ROI is cfg's
    hot = np.zeros((10, 12), np.float32)
    hot[0, 0] = 1.0
    assert pp.image_score(pp.smooth_map(hot, cfg), cfg) == 0.0


def test_roi_from_params_reaches_the_chain(tmp_path):
    """``evaluate.roi`` in a params file is validated and cuts the image score."""
    import yaml

    from vigil.config import load_params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["evaluate"].update(roi=[2, 3, 4, 5], median_blur=1, score="max")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_params(path).evaluate
    assert cfg.roi == (2, 3, 4, 5)
    hot = np.zeros((10, 12), np.float32)
    hot[0, 0] = 1.0  # outside the region of interest
    assert pp.image_score(pp.smooth_map(hot, cfg), cfg) == 0.0
    hot[4, 3] = 0.5  # inside
    assert pp.image_score(pp.smooth_map(hot, cfg), cfg) == 0.5


@pytest.mark.parametrize(
    ("roi", "message"),
    [
        ([0, 0, 0, 4], "evaluate.roi: Value error, roi size (w=0, h=4) must be positive"),
        ([-1, 0, 4, 4], "evaluate.roi: Value error, roi origin (x=-1, y=0) must not be negative"),
        ([0, 0, 4], "evaluate.roi"),
        ([60, 0, 8, 8], "evaluate.roi [60, 0, 8, 8] (x, y, w, h) does not fit inside the 64x64"),
    ],
)
def test_bad_roi_is_a_config_error_naming_the_file_and_field(tmp_path, roi, message):
    import yaml

    from vigil.config import ConfigError, load_params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["evaluate"]["roi"] = roi
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as error:
        load_params(path)
    assert str(path) in str(error.value) and message in str(error.value), str(error.value)


def test_overlay_is_blue_where_cold_and_red_where_hot():
    image = np.full((32, 32, 3), 128, np.uint8)
    heat = np.zeros((32, 32), np.float32)
    heat[:, 16:] = 1.0
    out = pp.overlay(image, heat, vmax=1.0)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    b, _, r = out[..., 0].astype(int), out[..., 1], out[..., 2].astype(int)
    assert (b[:, :16] > r[:, :16] + 30).all()  # BGR: blue on the cold half
    assert (r[:, 16:] > b[:, 16:] + 30).all()  # red on the hot half
    gray = pp.overlay(np.zeros((64, 64, 1), np.uint8), heat, vmax=1.0)  # map resized to image
    assert gray.shape == (64, 64, 3)
    with pytest.raises(ValueError, match="vmax"):
        pp.overlay(image, heat, vmax=0.0)


def test_map_to_input_resizes_or_places_the_map_in_the_roi():
    anomaly_map = np.ones((8, 8), np.float32)
    whole = pp.map_to_input(anomaly_map, (40, 60))
    assert whole.shape == (40, 60) and np.allclose(whole, 1.0)
    placed = pp.map_to_input(anomaly_map, (40, 60), roi=(10, 5, 20, 16))  # x, y, w, h
    assert placed.shape == (40, 60) and placed.dtype == np.float32
    assert np.allclose(placed[5:21, 10:30], 1.0) and placed.sum() == pytest.approx(20 * 16)
    clipped = pp.map_to_input(anomaly_map, (40, 60), roi=(50, 30, 20, 20))  # past the edge
    assert np.allclose(clipped[30:, 50:], 1.0) and clipped.sum() == pytest.approx(10 * 10)


def test_overlay_bgr_keeps_the_input_colours_order_and_size():
    gray = np.full((20, 30), 200, np.uint8)
    assert pp.bgr_input(gray).shape == (20, 30, 3)
    bgr = np.zeros((20, 30, 3), np.uint8)
    bgr[..., 0] = 255  # a blue BGR input stays blue (no RGB swap on decoded inputs)
    assert (pp.bgr_input(bgr) == bgr).all()
    with pytest.raises(ValueError, match="uint8"):
        pp.bgr_input(gray.astype(np.float32))
    heat = np.zeros((20, 30), np.float32)
    heat[:, 15:] = 1.0
    out = pp.overlay_bgr(pp.bgr_input(gray), heat, vmax=1.0)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert (out[:, 15:, 2].astype(int) > out[:, 15:, 0].astype(int) + 30).all()  # red where hot
