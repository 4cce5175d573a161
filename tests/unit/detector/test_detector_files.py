"""The detector folder (detector.json + weights.safetensors) and scoring decoded inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vigil.config import EvaluateConfig, ImagePrep
from vigil.detector import DETECTOR_FILE, Detector, DetectorError, DetectorRecord
from vigil.detector import postprocess as post
from vigil.models.conv_ae.config import ConvAEConfig
from vigil.models.spec import build_model, model_spec, save_trained

POSTPROCESS = EvaluateConfig(median_blur=3)


def network_and_spec(prep: ImagePrep):
    torch.manual_seed(0)
    cfg = ConvAEConfig(depth=2, filters=4, latent_channels=2)
    spec = model_spec("conv_ae", prep.channels, prep.size, cfg, prep=prep)
    return build_model(spec), spec


def calibrated(prep: ImagePrep, threshold: float = 0.05) -> Detector:
    network, spec = network_and_spec(prep)
    record = DetectorRecord(
        spec=spec, postprocess=POSTPROCESS, threshold=threshold, pixel_threshold=0.02
    )
    return Detector(network, record)


def images(n: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(n)]


def test_save_then_load_scores_identically(tmp_path):
    prep = ImagePrep(size=(32, 32), channels=3)
    det = calibrated(prep).calibrated(
        calibration={"method": "test"}, data_hash="abc", test_split_hash="def"
    )
    det.save(tmp_path / "detector")
    assert sorted(p.name for p in (tmp_path / "detector").iterdir()) == [
        DETECTOR_FILE,
        "weights.safetensors",
    ]
    loaded = Detector.load(tmp_path / "detector")
    assert loaded.record == det.record and loaded.threshold == 0.05
    assert loaded.record.test_split_hash == "def" and loaded.record.family == "conv_ae"
    batch = images(3, 40, 50)
    expected = [item.score for item in det.score(batch)]
    assert [item.score for item in loaded.score(batch)] == pytest.approx(expected, rel=1e-7)
    raw = json.loads((tmp_path / "detector" / DETECTOR_FILE).read_text())
    assert raw["threshold"] == 0.05 and raw["spec"]["prep"]["size"] == [32, 32]


def test_from_trained_is_uncalibrated_until_calibrated(tmp_path):
    prep = ImagePrep(size=(32, 32), channels=3)
    network, spec = network_and_spec(prep)
    save_trained(tmp_path / "model", network, spec)
    det = Detector.from_trained(tmp_path / "model", POSTPROCESS, dataset="tiny")
    assert det.record.threshold is None and det.record.dataset == "tiny"
    with pytest.raises(DetectorError, match="no calibrated threshold"):
        det.threshold  # noqa: B018
    ready = det.calibrated(threshold=0.1, pixel_threshold=0.03)
    assert ready.threshold == 0.1 and ready.color_top == pytest.approx(0.06)
    assert det.record.threshold is None  # calibrated() returns a new detector


def test_an_aligning_prep_needs_its_reference_frame_and_it_travels(tmp_path):
    prep = ImagePrep(size=(32, 32), channels=3, align="phase")
    network, spec = network_and_spec(prep)
    save_trained(tmp_path / "model", network, spec)
    with pytest.raises(DetectorError, match="no alignment reference frame"):
        Detector.from_trained(tmp_path / "model", POSTPROCESS)
    with pytest.raises(DetectorError, match=r"expected uint8 \(32, 32, 3\)"):
        Detector.from_trained(tmp_path / "model", POSTPROCESS, reference=np.zeros((8, 8, 3)))
    reference = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    det = Detector.from_trained(tmp_path / "model", POSTPROCESS, reference=reference)
    det.calibrated(threshold=0.05).save(tmp_path / "detector")
    loaded = Detector.load(tmp_path / "detector")
    np.testing.assert_array_equal(loaded.reference, reference)


def test_bad_and_legacy_folders_are_refused_by_name(tmp_path):
    with pytest.raises(DetectorError, match="missing .*evaluate stage writes the detector"):
        Detector.load(tmp_path)
    (tmp_path / "package.json").write_text("{}")  # a package of vigil before the detector
    with pytest.raises(DetectorError, match=r"older vigil .*dvc repro -f evaluate@<dataset> "
                       r"register@<dataset>"):
        Detector.load(tmp_path)
    calibrated(ImagePrep(size=(32, 32))).save(tmp_path / "d")
    path = tmp_path / "d" / DETECTOR_FILE
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "format": "vigil-detector/0"}))
    with pytest.raises(DetectorError, match="format 'vigil-detector/0'"):
        Detector.load(tmp_path / "d")
    path.write_text(json.dumps({**record, "surprise": 1}))
    with pytest.raises(DetectorError, match="invalid detector record"):
        Detector.load(tmp_path / "d")


def test_score_draws_overlays_at_the_input_resolution():
    det = calibrated(ImagePrep(size=(32, 32), channels=3))
    batch = images(2, 45, 70, seed=2)
    items = det.score(batch, overlay=True)
    prepared = np.stack([det.prepare(image) for image in batch])
    np.testing.assert_allclose(
        [item.score for item in items], det.score_prepared(prepared).scores, rtol=1e-6
    )
    for item, image in zip(items, batch, strict=True):
        assert item.overlay.shape == (45, 70, 3) and item.overlay.dtype == np.uint8
        heat = post.map_to_input(item.anomaly_map, (45, 70))
        np.testing.assert_array_equal(
            item.overlay, post.overlay_bgr(image, heat, det.color_top)
        )
    assert det.score(batch)[0].overlay is None  # only on demand
    gray = det.score([batch[0][..., 0]], overlay=True)[0]
    assert gray.overlay.shape == (45, 70, 3)
    with pytest.raises(ValueError, match="empty batch"):
        det.score([])


def test_overlay_places_the_map_in_the_prep_roi_of_the_input():
    roi = (10, 5, 40, 30)  # x, y, w, h in source pixels: what prepare cropped
    det = calibrated(ImagePrep(size=(32, 32), channels=3, roi=roi))
    image = images(1, 60, 80, seed=3)[0]
    item = det.score([image], overlay=True)[0]
    np.testing.assert_array_equal(item.frame, det.prepare(image))
    assert item.overlay.shape == (60, 80, 3)
    cold = post.overlay_bgr(image, np.zeros((60, 80), np.float32), det.color_top)
    outside = np.ones((60, 80), bool)
    outside[5:35, 10:50] = False
    np.testing.assert_array_equal(item.overlay[outside], cold[outside])  # heat 0 off the ROI
    heat = post.map_to_input(item.anomaly_map, (60, 80), roi)
    np.testing.assert_array_equal(item.overlay, post.overlay_bgr(image, heat, det.color_top))
    assert heat[5:35, 10:50].max() > 0  # the map lands inside the ROI
