"""Ingestion: MVTec image layout, video files and frame folders, labels CSV, masks, bad layouts;
video decoding and frame-rate resampling."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from vigil.data.ingest import IngestError, scan_images
from vigil.data.ingest_video import mask_path, read_frame_labels, scan_video
from vigil.data.video import (
    FrameResampler,
    VideoDecodeError,
    clip_starts,
    read_folder_fps,
    read_video,
    resample_indices,
)


def _write(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


def _mvtec(root: Path, defects=("crack", "dent"), with_masks=("crack",)) -> Path:
    img = np.full((16, 16, 3), 90, np.uint8)
    for i in range(3):
        _write(root / "train" / "good" / f"{i:03d}.png", img)
    _write(root / "test" / "good" / "000.png", img)
    for defect in defects:
        for i in range(2):
            _write(root / "test" / defect / f"{i:03d}.png", img)
            if defect in with_masks:
                _write(
                    root / "ground_truth" / defect / f"{i:03d}_mask.png",
                    np.zeros((16, 16), np.uint8),
                )
    return root


def _video_file(path: Path, n: int, fps: float = 30.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (16, 16))
    for i in range(n):
        writer.write(np.full((16, 16, 3), 10 * i % 250, np.uint8))
    writer.release()
    return path


def test_scan_images_labels_masks_and_ignored_files(tmp_path):
    root = _mvtec(tmp_path / "ds")
    (root / "train" / "good" / "notes.txt").write_text("not an image")
    (root / "train" / "good" / ".DS_Store").write_text("hidden")
    source = scan_images(root)
    train = [r for r in source.records if r.part == "train"]
    test = [r for r in source.records if r.part == "test"]
    assert [r.origin for r in train] == [f"train/good/{i:03d}.png" for i in range(3)]
    assert {r.defect for r in test} == {"good", "crack", "dent"}
    assert all(r.label == (r.defect != "good") for r in test)
    assert all(r.mask_path is not None for r in test if r.defect == "crack")
    assert all(r.mask_path is None for r in test if r.defect in ("dent", "good"))
    assert source.ignored == ("train/good/notes.txt",)


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda r: __import__("shutil").rmtree(r / "train"), "train/good: missing normal training"),
        (
            lambda r: [p.unlink() for p in (r / "train" / "good").iterdir()],
            "train/good: empty folder",
        ),
        (
            lambda r: [p.unlink() for p in (r / "test" / "dent").iterdir()],
            "test/dent: empty folder",
        ),
    ],
    ids=["no-train", "empty-train", "empty-defect"],
)
def test_scan_images_bad_layouts_name_the_folder(tmp_path, break_it, message):
    root = _mvtec(tmp_path / "ds")
    break_it(root)
    with pytest.raises(IngestError, match=message):
        scan_images(root)


def test_scan_images_accepts_a_normal_only_source(tmp_path):
    """train/good alone, or with test/good only: every record is normal (prepare warns)."""
    root = _mvtec(tmp_path / "ds")
    for defect in ("crack", "dent"):
        __import__("shutil").rmtree(root / "test" / defect)
    with_good = scan_images(root)
    assert {r.defect for r in with_good.records} == {"good"}
    assert any(r.part == "test" for r in with_good.records)
    __import__("shutil").rmtree(root / "test")
    alone = scan_images(root)
    assert alone.records and all(r.part == "train" and r.label == 0 for r in alone.records)


def test_scan_images_unknown_root(tmp_path):
    with pytest.raises(IngestError, match="nowhere: source folder does not exist"):
        scan_images(tmp_path / "nowhere")


def _video_dataset(root: Path) -> Path:
    """Two training clips (a file and a frame folder), two labelled testing clips."""
    _video_file(root / "training" / "a.avi", 6)
    for i in range(5):
        _write(
            root / "training" / "frames" / "01" / f"{i:03d}.jpg", np.full((16, 16, 3), 50, np.uint8)
        )
    _video_file(root / "testing" / "cam.avi", 4)
    for i in range(3):
        _write(
            root / "testing" / "frames" / "01" / f"{i:03d}.jpg", np.full((16, 16, 3), 50, np.uint8)
        )
    _write(root / "testing" / "masks" / "cam" / "0003.png", np.zeros((16, 16), np.uint8))
    rows = ["video,frame_file,frame_index_1based,label,defect"]
    rows += [f"cam,,{i},{int(i >= 3)},{'spark' if i >= 3 else ''}" for i in range(1, 5)]
    rows += [f"01,{i:03d}.jpg,,{int(i == 2)}," for i in range(3)]
    (root / "testing" / "frame_labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_scan_video_files_and_frame_folders_with_labels(tmp_path):
    source = scan_video(_video_dataset(tmp_path / "v"))
    by_name = {c.name: c for c in source.clips}
    assert set(by_name) == {"training/a", "training/01", "testing/cam", "testing/01"}
    cam, folder = by_name["testing/cam"], by_name["testing/01"]
    assert cam.is_file and cam.source_fps == pytest.approx(30.0)
    assert folder.frames[0].name == "000.jpg" and folder.source_fps is None
    assert cam.labels[3].label == 1 and cam.labels[3].defect == "spark" and cam.labels[1].label == 0
    assert folder.labels[3].label == 1 and folder.labels[3].defect == "anomaly"
    assert (
        mask_path(cam, 3) is not None and mask_path(cam, 4) is None and mask_path(folder, 1) is None
    )


def test_scan_video_extra_folder_with_only_gitkeep_adds_nothing(tmp_path):
    """A fresh clone's data/extra/print/ holds only the tracked .gitkeep: not an error."""
    root = _video_dataset(tmp_path / "v")
    extra = tmp_path / "extra" / "print"
    extra.mkdir(parents=True)
    (extra / ".gitkeep").touch()
    with_extra = scan_video(root, extra_dir=extra)
    assert with_extra.clips == scan_video(root).clips


