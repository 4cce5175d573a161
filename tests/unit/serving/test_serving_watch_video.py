"""`vigil watch --output`: the written video carries frame number, score, threshold and an alarm
banner (decoded back with OpenCV)."""

from __future__ import annotations

import cv2
import numpy as np
from conftest import make_model_dir, sample_images, staged_package

from vigil.serving import WatchSettings
from vigil.serving.sidebyside import HEADER, PANEL, STRIP, SideBySideWriter
from vigil.serving.watch import watch

BANNER = (slice(0, HEADER), slice(3 * PANEL - 150, 3 * PANEL))  # right end of the header
TEXT = (slice(0, HEADER), slice(0, 3 * PANEL - 150))  # frame / score / threshold


def _frames(path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def _redness(region: np.ndarray) -> float:
    """Mean red minus mean blue (BGR); about 0 on the gray header, large on the red banner."""
    return float(region[..., 2].astype(float).mean() - region[..., 0].astype(float).mean())


def test_header_shows_score_and_banner_only_when_flagged(tmp_path):
    path = tmp_path / "side.mp4"
    writer = SideBySideWriter(path, fps=15.0, threshold=0.05, timeline_frames=10)
    image = sample_images(1, size=32)[0]
    heat = np.zeros((32, 32, 3), np.uint8)
    writer.write(image, image, heat, 0.01, index=0, flagged=False)
    writer.write(image, image, heat, 0.09, index=1, flagged=True, alarm=True)
    writer.write(image, image, heat, 0.02, index=7, flagged=False)
    writer.close()
    normal, flagged, other = _frames(path)
    assert normal.shape == (HEADER + PANEL + STRIP, 3 * PANEL, 3)
    assert _redness(flagged[BANNER]) > 100 and abs(_redness(normal[BANNER])) < 15
    assert _redness(flagged[TEXT]) > 100  # the whole header turns red
    # the text is drawn: bright pixels on the dark header, and a different score and frame
    # number change the text area while the (identical) panels stay the same
    assert (normal[TEXT].max(axis=2) > 180).sum() > 100
    changed = np.abs(normal.astype(int) - other.astype(int)).max(axis=2) > 80
    assert changed[TEXT].sum() > 30 and changed[HEADER : HEADER + PANEL].sum() < 10


def test_watch_output_flags_frames_above_the_models_threshold(tmp_path):
    from vigil.serving.loader import load_scorer

    videos = {}
    for name, threshold in (("never", 1e9), ("always", 0.0)):
        tiny = make_model_dir(tmp_path / name, "video", threshold=threshold)
        scorer = load_scorer(staged_package(tmp_path / name, tiny))
        folder = tmp_path / "frames"
        folder.mkdir(exist_ok=True)
        for i, image in enumerate(sample_images(5, seed=4)):
            cv2.imwrite(str(folder / f"{i:04d}.png"), image)
        out = tmp_path / f"{name}.mp4"
        summary = watch(
            scorer, str(folder), WatchSettings(alert_frames=2), target_fps=None,
            output=out, events=None,
        )
        assert summary.frames_scored == 5
        videos[name] = _frames(out)
    assert len(videos["never"]) == len(videos["always"]) == 5
    # the first frame of a video model has no score yet: never flagged
    assert abs(_redness(videos["always"][0][BANNER])) < 15
    for never, always in zip(videos["never"][1:], videos["always"][1:], strict=True):
        assert _redness(always[BANNER]) > 100 and abs(_redness(never[BANNER])) < 15
        assert not np.array_equal(always[TEXT], never[TEXT])  # threshold 0 vs 1e+09
