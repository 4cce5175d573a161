"""Real data end to end: ../shared/data/magnetic_tile (MVTec, gray JPG, variable sizes) and
../shared/data/ucsd_ped2 (frame folders + frame_labels.csv). Skipped when the folders are absent.

The whole sets prepare in a few seconds (1344 images, 2910 frames at 32x32), so they run in the
default suite; the subset test exercises resampling on real frames through a symlinked tree.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from tests.conftest import shared_dataset

from vigil.config import DatasetSpec, PrepareConfig
from vigil.data.prepare import prepare_dataset
from vigil.data.prepared import PreparedDataset
from vigil.data.preprocess import decode_mask

SMALL = {"size": [32, 32], "channels": 1}


def test_magnetic_tile_end_to_end(tmp_path):
    root = shared_dataset("magnetic_tile")
    cfg = PrepareConfig.model_validate({"image": {**SMALL, "equalize": "clahe"}})
    spec = DatasetSpec(source=str(root), modality="image")
    result = prepare_dataset("tile", spec, cfg, tmp_path / "tile", workers=2, progress=False)
    data = PreparedDataset.load(tmp_path / "tile")
    n_sources = sum(1 for p in root.glob("t*/*/*.jpg"))
    assert result.n_bad == 0 and len(data.items) == n_sources
    assert data.frames.shape[1:] == (32, 32, 1)
    counts = data.manifest["counts"]
    assert counts["train"]["items"] + counts["val"]["items"] == len(
        list((root / "train" / "good").iterdir())
    )
    defects = {p.name for p in (root / "test").iterdir()} - {"good"}
    for split in ("tune", "test"):  # stratified: every defect type on both sides
        assert set(counts[split]["by_defect"]) == defects | {"good"}
    anomalous = [it for it in data.items if it.label]
    assert all(it.has_mask for it in anomalous)  # every defective tile has a mask
    empty_sources = sum(  # a few masks are empty after binarizing at > 127 (README: four)
        not decode_mask(
            root / "ground_truth" / it.defect / f"{Path(it.origin).stem}_mask.png"
        ).any()
        for it in anomalous
    )
    with_pixels = sum(int(data.masks[it.index].max() == 1) for it in anomalous)
    assert 0 < empty_sources < 10
    assert with_pixels == len(anomalous) - empty_sources  # small defects survive the resize
    assert not any(data.masks[it.index].any() for it in data.items if not it.label)
    assert len({it.sha256 for it in data.items}) == len(data.items)


def _ped2_labels(root: Path) -> dict[tuple[str, str], int]:
    with (root / "testing" / "frame_labels.csv").open() as handle:
        return {(r["video"], r["frame_file"]): int(r["label"]) for r in csv.DictReader(handle)}


def test_ucsd_ped2_end_to_end(tmp_path):
    root = shared_dataset("ucsd_ped2")
    cfg = PrepareConfig.model_validate({"video": {**SMALL, "fps": 10}})
    spec = DatasetSpec(source=str(root), modality="video")
    prepare_dataset("ped2", spec, cfg, tmp_path / "ped2", workers=2, progress=False)
    data = PreparedDataset.load(tmp_path / "ped2")
    n_frames = sum(1 for _ in root.glob("*/frames/*/*.jpg"))
    assert len(data.items) == n_frames  # no fps.txt: source rate unknown, nothing dropped
    labels = _ped2_labels(root)
    for item in data.items:
        if item.video.startswith("testing/"):
            clip, frame_file = item.video.split("/")[1], Path(item.origin).name
            assert item.label == labels[(clip, frame_file)]
        else:
            assert item.label == 0 and item.split in ("train", "val")
    for split in ("tune", "test"):
        assert data.labels(split).sum() > 0
    for rows in data.videos("train") + data.videos("test"):
        assert np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows)))


def test_ucsd_ped2_subset_resampled(tmp_path):
    """Two training clips and the test clips, linked (not copied), declared at 10 fps -> 5 fps."""
    real = shared_dataset("ucsd_ped2")
    root = tmp_path / "ped2"
    for part, clips in (("training", ("01", "02")), ("testing", ("01", "02"))):
        for clip in clips:
            (root / part / "frames").mkdir(parents=True, exist_ok=True)
            (root / part / "frames" / clip).symlink_to(real / part / "frames" / clip)
    (root / "testing" / "frame_labels.csv").symlink_to(real / "testing" / "frame_labels.csv")
    (root / "fps.txt").write_text("10\n")
    cfg = PrepareConfig.model_validate({"video": {"size": [24, 24], "channels": 3, "fps": 5}})
    prepare_dataset(
        "sub",
        DatasetSpec(source=str(root), modality="video"),
        cfg,
        tmp_path / "out",
        workers=2,
        progress=False,
    )
    data = PreparedDataset.load(tmp_path / "out")
    for name, info in data.manifest["clips"].items():
        n_source = len(list((root / name.split("/")[0] / "frames" / name.split("/")[1]).iterdir()))
        assert info["resampled"] and info["frames"] == (n_source + 1) // 2
    labels = _ped2_labels(real)
    kept = [it for it in data.items if it.video == "testing/01"]
    assert [Path(it.origin).name for it in kept[:3]] == ["000.jpg", "002.jpg", "004.jpg"]
    assert all(it.label == labels[("01", Path(it.origin).name)] for it in kept)
    assert data.frames.shape[1:] == (24, 24, 3)