def test_scan_video_label_errors_name_the_csv(tmp_path):
    root = _video_dataset(tmp_path / "v")
    csv = root / "testing" / "frame_labels.csv"
    csv.write_text("video,frame_file,frame_index_1based,label\ncam,,1,1\n")
    with pytest.raises(IngestError, match="no labels for testing clip '01'"):
        scan_video(root)
    csv.write_text("video,label\ncam,1\n")
    with pytest.raises(IngestError, match="missing column"):
        scan_video(root)
    csv.write_text("video,frame_file,frame_index_1based,label\ncam,,1,yes\n")
    with pytest.raises(IngestError, match=r"frame_labels.csv:2: label must be 0 or 1"):
        read_frame_labels(csv)
    rows = [f"cam,,{i},0" for i in range(1, 5)] + [f"01,{i:03d}.jpg,,0" for i in range(3)]
    csv.write_text("video,frame_file,frame_index_1based,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(IngestError, match="no anomalous frame"):
        scan_video(root)
    csv.write_text("video,frame_file,frame_index_1based,label\ncam,,1,1\n01,000.jpg,,1\n")
    with pytest.raises(IngestError, match=r"2 frame\(s\) of clip '01' have no label"):
        scan_video(root)


def test_scan_video_empty_training_folder(tmp_path):
    root = _video_dataset(tmp_path / "v")
    for path in sorted((root / "training").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    with pytest.raises(IngestError, match="training: no videos"):
        scan_video(root)


def test_read_video_streams_frames_with_timestamps(tmp_path):
    frames = list(read_video(_video_file(tmp_path / "a.avi", 5, fps=25)))
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert frames[2].timestamp == pytest.approx(2 / 25)
    assert frames[0].image.shape == (16, 16, 3)


@pytest.mark.parametrize(
    ("content", "message"), [(b"", "empty file"), (b"\x00garbage" * 50, "cannot open")]
)
def test_read_video_rejects_empty_and_corrupt_files(tmp_path, content, message):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoDecodeError, match=f"bad.mp4: {message}"):
        list(read_video(path))


def test_resampling_by_timestamp():
    assert resample_indices(8, 30, 15) == [0, 2, 4, 6]
    assert resample_indices(120, 55, 1) == [0, 55, 110]
    assert resample_indices(5, 30, 60) == [0, 1, 2, 3, 4]  # never upsample
    assert resample_indices(5, None, 15) == [0, 1, 2, 3, 4]  # unknown source rate: keep all
    assert resample_indices(10, 30, 20) == [0, 2, 3, 5, 6, 8, 9]  # 2/3 of the frames, by time
    live = FrameResampler(10)
    stamps = [0.0, 0.04, 0.09, 0.101, 0.15, 0.2, 0.31]  # jittery camera clock
    assert [t for t in stamps if live.keep(t)] == [0.0, 0.101, 0.2, 0.31]


def test_clip_starts():
    assert clip_starts(10, 4).tolist() == [0, 4]
    assert clip_starts(10, 4, stride=2).tolist() == [0, 2, 4, 6]
    assert clip_starts(3, 4).tolist() == []


def test_folder_fps_file(tmp_path):
    clip = tmp_path / "testing" / "frames" / "01"
    clip.mkdir(parents=True)
    assert read_folder_fps(clip, tmp_path) is None
    (tmp_path / "fps.txt").write_text("12.5\n")
    assert read_folder_fps(clip, tmp_path) == 12.5
    (clip / "fps.txt").write_text("fast")
    with pytest.raises(VideoDecodeError, match="fps.txt: expected one number"):
        read_folder_fps(clip, tmp_path)
