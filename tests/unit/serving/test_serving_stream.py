"""Frame-by-frame stream scoring equals evaluation's clip scoring; `watch` end to end."""

from __future__ import annotations

import io
import json

import cv2
import numpy as np
import pytest
from conftest import sample_images

from vigil.serving import WatchSettings
from vigil.serving.watch import watch


def _write_video(path, frames, fps):
    writer = cv2.VideoWriter(
        str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, frames[0].shape[1::-1]
    )
    for frame in frames:
        writer.write(frame)
    writer.release()


def test_stream_scores_equal_evaluation_clip_scores(video_scorer):
    images = sample_images(7, seed=3)
    stream = video_scorer.stream()
    streamed = np.array([stream.push(image).score for image in images])
    frames = video_scorer.detector.prepare_clip(images)
    expected = video_scorer.detector.score_clips([frames])[0].scores
    assert np.isnan(streamed[0]) and np.isnan(expected[0])
    np.testing.assert_allclose(streamed[1:], expected[1:], rtol=1e-6)
    clip = [r.score for r in video_scorer.score_clip(images)]
    np.testing.assert_allclose(clip[1:], expected[1:], rtol=1e-6)


def test_image_stream_scores_each_frame_independently(image_scorer):
    images = sample_images(4, seed=1)
    stream = image_scorer.stream()
    streamed = [stream.push(image).score for image in images]
    assert streamed == pytest.approx([r.score for r in image_scorer.score_images(images)])


def test_watch_resamples_writes_side_by_side_video_and_alerts(video_scorer, tmp_path):
    video = tmp_path / "in.avi"
    _write_video(video, sample_images(30, seed=2), fps=30)  # model runs at 15 fps
    events = io.StringIO()
    threshold = video_scorer.info.threshold
    summary = watch(
        video_scorer,
        str(video),
        WatchSettings(alert_frames=2),
        output=tmp_path / "out.avi",
        events=events,
    )
    assert summary.frames_read == 30 and summary.frames_scored == 15
    assert summary.frame_indices == list(range(0, 30, 2))
    lines = [json.loads(line) for line in events.getvalue().splitlines()]
    assert lines[-1]["event"] == "summary" and lines[-1]["frames_scored"] == 15
    above = np.nan_to_num(np.array(summary.scores)) >= threshold
    starts = [e for e in lines if e["event"] == "anomaly_start"]
    runs = np.convolve(above, [1, 1], "valid") == 2  # two frames in a row above
    assert bool(starts) == bool(runs.any())
    capture = cv2.VideoCapture(str(tmp_path / "out.avi"))
    ok, frame = capture.read()
    capture.release()
    assert ok and frame.shape == (32 + 192 + 64, 3 * 192, 3)  # header, panels, timeline


def test_watch_keeps_every_frame_when_asked(image_scorer, tmp_path):
    for i, image in enumerate(sample_images(5)):
        cv2.imwrite(str(tmp_path / f"{i:04d}.png"), image)
    summary = watch(image_scorer, str(tmp_path), target_fps=None, events=None, max_frames=4)
    assert summary.frames_read == 4 and summary.frames_scored == 4
    assert all(np.isfinite(summary.scores))
