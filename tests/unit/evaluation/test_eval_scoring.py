"""Scoring real (tiny, untrained) vigil models: images in batches, video frame by frame."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from vigil.config import EvaluateConfig, ImageModelConfig, ImagePrep, VideoModelConfig, VideoPrep
from vigil.data.preprocess import to_tensor
from vigil.evaluation.postprocess import image_score, smooth_map
from vigil.evaluation.scoring import moving_average, score_clips, score_frames, score_video
from vigil.models import build_model, model_spec

IMAGE_PREP = ImagePrep(size=(32, 32), channels=3)
VIDEO_PREP = VideoPrep(size=(32, 32), channels=1)


@pytest.fixture(scope="module")
def image_model():
    torch.manual_seed(0)
    cfg = ImageModelConfig(depth=2, filters=4, latent_channels=2, error_head=True)
    return build_model(model_spec("image", 3, (32, 32), cfg, prep=IMAGE_PREP)).eval()


@pytest.fixture(scope="module")
def video_model():
    torch.manual_seed(0)
    cfg = VideoModelConfig(encoder_depth=2, filters=4, hidden_channels=4, error_head=True)
    return build_model(model_spec("video", 1, (32, 32), cfg, prep=VIDEO_PREP)).eval()


def frames(n, channels, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, channels), dtype=np.uint8)


def test_score_frames_applies_the_postprocessing_to_the_model_error(image_model):
    cfg = EvaluateConfig(median_blur=5, score="topk_mean", use_error_head=True)
    x = frames(7, 3)
    result = score_frames(image_model, x, IMAGE_PREP, cfg, batch_size=3)
    assert result.scores.shape == (7,) and result.maps.shape == (7, 32, 32)
    assert result.maps.dtype == np.float32
    with torch.inference_mode():
        out = image_model(to_tensor(x, IMAGE_PREP))
    expected = smooth_map(out.error_map[:, 0].numpy(), cfg, out.predicted_error[:, 0].numpy())
    np.testing.assert_allclose(result.maps, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.scores, image_score(expected, cfg), rtol=1e-5)
    whole = score_frames(image_model, x, IMAGE_PREP, cfg, batch_size=32)
    np.testing.assert_allclose(whole.scores, result.scores, rtol=1e-5)  # batch-independent


def test_score_frames_rejects_wrong_input(image_model):
    with pytest.raises(ValueError, match="uint8 frames"):
        score_frames(image_model, np.zeros((2, 32, 32, 3), np.float32), IMAGE_PREP,
                     EvaluateConfig())
    empty = score_frames(image_model, np.zeros((0, 32, 32, 3), np.uint8), IMAGE_PREP,
                         EvaluateConfig())
    assert empty.scores.shape == (0,)


def test_score_video_carries_state_like_the_clip_forward(video_model):
    """Frame-by-frame ``step`` with carried state gives the clip forward's errors."""
    cfg = EvaluateConfig(median_blur=1, score="mean", smoothing_window=1)
    clip = frames(6, 1, seed=1)
    result = score_video(video_model, clip, VIDEO_PREP, cfg)
    with torch.inference_mode():
        out = video_model(to_tensor(clip, VIDEO_PREP)[None])
    assert np.isnan(result.raw[0]) and np.isnan(result.scores[0])
    assert (result.maps[0] == 0).all()
    np.testing.assert_allclose(result.raw[1:], out.score[0].numpy(), rtol=1e-4)
    np.testing.assert_allclose(result.maps[1:], out.error_map[0, :, 0].numpy(), rtol=1e-4,
                               atol=1e-7)


def test_score_video_smooths_with_a_trailing_window(video_model):
    cfg = EvaluateConfig(smoothing_window=3)
    result = score_video(video_model, frames(8, 1, seed=2), VIDEO_PREP, cfg)
    expected = pd.Series(result.raw[1:]).rolling(3, min_periods=1).mean().to_numpy()
    np.testing.assert_allclose(result.scores[1:], expected)


def test_moving_average_skips_nan_and_matches_pandas():
    values = np.array([np.nan, 1.0, 2.0, 6.0, np.nan, 3.0, 5.0])
    out = moving_average(values, 2)
    assert np.isnan(out[0]) and np.isnan(out[4])
    finite = pd.Series(values[np.isfinite(values)]).rolling(2, min_periods=1).mean().to_numpy()
    np.testing.assert_allclose(out[np.isfinite(values)], finite)
    assert np.isnan(moving_average(np.full(3, np.nan), 3)).all()


def test_score_clips_restarts_state_per_clip(video_model):
    cfg = EvaluateConfig(smoothing_window=2)
    data = frames(10, 1, seed=3)
    clips = [np.arange(0, 4), np.arange(4, 10)]
    joined = score_clips(video_model, data, clips, VIDEO_PREP, cfg)
    assert joined.scores.shape == (10,) and np.isnan(joined.scores[[0, 4]]).all()
    second = score_video(video_model, data[4:], VIDEO_PREP, cfg)
    np.testing.assert_allclose(joined.scores[4:], second.scores)


def test_video_error_head_masks_the_error(video_model):
    clip = frames(5, 1, seed=4)
    plain = score_video(video_model, clip, VIDEO_PREP, EvaluateConfig(median_blur=1))
    masked = score_video(video_model, clip, VIDEO_PREP,
                         EvaluateConfig(median_blur=1, use_error_head=True))
    assert (masked.maps <= plain.maps + 1e-7).all()
    assert not np.allclose(masked.maps[1:], plain.maps[1:])
