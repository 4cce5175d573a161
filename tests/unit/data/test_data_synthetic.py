"""Built-in synthetic datasets: layout, counts, ground truth, determinism, the generate entry."""

from __future__ import annotations

import csv
import itertools
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from vigil.config import CapsulesGen, GenerateConfig, PrintGen
from vigil.data.synthetic import (
    CAPSULE_DEFECTS,
    PRINT_ANOMALIES,
    generate_all,
    render_capsule_image,
    render_clip,
)
from vigil.data.synthetic._common import build_atomically, item_rng
from vigil.data.synthetic.melt_pool import LABELS_HEADER, count_frames, plan_events

REPO_ROOT = Path(__file__).resolve().parents[3]
TINY = GenerateConfig(
    seed=3,
    capsules=CapsulesGen(image_size=48, n_train=3, n_test_good=2, n_test_per_defect=2),
    print=PrintGen(
        frame_size=48,
        fps=10,
        n_train_videos=1,
        n_test_videos=2,
        frames_per_video=24,
        anomalies_per_test_video=2,
    ),
)


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("raw")
    generate_all(out, TINY)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _decode(path: Path) -> np.ndarray:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return np.stack(frames)


def _labels(root: Path) -> list[dict[str, str]]:
    with open(root / "print" / "testing" / "frame_labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# --- capsules ------------------------------------------------------------------------------


def test_capsules_layout_counts_and_masks(raw: Path) -> None:
    root, cfg = raw / "capsules", TINY.capsules
    assert len(list((root / "train" / "good").glob("*.png"))) == cfg.n_train
    assert len(list((root / "test" / "good").glob("*.png"))) == cfg.n_test_good
    assert sorted(p.name for p in (root / "test").iterdir()) == sorted(["good", *CAPSULE_DEFECTS])
    assert sorted(p.name for p in (root / "ground_truth").iterdir()) == sorted(CAPSULE_DEFECTS)
    for image_path in root.glob("t*/*/*.png"):
        image = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED)
        assert image.shape == (48, 48, 3) and image.dtype == np.uint8, image_path
    for defect in CAPSULE_DEFECTS:
        images = sorted((root / "test" / defect).glob("*.png"))
        masks = sorted((root / "ground_truth" / defect).glob("*_mask.png"))
        assert len(images) == cfg.n_test_per_defect
        assert [m.name for m in masks] == [f"{p.stem}_mask.png" for p in images]
        for mask_path in masks:
            mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
            assert mask.shape == (48, 48) and mask.dtype == np.uint8
            assert set(np.unique(mask)) == {0, 255}, mask_path  # non-empty, binary, not full


def test_capsules_same_seed_same_bytes_other_seed_differs(raw: Path, tmp_path: Path) -> None:
    generate_all(tmp_path / "again", TINY)
    assert _files(tmp_path / "again" / "capsules") == _files(raw / "capsules")
    other = TINY.model_copy(update={"seed": 4})
    generate_all(tmp_path / "other", other)
    a, b = _files(raw / "capsules"), _files(tmp_path / "other" / "capsules")
    assert a.keys() == b.keys()
    assert all(a[name] != b[name] for name in a if name.endswith(".png") and "mask" not in name)


def test_capsule_normal_images_vary() -> None:
    images = [render_capsule_image(item_rng(0, 1, i), 64)[0].astype(float) for i in range(6)]
    diffs = [np.abs(images[i] - images[j]).mean() for i in range(6) for j in range(i + 1, 6)]
    assert min(diffs) > 5.0  # positions, orientations, colors, belt and light all vary


@pytest.mark.parametrize("defect", CAPSULE_DEFECTS)
def test_capsule_defects_visible_at_64px(defect: str) -> None:
    for i in range(8):
        image, mask = render_capsule_image(item_rng(1, 2, i), 128, defect)
        small = cv2.resize(mask, (64, 64), interpolation=cv2.INTER_AREA) > 127
        assert small.sum() >= 8, f"{defect} #{i}: only {small.sum()} mask pixels at 64x64"
        good, _ = render_capsule_image(item_rng(1, 2, i), 128)
        assert good.shape == image.shape


def test_capsule_good_mask_is_empty_and_unknown_defect_is_refused() -> None:
    _, mask = render_capsule_image(item_rng(0, 0), 48)
    assert not mask.any()
    with pytest.raises(ValueError, match="unknown capsule defect 'dent'"):
        render_capsule_image(item_rng(0, 0), 48, "dent")


# --- print ---------------------------------------------------------------------------------


def test_print_layout_videos_decode_to_frame_count(raw: Path) -> None:
    root, cfg = raw / "print", TINY.print
    train = sorted((root / "training").glob("*.avi"))
    test = sorted((root / "testing").glob("*.avi"))
    assert len(train) == cfg.n_train_videos and len(test) == cfg.n_test_videos
    for path in train + test:
        assert count_frames(path) == cfg.frames_per_video, path
        capture = cv2.VideoCapture(str(path))
        assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(cfg.fps)
        ok, frame = capture.read()
        capture.release()
        assert ok and frame.shape == (48, 48, 3)


