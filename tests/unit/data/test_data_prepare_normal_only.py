"""prepare on a normal-only image source (the usual start on a real line: train/good alone)."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from vigil.config import DatasetSpec, PrepareConfig
from vigil.data.prepare import prepare_dataset
from vigil.data.prepared import PreparedDataset

SPEC = DatasetSpec(source="ds", modality="image")
CFG = PrepareConfig.model_validate({"image": {"size": [16, 16]}})


def _images(folder: Path, n: int, start: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rng = np.random.default_rng(start + i)
        cv2.imwrite(str(folder / f"{i:03d}.png"), rng.integers(0, 255, (20, 20, 3), np.uint8))


def test_train_good_alone_prepares_train_and_val_and_warns(tmp_path, caplog):
    _images(tmp_path / "ds" / "train" / "good", 10)
    with caplog.at_level(logging.WARNING, logger="vigil.data.prepare"):
        result = prepare_dataset("line", SPEC, CFG, tmp_path / "out", base_dir=tmp_path,
                                 progress=False)
    data = PreparedDataset.load(tmp_path / "out")
    counts = {s: result.counts[s]["items"] for s in ("train", "val", "tune", "test")}
    assert counts == {"train": 8, "val": 2, "tune": 0, "test": 0}
    assert data.manifest["labelled_anomalies"] == 0
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "normal-only" in warning and "gate.allow_synthetic_evidence: true" in warning
    assert "test/<defect>/" in warning


def test_test_good_only_goes_to_tune_and_test_as_normals(tmp_path):
    _images(tmp_path / "ds" / "train" / "good", 10)
    _images(tmp_path / "ds" / "test" / "good", 4, start=100)
    result = prepare_dataset("line", SPEC, CFG, tmp_path / "out", base_dir=tmp_path,
                             progress=False)
    data = PreparedDataset.load(tmp_path / "out")
    assert result.counts["tune"]["items"] + result.counts["test"]["items"] == 4
    assert result.counts["test"]["items"] >= 1 and result.counts["test"]["anomalous"] == 0
    assert data.manifest["labelled_anomalies"] == 0


def test_a_single_test_good_image_goes_to_test(tmp_path):
    _images(tmp_path / "ds" / "train" / "good", 6)
    _images(tmp_path / "ds" / "test" / "good", 1, start=100)
    result = prepare_dataset("line", SPEC, CFG, tmp_path / "out", base_dir=tmp_path,
                             progress=False)
    assert result.counts["test"]["items"] == 1 and result.counts["tune"]["items"] == 0


def test_labelled_dataset_records_its_anomaly_count(tmp_path):
    _images(tmp_path / "ds" / "train" / "good", 6)
    _images(tmp_path / "ds" / "test" / "good", 2, start=100)
    _images(tmp_path / "ds" / "test" / "crack", 3, start=200)
    prepare_dataset("line", SPEC, CFG, tmp_path / "out", base_dir=tmp_path, progress=False)
    assert PreparedDataset.load(tmp_path / "out").manifest["labelled_anomalies"] == 3
