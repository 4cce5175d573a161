"""The detector on prepared frames: images in batches, video clips and streams, one chain."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from vigil.config import EvaluateConfig, ImagePrep, VideoPrep
from vigil.data.preprocess import to_tensor
from vigil.detector import Detector, DetectorError, DetectorRecord
from vigil.detector.postprocess import image_score, smooth_map
from vigil.models.conv_ae.config import ConvAEConfig
from vigil.models.convlstm.config import ConvLSTMConfig
from vigil.models.spec import build_model, model_spec

IMAGE_PREP = ImagePrep(size=(32, 32), channels=3)
VIDEO_PREP = VideoPrep(size=(32, 32), channels=1)


def detector(modality: str, postprocess: EvaluateConfig, threshold: float | None = 0.05):
    """A tiny untrained detector with an error head (seeded: the same network every call)."""
    torch.manual_seed(0)
    if modality == "image":
        cfg = ConvAEConfig(depth=2, filters=4, latent_channels=2, error_head=True)
        spec = model_spec("conv_ae", 3, (32, 32), cfg, prep=IMAGE_PREP)
    else:
        cfg = ConvLSTMConfig(encoder_depth=2, filters=4, hidden_channels=4, error_head=True)
        spec = model_spec("convlstm", 1, (32, 32), cfg, prep=VIDEO_PREP)
    record = DetectorRecord(spec=spec, postprocess=postprocess, threshold=threshold)
    return Detector(build_model(spec), record)


def frames(n, channels, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, channels), dtype=np.uint8)


def test_score_prepared_applies_the_postprocessing_to_the_network_error():
    cfg = EvaluateConfig(median_blur=5, score="topk_mean", use_error_head=True)
    det = detector("image", cfg)
    x = frames(7, 3)
    result = det.score_prepared(x, batch_size=3)
    assert result.scores.shape == result.raw.shape == (7,) and result.maps.shape == (7, 32, 32)
    assert result.maps.dtype == np.float32 and result.valid.all()
    with torch.inference_mode():
        out = det.network(to_tensor(x, IMAGE_PREP))
    expected = smooth_map(out.error_map[:, 0].numpy(), cfg, out.predicted_error[:, 0].numpy())
    np.testing.assert_allclose(result.maps, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.raw, image_score(expected, cfg), rtol=1e-5)
    np.testing.assert_array_equal(result.scores, result.raw)  # images: no smoothing
    whole = det.score_prepared(x, batch_size=32)
    np.testing.assert_allclose(whole.scores, result.scores, rtol=1e-5)  # batch-independent


def test_score_prepared_rejects_wrong_input():
    det = detector("image", EvaluateConfig())
    with pytest.raises(ValueError, match="uint8 frames"):
        det.score_prepared(np.zeros((2, 32, 32, 3), np.float32))
    assert det.score_prepared(np.zeros((0, 32, 32, 3), np.uint8)).scores.shape == (0,)


def test_score_clips_carries_state_like_the_clip_forward():
    """The video step with carried state gives the clip forward's errors."""
    det = detector("video", EvaluateConfig(median_blur=1, score="mean", smoothing_window=1))
    clip = frames(6, 1, seed=1)
    result = det.score_clips([clip])[0]
    with torch.inference_mode():
        out = det.network(to_tensor(clip, VIDEO_PREP)[None])
    assert np.isnan(result.raw[0]) and np.isnan(result.scores[0]) and not result.valid[0]
    assert (result.maps[0] == 0).all() and result.valid[1:].all()
    np.testing.assert_allclose(result.raw[1:], out.score[0].numpy(), rtol=1e-4)
    np.testing.assert_allclose(
        result.maps[1:], out.error_map[0, :, 0].numpy(), rtol=1e-4, atol=1e-7
    )


def test_score_clips_smooth_with_a_trailing_window_over_finite_scores():
    det = detector("video", EvaluateConfig(smoothing_window=3))
    result = det.score_clips([frames(8, 1, seed=2)])[0]
    expected = pd.Series(result.raw[1:]).rolling(3, min_periods=1).mean().to_numpy()
    np.testing.assert_allclose(result.scores[1:], expected)


def test_score_clips_restart_state_per_clip_and_do_not_depend_on_batching():
    det = detector("video", EvaluateConfig(smoothing_window=2))
    data = frames(10, 1, seed=3)
    clips = [data[:4], data[4:]]  # different lengths step side by side
    together = det.score_clips(clips)
    apart = [det.score_clips([clip], clips_per_batch=1)[0] for clip in clips]
    assert [len(r.scores) for r in together] == [4, 6]
    assert all(np.isnan(r.scores[0]) for r in together)
    for joint, alone in zip(together, apart, strict=True):
        np.testing.assert_allclose(joint.scores, alone.scores, rtol=1e-5)
        np.testing.assert_allclose(joint.maps, alone.maps, rtol=1e-5, atol=1e-7)


def test_stream_frame_by_frame_equals_score_clips():
    det = detector("video", EvaluateConfig(smoothing_window=3, use_error_head=True))
    clip = frames(7, 1, seed=5)
    expected = det.score_clips([clip])[0]
    state = None
    for t, frame in enumerate(clip):
        item, state = det.stream(frame, state)
        if t == 0:
            assert math.isnan(item.score) and not item.is_anomaly
            continue
        assert item.score == pytest.approx(expected.scores[t], rel=1e-6)
        assert item.raw_score == pytest.approx(expected.raw[t], rel=1e-6)
        np.testing.assert_allclose(item.anomaly_map, expected.maps[t], rtol=1e-5, atol=1e-7)
        assert item.is_anomaly == (expected.scores[t] >= det.threshold)
        assert item.frame.shape == (32, 32, 1)


def test_image_stream_scores_each_frame_on_its_own():
    det = detector("image", EvaluateConfig())
    x = frames(3, 3, seed=6)
    expected = det.score_prepared(x).scores
    state = None
    for frame, score in zip(x, expected, strict=True):
        item, state = det.stream(frame, state, reconstruction=True)
        assert item.score == pytest.approx(score, rel=1e-6)
        assert item.reconstruction.shape == (32, 32, 3) and item.reconstruction.dtype == np.uint8


def test_video_error_head_masks_the_error():
    clip = frames(5, 1, seed=4)
    plain = detector("video", EvaluateConfig(median_blur=1)).score_clips([clip])[0]
    masked = detector("video", EvaluateConfig(median_blur=1, use_error_head=True))
    masked = masked.score_clips([clip])[0]
    assert (masked.maps <= plain.maps + 1e-7).all()
    assert not np.allclose(masked.maps[1:], plain.maps[1:])


def test_is_anomaly_is_score_at_or_above_the_threshold_and_needs_one():
    det = detector("image", EvaluateConfig())
    x = frames(4, 3, seed=7)
    scores = det.score_prepared(x).scores
    at = det.calibrated(threshold=float(np.median(scores)))
    items = [at.stream(frame)[0] for frame in x]
    assert [item.is_anomaly for item in items] == list(scores >= np.median(scores))
    with pytest.raises(DetectorError, match="no calibrated threshold"):
        detector("image", EvaluateConfig(), threshold=None).stream(x[0])