def test_print_labels_match_frames_and_masks(raw: Path) -> None:
    root, cfg = raw / "print" / "testing", TINY.print
    with open(root / "frame_labels.csv", newline="") as handle:
        assert tuple(next(csv.reader(handle))) == LABELS_HEADER
    rows = _labels(raw)
    assert len(rows) == cfg.n_test_videos * cfg.frames_per_video
    seen_kinds = set()
    for clip in sorted(p.stem for p in root.glob("*.avi")):
        clip_rows = [r for r in rows if r["video"] == clip]
        assert [int(r["frame_index_1based"]) for r in clip_rows] == list(range(1, 25))
        assert all(r["frame_file"] == "" for r in clip_rows)
        labels = np.array([int(r["label"]) for r in clip_rows])
        kinds = [r["defect"] for r in clip_rows]
        assert all((k == "good") == (lab == 0) for k, lab in zip(kinds, labels, strict=True))
        starts = np.flatnonzero(np.diff(np.r_[0, labels]) == 1)
        assert len(starts) == cfg.anomalies_per_test_video  # separate events
        mask_files = {int(p.stem) for p in (root / "masks" / clip).glob("*.png")}
        assert mask_files == {int(r["frame_index_1based"]) for r in clip_rows if r["label"] == "1"}
        for index in mask_files:
            mask = cv2.imread(str(root / "masks" / clip / f"{index:04d}.png"), cv2.IMREAD_UNCHANGED)
            assert mask.shape == (48, 48) and mask.any() and set(np.unique(mask)) <= {0, 255}
        seen_kinds |= {k for k in kinds if k != "good"}
    assert seen_kinds == set(PRINT_ANOMALIES)


def test_print_same_seed_same_frames_other_seed_differs(raw: Path, tmp_path: Path) -> None:
    generate_all(tmp_path / "again", TINY)
    for split in ("training", "testing"):
        for path in sorted((raw / "print" / split).glob("*.avi")):
            again = tmp_path / "again" / "print" / split / path.name
            np.testing.assert_array_equal(_decode(path), _decode(again))
    assert (tmp_path / "again/print/testing/frame_labels.csv").read_bytes() == (
        raw / "print/testing/frame_labels.csv"
    ).read_bytes()
    other, _, _ = render_clip(4, "training", 0, TINY.print)
    same, _, _ = render_clip(3, "training", 0, TINY.print)
    assert np.abs(other.astype(int) - same.astype(int)).mean() > 1.0


def test_print_anomalies_are_visible_and_stall_stops() -> None:
    cfg = PrintGen(frame_size=64, fps=15, frames_per_video=80, anomalies_per_test_video=4)
    frames, masks, events = render_clip(0, "testing", 0, cfg, PRINT_ANOMALIES)
    gray = frames.astype(float).mean(axis=3)
    for event in events:
        span = range(event.start, event.start + event.length)
        for t in span:
            assert (masks[t] > 0).sum() >= 8, f"{event.kind} frame {t}: tiny mask"
            if event.kind != "stall":  # the bright thing sits where its mask is
                assert gray[t][masks[t] > 0].mean() > gray[t].mean() + 30, event.kind
        if event.kind == "stall":
            # The pool does not move: its mask (which grows as it overheats) stays centered.
            cy, cx = np.round(np.argwhere(masks[event.start]).mean(0)).astype(int)
            assert all(masks[t][cy, cx] for t in span)
            centroids = [np.argwhere(masks[t]).mean(0) for t in span]
            assert np.ptp(centroids, axis=0).max() < 1.5
    normal = [t for t in range(cfg.frames_per_video) if not any(e.covers(t) for e in events)]
    assert not masks[normal].any()


def test_plan_events_fit_and_too_short_video_is_refused() -> None:
    for seed in range(20):
        events = plan_events(np.random.default_rng(seed), 60, PRINT_ANOMALIES[:3])
        covered = [t for e in events for t in range(e.start, e.start + e.length)]
        assert len(covered) == len(set(covered)) and max(covered) < 60
        assert all(b.start >= a.start + a.length + 4 for a, b in itertools.pairwise(events))
    with pytest.raises(ValueError, match="frames_per_video=12 is too short"):
        plan_events(np.random.default_rng(0), 12, PRINT_ANOMALIES)


# --- writing ---------------------------------------------------------------------------------


def test_build_atomically_replaces_and_keeps_old_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "data"
    build_atomically(target, lambda tmp: (tmp / "a.txt").write_text("one"))
    build_atomically(target, lambda tmp: (tmp / "b.txt").write_text("two"))
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert target.stat().st_mode & 0o777 == 0o755

    def broken(tmp: Path) -> None:
        (tmp / "c.txt").write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        build_atomically(target, broken)
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temp folders left


def _write_params(path: Path, generate_yaml: str) -> None:
    path.write_text(
        "data:\n  datasets:\n    capsules: {source: data/raw/capsules, modality: image}\n"
        + generate_yaml
    )


def _run_generate(params: Path, out: Path) -> subprocess.CompletedProcess[str]:
    script = REPO_ROOT / "pipelines" / "generate.py"
    command = [sys.executable, str(script), "--params", str(params), "--out", str(out)]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def test_generate_entry_writes_both_datasets(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    _write_params(
        params,
        "generate:\n  seed: 1\n"
        "  capsules: {image_size: 32, n_train: 2, n_test_good: 1, n_test_per_defect: 1}\n"
        "  print: {frame_size: 32, fps: 8, n_train_videos: 1, n_test_videos: 1,"
        " frames_per_video: 24, anomalies_per_test_video: 1}\n",
    )
    out = tmp_path / "raw"
    result = _run_generate(params, out)
    assert result.returncode == 0, result.stderr
    assert len(list((out / "capsules" / "train" / "good").glob("*.png"))) == 2
    assert count_frames(out / "print" / "testing" / "test_000.avi") == 24
    assert "done in" in result.stdout


def test_generate_entry_names_a_bad_key(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    _write_params(params, "generate:\n  capsules: {image_sise: 64}\n")
    result = _run_generate(params, tmp_path / "raw")
    assert result.returncode == 2
    assert "generate.capsules.image_sise: unknown key" in result.stderr
    assert not (tmp_path / "raw").exists()
