"""Run a trained model over prepared frames: post-processed error maps and scores.

Images (``score_frames``) go through the model in batches. Video (``score_video``) goes frame
by frame through ``FramePredictor.step`` with the ConvLSTM state carried, exactly as a stream
is scored in serving: the error of frame t is measured against the prediction made from frames
< t.

The first frame of a clip has no prediction: its raw and smoothed scores are NaN and its map is
zero. Metrics drop NaN frames (``finite`` mask) rather than inventing a score for them, and
serving reports "no score yet" for a stream's first frame.

Smoothing is a trailing (causal) moving average over the last ``smoothing_window`` scored
frames, fewer at the start of a clip: a stream cannot average over frames it has not seen, and
evaluation must decide exactly as serving will.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from vigil.config import EvaluateConfig, ImagePrep
from vigil.data.preprocess import to_tensor
from vigil.evaluation.postprocess import Roi, image_score, smooth_map


class Scores(NamedTuple):
    """Per-frame scores and maps.

    ``scores`` (N,) float64: image score, or for video the smoothed frame score (NaN for a
    clip's first frame). ``maps`` (N, H, W) float32: post-processed error maps. ``raw`` (N,)
    float64: unsmoothed video frame scores (equal to ``scores`` for images).
    """

    scores: np.ndarray
    maps: np.ndarray
    raw: np.ndarray | None = None


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.dtype != np.uint8:
        raise ValueError(
            f"expected uint8 frames (N, H, W, C), got {frames.dtype} {frames.shape}"
        )
    return frames


def _predicted(output_predicted: torch.Tensor | None, cfg: EvaluateConfig) -> np.ndarray | None:
    if not cfg.use_error_head or output_predicted is None:
        return None
    return output_predicted[:, 0].float().cpu().numpy()


def score_frames(
    model: nn.Module,
    frames: np.ndarray,
    prep: ImagePrep,
    cfg: EvaluateConfig,
    batch_size: int = 32,
    roi: Roi | None = None,
) -> Scores:
    """Image model over uint8 frames (N, H, W, C) -> Scores (scores (N,), maps (N, H, W)).

    ``to_tensor`` normalizes exactly as in training; ``model(x)`` returns an ``AnomalyOutput``
    whose ``error_map`` (B, 1, H, W) goes through ``smooth_map`` and ``image_score``.
    """
    frames = _check_frames(frames)
    n, height, width = frames.shape[:3]
    maps = np.empty((n, height, width), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            batch = np.asarray(frames[start : start + batch_size])
            output = model(to_tensor(batch, prep))
            error = output.error_map[:, 0].float().cpu().numpy()
            predicted = _predicted(output.predicted_error, cfg)
            maps[start : start + len(batch)] = smooth_map(error, cfg, predicted, roi)
    scores = np.asarray(image_score(maps, cfg), dtype=np.float64) if n else np.zeros(0)
    return Scores(scores=scores, maps=maps, raw=scores)


def moving_average(scores: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` finite values; NaN stays NaN. (T,) -> (T,)."""
    scores = np.asarray(scores, dtype=np.float64)
    out = np.full_like(scores, np.nan)
    finite = np.flatnonzero(np.isfinite(scores))
    if finite.size == 0:
        return out
    values = scores[finite]
    cumsum = np.r_[0.0, np.cumsum(values)]
    idx = np.arange(1, values.size + 1)
    lo = np.maximum(idx - window, 0)
    out[finite] = (cumsum[idx] - cumsum[lo]) / (idx - lo)
    return out


def _step(model: nn.Module, frame: torch.Tensor, state):
    """(prediction of the next frame, predicted error or None, state) from one model step."""
    if hasattr(model, "step_full"):
        return model.step_full(frame, state)
    prediction, state = model.step(frame, state)
    return prediction, None, state


def _score_clip_batch(
    model: nn.Module,
    clips: list[np.ndarray],
    prep: ImagePrep,
    cfg: EvaluateConfig,
    roi: Roi | None = None,
) -> list[Scores]:
    """Several clips (each uint8 (T_i, H, W, C)) stepped side by side as one batch.

    Each batch row carries its own ConvLSTM state, so this is ``score_video`` per clip with
    the per-step cost shared; a clip that has ended repeats its last frame and is ignored.
    """
    clips = [_check_frames(c) for c in clips]
    lengths = [len(c) for c in clips]
    height, width = clips[0].shape[1:3]
    maps = [np.zeros((n, height, width), dtype=np.float32) for n in lengths]
    raws = [np.full(n, np.nan) for n in lengths]
    with torch.inference_mode():
        state = model.init_state(len(clips), height, width)
        prediction = predicted = None
        for t in range(max(lengths)):
            batch = np.stack([c[min(t, len(c) - 1)] for c in clips])
            x = to_tensor(batch, prep)
            live = [b for b, n in enumerate(lengths) if t < n]
            if prediction is not None and live:
                error = (prediction[live] - x[live]).pow(2).mean(dim=1).float().cpu().numpy()
                pred_err = None
                if cfg.use_error_head and predicted is not None:
                    pred_err = predicted[live, 0].float().cpu().numpy()
                smoothed = smooth_map(error, cfg, pred_err, roi)
                frame_scores = image_score(smoothed, cfg)
                for i, b in enumerate(live):
                    maps[b][t] = smoothed[i]
                    raws[b][t] = frame_scores[i]
            prediction, predicted, state = _step(model, x, state)
    return [
        Scores(scores=moving_average(raw, cfg.smoothing_window), maps=m, raw=raw)
        for raw, m in zip(raws, maps)
    ]


def score_video(
    model: nn.Module,
    frames: np.ndarray,
    prep: ImagePrep,
    cfg: EvaluateConfig,
    roi: Roi | None = None,
) -> Scores:
    """Video model over one clip, uint8 frames (T, H, W, C) in time order -> Scores.

    ``scores`` are smoothed with a trailing moving average of ``cfg.smoothing_window``; the
    first frame's scores are NaN and its map is zero (see the module docstring).
    """
    frames = _check_frames(frames)
    if len(frames) == 0:
        h, w = frames.shape[1:3]
        return Scores(np.zeros(0), np.zeros((0, h, w), np.float32), np.zeros(0))
    return _score_clip_batch(model, [frames], prep, cfg, roi)[0]


def score_clips(
    model: nn.Module,
    frames: np.ndarray,
    clips: list[np.ndarray],
    prep: ImagePrep,
    cfg: EvaluateConfig,
    roi: Roi | None = None,
    clips_per_batch: int = 16,
) -> Scores:
    """``score_video`` on each clip (row indices into ``frames`` (N, H, W, C)), concatenated in
    the order of ``clips``: Scores over ``np.concatenate(clips)``. Up to ``clips_per_batch``
    clips step side by side (same results, a fraction of the time)."""
    clips = [c for c in clips if len(c)]
    if not clips:
        h, w = frames.shape[1:3]
        return Scores(np.zeros(0), np.zeros((0, h, w), np.float32), np.zeros(0))
    parts: list[Scores] = []
    for start in range(0, len(clips), clips_per_batch):
        group = [np.asarray(frames[rows]) for rows in clips[start : start + clips_per_batch]]
        parts += _score_clip_batch(model, group, prep, cfg, roi)
    return Scores(
        scores=np.concatenate([p.scores for p in parts]),
        maps=np.concatenate([p.maps for p in parts]),
        raw=np.concatenate([p.raw for p in parts]),
    )
