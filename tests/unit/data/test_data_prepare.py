"""The prepare stage end to end on tiny folders: arrays, manifest, splits, hashes, bad input."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from vigil.config import ConfigError, DatasetSpec, PrepareConfig, load_params
from vigil.data.prepare import PrepareError, prepare_dataset
from vigil.data.prepared import PreparedDataset

REPO = Path(__file__).resolve().parents[3]


def _write(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


def _part_image(seed: int, defect: bool) -> tuple[np.ndarray, np.ndarray]:
    """24x32 BGR part with a bright square on anomalies; returns (image, mask 0/255)."""
    rng = np.random.default_rng(seed)
    image = np.clip(rng.normal(100, 10, (24, 32, 3)), 0, 255).astype(np.uint8)
    mask = np.zeros((24, 32), np.uint8)
    if defect:
        image[4:12, 8:16] = (0, 0, 255)
        mask[4:12, 8:16] = 255
    return image, mask


def _mvtec(root: Path, n_train: int = 10, n_good: int = 4, per_defect: int = 4) -> Path:
    for i in range(n_train):
        _write(root / "train" / "good" / f"{i:03d}.png", _part_image(i, False)[0])
    for i in range(n_good):
        _write(root / "test" / "good" / f"{i:03d}.png", _part_image(100 + i, False)[0])
    for d, defect in enumerate(("crack", "stain")):
        for i in range(per_defect):
            image, mask = _part_image(200 + 10 * d + i, True)
            _write(root / "test" / defect / f"{i:03d}.png", image)
            if defect == "crack":  # stain has no masks at all: allowed
                _write(root / "ground_truth" / defect / f"{i:03d}_mask.png", mask)
    return root


def _cfg(**prep) -> PrepareConfig:
    return PrepareConfig.model_validate(
        {"image": {"size": [16, 16], **prep}, "video": {"size": [16, 16], "fps": 15, **prep}}
    )


IMAGE_SPEC = DatasetSpec(source="ds", modality="image")


def test_prepare_images_end_to_end(tmp_path):
    _mvtec(tmp_path / "ds")
    result = prepare_dataset(
        "parts", IMAGE_SPEC, _cfg(), tmp_path / "out", base_dir=tmp_path, progress=False
    )
    data = PreparedDataset.load(tmp_path / "out")
    assert data.frames.shape == (22, 16, 16, 3) and data.masks.shape == (22, 16, 16)
    counts = data.manifest["counts"]
    assert {s: counts[s]["items"] for s in ("train", "val", "tune", "test")} == {
        "train": 8,
        "val": 2,
        "tune": 6,
        "test": 6,
    }
    assert counts["tune"]["by_defect"] == {"crack": 2, "good": 2, "stain": 2}
    assert data.labels("train").sum() == 0 and data.labels("val").sum() == 0
    for item in data.items:
        mask = data.masks[item.index]
        assert item.has_mask == (item.defect == "crack")
        assert (mask.max() == 1) == item.has_mask
        if item.label:  # the red square is in RGB order: channel 0 high under the mask
            frame = data.frames[item.index]
            assert frame[3:5, 5:7, 0].min() > 200 and frame[3:5, 5:7, 2].max() < 50
    assert data.manifest["params"]["prep"]["size"] == [16, 16]
    assert data.manifest["bad_files"] == [] and result.n_bad == 0
    assert len(data.items[0].sha256) == 64 and data.items[0].origin == "train/good/000.png"
    assert not list(tmp_path.glob(".out*")), "temp folders must not be left behind"


def test_prepare_is_deterministic_and_hash_follows_params(tmp_path):
    _mvtec(tmp_path / "ds")
    a = prepare_dataset(
        "p", IMAGE_SPEC, _cfg(), tmp_path / "a", base_dir=tmp_path, progress=False, workers=1
    )
    b = prepare_dataset(
        "p", IMAGE_SPEC, _cfg(), tmp_path / "b", base_dir=tmp_path, progress=False, workers=3
    )
    assert a.content_hash == b.content_hash
    assert (tmp_path / "a" / "frames.npy").read_bytes() == (
        tmp_path / "b" / "frames.npy"
    ).read_bytes()
    c = prepare_dataset(
        "p", IMAGE_SPEC, _cfg(channels=1), tmp_path / "c", base_dir=tmp_path, progress=False
    )
    assert c.content_hash != a.content_hash
    assert PreparedDataset.load(tmp_path / "c").channels == 1


def test_few_bad_files_are_skipped_with_a_warning_and_counted(tmp_path, caplog):
    root = _mvtec(tmp_path / "ds", n_train=20)
    (root / "train" / "good" / "005.png").write_bytes(b"")
    _write(root / "ground_truth" / "crack" / "001_mask.png", np.zeros((10, 10), np.uint8))
    cfg = PrepareConfig.model_validate({"image": {"size": [16, 16]}, "max_bad_fraction": 0.1})
    with caplog.at_level(logging.WARNING):
        result = prepare_dataset(
            "p", IMAGE_SPEC, cfg, tmp_path / "out", base_dir=tmp_path, progress=False
        )
    assert result.n_bad == 2 and result.n_items == 30
    manifest = PreparedDataset.load(tmp_path / "out").manifest
    reasons = {e["origin"]: e["reason"] for e in manifest["bad_files"]}
    assert "empty file" in reasons["train/good/005.png"]
    assert "mask size 10x10 does not match the image size 32x24" in reasons["test/crack/001.png"]
    assert manifest["counts"]["bad_files"] == 2
    assert "skipped 2 bad file(s) of 32" in caplog.text and "train/good/005.png" in caplog.text


def test_too_many_bad_files_fail_listing_them(tmp_path):
    root = _mvtec(tmp_path / "ds")
    (root / "train" / "good" / "001.png").write_bytes(b"garbage, not a png")
    (root / "test" / "good" / "002.png").write_bytes(b"")
    cfg = PrepareConfig.model_validate({"image": {"size": [16, 16]}, "max_bad_fraction": 0.05})
    with pytest.raises(PrepareError, match="exceed prepare.max_bad_fraction=0.05") as info:
        prepare_dataset("p", IMAGE_SPEC, cfg, tmp_path / "out", base_dir=tmp_path, progress=False)
    assert "train/good/001.png: not a decodable image" in str(info.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_unknown_source_names_the_key(tmp_path):
    spec = DatasetSpec(source="data/raw/nope", modality="image")
    with pytest.raises(
        PrepareError, match=r"data\.datasets\.parts\.source: 'data/raw/nope' does not exist"
    ):
        prepare_dataset("parts", spec, _cfg(), tmp_path / "out", base_dir=tmp_path)


def test_layout_problem_is_a_prepare_error_naming_the_folder(tmp_path):
    root = _mvtec(tmp_path / "ds")
    shutil.rmtree(root / "train")
    with pytest.raises(PrepareError, match="dataset 'p'.*train/good: missing normal training"):
        prepare_dataset(
            "p", IMAGE_SPEC, _cfg(), tmp_path / "out", base_dir=tmp_path, progress=False
        )


def test_typo_in_params_names_the_key(tmp_path):
    params = {
        "data": {"datasets": {"p": {"source": "ds", "modality": "image"}}},
        "prepare": {"image": {"size": [16, 16], "equalise": "clahe"}},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=r"prepare\.image\.equalise: unknown key"):
        load_params(tmp_path / "params.yaml")


def test_alignment_records_its_reference(tmp_path):
    _mvtec(tmp_path / "ds")
    prepare_dataset(
        "p",
        IMAGE_SPEC,
        _cfg(align="phase", equalize="clahe"),
        tmp_path / "out",
        base_dir=tmp_path,
        progress=False,
    )
    data = PreparedDataset.load(tmp_path / "out")
    ref = data.manifest["reference_index"]
    assert data.items[ref].split == "train"
    assert data.manifest["params"]["prep"]["align"] == "phase"


# --- video -----------------------------------------------------------------------------------


def _avi(path: Path, n: int, fps: float, anomalous: set[int] = frozenset()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (24, 24))
    for i in range(n):
        frame = np.full((24, 24, 3), 60, np.uint8)
        frame[:, (i % 20) : (i % 20) + 4] = 160  # a moving bar
        if i in anomalous:
            frame[4:12, 4:12] = 255
        writer.write(frame)
    writer.release()


def _video_source(root: Path, n_frames: int = 12) -> Path:
    for clip in ("t1", "t2", "t3"):
        _avi(root / "training" / f"{clip}.avi", n_frames, 30)
    rows = ["video,frame_file,frame_index_1based,label,defect"]
    for clip, bad in (("s1", {4, 5, 6, 7}), ("s2", {8, 9}), ("s3", set())):
        _avi(root / "testing" / f"{clip}.avi", n_frames, 30, bad)
        for i in range(n_frames):
            rows.append(f"{clip},,{i + 1},{int(i in bad)},{'spark' if i in bad else ''}")
            if i in bad:
                mask = np.zeros((24, 24), np.uint8)
                mask[4:12, 4:12] = 255
                _write(root / "testing" / "masks" / clip / f"{i + 1:04d}.png", mask)
    (root / "testing" / "frame_labels.csv").write_text("\n".join(rows) + "\n")
    return root


VIDEO_SPEC = DatasetSpec(source="vid", modality="video")


def test_prepare_video_resamples_and_keeps_labels_with_frames(tmp_path):
    _video_source(tmp_path / "vid")
    cfg = PrepareConfig.model_validate({"video": {"size": [16, 16], "channels": 1, "fps": 15}})
    prepare_dataset("v", VIDEO_SPEC, cfg, tmp_path / "out", base_dir=tmp_path, progress=False)
    data = PreparedDataset.load(tmp_path / "out")
    assert data.frames.shape == (36, 16, 16, 1)  # 6 clips x 12 frames at 30 fps -> 6 at 15 fps
    clips = {}
    for item in data.items:
        clips.setdefault(item.video, []).append(item)
    for name, items in clips.items():
        assert len({it.split for it in items}) == 1, f"{name} spans several splits"
        assert [it.frame for it in items] == list(range(6))
        assert [it.index for it in items] == list(range(items[0].index, items[0].index + 6))
        assert [it.origin for it in items] == [f"{name}.avi"] * 6
    s1 = clips["testing/s1"]  # kept source frames 1,3,5,7,9,11 (1-based); anomalous 5..8
    assert [it.label for it in s1] == [0, 0, 1, 1, 0, 0]
    assert all(it.has_mask == bool(it.label) for it in s1)
    assert data.masks[s1[2].index].max() == 1 and data.masks[s1[0].index].max() == 0
    counts = data.manifest["counts"]
    assert counts["train"]["clips"] + counts["val"]["clips"] == 3
    assert counts["tune"]["anomalous"] > 0 and counts["test"]["anomalous"] > 0
    assert data.manifest["clips"]["testing/s1"]["resampled"] is True
    assert len(data.videos("train")) == counts["train"]["clips"]


def test_prepare_video_alignment_reference_is_the_first_train_frame(tmp_path):
    _video_source(tmp_path / "vid", n_frames=8)
    cfg = PrepareConfig.model_validate({"video": {"size": [16, 16], "align": "ecc"}})
    prepare_dataset("v", VIDEO_SPEC, cfg, tmp_path / "out", base_dir=tmp_path, progress=False)
    data = PreparedDataset.load(tmp_path / "out")
    first_train = data.videos("train")[0][0]
    assert data.manifest["reference_index"] == first_train
    assert (
        data.manifest["source"] == "vid"
        and data.manifest["labels_csv"] == "testing/frame_labels.csv"
    )


def test_prepare_video_frame_folders_use_fps_file(tmp_path):
    root = tmp_path / "vid"
    for part, clips in (("training", ("01", "02")), ("testing", ("01", "02"))):
        for clip in clips:
            for i in range(8):
                _write(
                    root / part / "frames" / clip / f"{i:03d}.jpg",
                    np.full((24, 24, 3), 30 * i, np.uint8),
                )
    rows = [f"{c},{i:03d}.jpg,{i + 1},{int(i >= 4)}" for c in ("01", "02") for i in range(8)]
    (root / "testing" / "frame_labels.csv").write_text(
        "video,frame_file,frame_index_1based,label\n" + "\n".join(rows) + "\n"
    )
    cfg = PrepareConfig.model_validate({"video": {"size": [16, 16], "fps": 10}})
    prepare_dataset("f", VIDEO_SPEC, cfg, tmp_path / "a", base_dir=tmp_path, progress=False)
    assert PreparedDataset.load(tmp_path / "a").frames.shape[0] == 32  # fps unknown: all kept
    (root / "fps.txt").write_text("20")
    prepare_dataset("f", VIDEO_SPEC, cfg, tmp_path / "b", base_dir=tmp_path, progress=False)
    data = PreparedDataset.load(tmp_path / "b")
    assert data.frames.shape[0] == 16
    test_items = [it for it in data.items if it.video == "testing/01"]
    assert [it.origin for it in test_items] == [
        f"testing/frames/01/{i:03d}.jpg" for i in (0, 2, 4, 6)
    ]
    assert [it.label for it in test_items] == [0, 0, 1, 1]


def test_fps_without_fps_file_warns_once_per_dataset(tmp_path, caplog):
    root = _frame_folder_source(tmp_path / "vid", "20")
    (root / "fps.txt").unlink()
    cfg = PrepareConfig.model_validate({"video": {"size": [16, 16], "fps": 10}})
    with caplog.at_level(logging.WARNING, logger="vigil.data.prepare"):
        prepare_dataset("f", VIDEO_SPEC, cfg, tmp_path / "a", base_dir=tmp_path, progress=False)
    hits = [r for r in caplog.records if "has no effect" in r.getMessage()]
    assert len(hits) == 1 and hits[0].levelno == logging.WARNING
    message = hits[0].getMessage()
    assert "dataset 'f'" in message and "prepare.video.fps=10" in message and "fps.txt" in message
    assert "4 clip(s)" in message
    caplog.clear()
    (root / "fps.txt").write_text("20")
    with caplog.at_level(logging.WARNING, logger="vigil.data.prepare"):
        prepare_dataset("f", VIDEO_SPEC, cfg, tmp_path / "b", base_dir=tmp_path, progress=False)
    assert "has no effect" not in caplog.text


def test_video_shorter_than_its_labels_is_reported(tmp_path, caplog):
    root = _video_source(tmp_path / "vid", n_frames=8)
    with (root / "testing" / "frame_labels.csv").open("a") as handle:
        handle.write("s1,,9,0,\ns1,,10,0,\n")  # two rows past the end of the 8-frame clip
    cfg = PrepareConfig.model_validate({"video": {"size": [16, 16]}})
    with caplog.at_level(logging.WARNING):
        prepare_dataset("v", VIDEO_SPEC, cfg, tmp_path / "out", base_dir=tmp_path, progress=False)
    warnings = PreparedDataset.load(tmp_path / "out").manifest["warnings"]
    assert len(warnings) == 1 and warnings[0].startswith("testing/s1.avi: decoded 8 frames")
    assert "labels CSV lists 10" in caplog.text


def test_corrupt_video_file_is_named(tmp_path):
    root = _video_source(tmp_path / "vid")
    (root / "training" / "t2.avi").write_bytes(b"\x00not a video" * 20)
    cfg = PrepareConfig.model_validate({"video": {"size": [16, 16]}, "max_bad_fraction": 0.0})
    with pytest.raises(PrepareError, match="training/t2.avi: cannot open video"):
        prepare_dataset("v", VIDEO_SPEC, cfg, tmp_path / "out", base_dir=tmp_path, progress=False)


def test_cli_entry_point(tmp_path):
    _mvtec(tmp_path / "ds")
    params = {
        "data": {
            "datasets": {
                "parts": {"source": "ds", "modality": "image"},
                "gone": {"source": "missing", "modality": "image"},
            }
        },
        "prepare": {"image": {"size": [16, 16]}},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [
        sys.executable,
        str(REPO / "pipelines" / "prepare.py"),
        "--params",
        str(tmp_path / "params.yaml"),
        "--no-progress",
    ]
    ok = subprocess.run(
        [*cmd, "--dataset", "parts"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert ok.returncode == 0, ok.stderr
    assert "prepared parts: 22 items" in ok.stdout
    assert PreparedDataset.load(tmp_path / "data" / "prepared" / "parts").name == "parts"
    bad = subprocess.run(
        [*cmd, "--dataset", "gone"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2
    assert "data.datasets.gone.source: 'missing' does not exist" in bad.stderr
    assert "Traceback" not in bad.stderr
    unknown = subprocess.run(
        [*cmd, "--dataset", "nope"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert unknown.returncode == 2 and "unknown dataset 'nope'" in unknown.stderr


def test_unsupported_image_files_are_warned_about_and_kept_in_the_manifest(tmp_path, caplog):
    root = _mvtec(tmp_path / "ds")
    for name in ("train/good/a.webp", "train/good/b.webp", "test/crack/notes.txt"):
        (root / name).write_bytes(b"not used")
    for i in range(5):
        (root / "test" / "good" / f"extra{i}.gif").write_bytes(b"GIF89a")
    with caplog.at_level(logging.WARNING, logger="vigil.data.prepare"):
        result = prepare_dataset(
            "p", IMAGE_SPEC, _cfg(), tmp_path / "out", base_dir=tmp_path, progress=False
        )
    assert result.n_items == 22  # the supported files only
    ignored = PreparedDataset.load(tmp_path / "out").manifest["ignored_files"]
    assert len(ignored) == 8 and "train/good/a.webp" in ignored
    messages = [r.getMessage() for r in caplog.records]
    warning = next(m for m in messages if "unsupported extension" in m)
    assert "dataset 'p': ignored 8 file(s)" in warning
    assert "train/good/a.webp" in warning and "and 3 more" in warning


def test_unsupported_files_in_a_video_source_are_warned_about(tmp_path, caplog):
    root = _video_source(tmp_path / "vid", n_frames=6)
    (root / "training" / "t4.webm").write_bytes(b"not supported")
    with caplog.at_level(logging.WARNING, logger="vigil.data.prepare"):
        prepare_dataset(
            "v", VIDEO_SPEC, _cfg(), tmp_path / "out", base_dir=tmp_path, progress=False
        )
    assert PreparedDataset.load(tmp_path / "out").manifest["ignored_files"] == ["training/t4.webm"]
    assert "dataset 'v': ignored 1 file(s)" in caplog.text and "training/t4.webm" in caplog.text


def test_no_warning_without_unsupported_files(tmp_path, caplog):
    _mvtec(tmp_path / "ds")
    with caplog.at_level(logging.WARNING, logger="vigil.data.prepare"):
        prepare_dataset(
            "p", IMAGE_SPEC, _cfg(), tmp_path / "out", base_dir=tmp_path, progress=False
        )
    assert "unsupported extension" not in caplog.text


def _frame_folder_source(root: Path, fps_text: str) -> Path:
    """A frame-folder video source with a root-level ``fps.txt`` holding ``fps_text``."""
    for part in ("training", "testing"):
        for clip in ("01", "02"):
            for i in range(4):
                frame = np.full((24, 24, 3), 40 * i, np.uint8)
                _write(root / part / "frames" / clip / f"{i:03d}.jpg", frame)
    rows = [f"{c},{i:03d}.jpg,{i + 1},{int(i >= 2)}" for c in ("01", "02") for i in range(4)]
    (root / "testing" / "frame_labels.csv").write_text(
        "video,frame_file,frame_index_1based,label\n" + "\n".join(rows) + "\n"
    )
    (root / "fps.txt").write_text(fps_text)
    return root


@pytest.mark.parametrize(
    ("fps_text", "message"),
    [("fast", "expected one number (frames per second), got 'fast'"), ("0", "must be > 0")],
)
def test_bad_fps_file_is_a_prepare_error_naming_it(tmp_path, fps_text, message):
    _frame_folder_source(tmp_path / "vid", fps_text)
    with pytest.raises(PrepareError, match="fps.txt") as info:
        prepare_dataset(
            "f", VIDEO_SPEC, _cfg(), tmp_path / "out", base_dir=tmp_path, progress=False
        )
    assert str(info.value).startswith("dataset 'f': ") and message in str(info.value)
    assert str(tmp_path / "vid" / "fps.txt") in str(info.value)
    assert not (tmp_path / "out").exists()


def _run_prepare_cli(tmp_path: Path, dataset: str, spec: dict) -> subprocess.CompletedProcess:
    """pipelines/prepare.py on a one-dataset params file; returns the finished process."""
    params = {"data": {"datasets": {dataset: spec}}, "prepare": {"image": {"size": [16, 16]}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, str(REPO / "pipelines" / "prepare.py"), "--params", "params.yaml"]
    return subprocess.run(
        [*cmd, "--no-progress", "--dataset", dataset],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )


def _assert_one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("prepare: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_cli_bad_fps_file_exits_2_with_one_line_naming_it(tmp_path):
    _frame_folder_source(tmp_path / "vid", "thirty")
    result = _run_prepare_cli(tmp_path, "clips", {"source": "vid", "modality": "video"})
    _assert_one_error_line(result, "dataset 'clips'", "vid/fps.txt", "got 'thirty'")


def test_cli_data_errors_exit_2_with_one_line(tmp_path):
    root = _mvtec(tmp_path / "ds")
    for defect in ("crack", "stain"):
        shutil.rmtree(root / "test" / defect)
    shutil.rmtree(root / "train")
    no_train = _run_prepare_cli(tmp_path, "parts", {"source": "ds", "modality": "image"})
    _assert_one_error_line(no_train, "train/good: missing normal training")
    other = tmp_path / "other"
    _mvtec(other / "ds")
    (other / "data").write_text("a file where the output folder should go")
    unwritable = _run_prepare_cli(other, "parts", {"source": "ds", "modality": "image"})
    _assert_one_error_line(unwritable, "Not a directory", "data")
