"""The package round trip: scores from the loaded MLflow pyfunc equal in-process vigil scoring."""

from __future__ import annotations

import base64
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vigil.config import EvaluateConfig, ImagePrep, VideoPrep
from vigil.data.preprocess import decode_image, preprocess_frame
from vigil.detector import Detector, DetectorRecord
from vigil.models.conv_ae.config import ConvAEConfig
from vigil.models.convlstm.config import ConvLSTMConfig
from vigil.models.spec import build_model, model_spec, save_trained
from vigil.registry import package as pkg

IMAGE_PREP = ImagePrep(size=(32, 32), channels=3)
VIDEO_PREP = VideoPrep(size=(32, 32), channels=1)
POST = EvaluateConfig(median_blur=3, smoothing_window=3, min_area=2)


def tiny_model_dir(root: Path, modality: str, threshold: float | None) -> Path:
    """An untrained tiny network saved as the evaluate stage saves a calibrated detector."""
    prep = IMAGE_PREP if modality == "image" else VIDEO_PREP
    family, cfg = (
        ("conv_ae", ConvAEConfig(depth=2, filters=4, latent_channels=4))
        if modality == "image"
        else ("convlstm", ConvLSTMConfig(encoder_depth=1, filters=4, hidden_channels=4))
    )
    spec = model_spec(family, prep.channels, prep.size, cfg, prep=prep)
    torch.manual_seed(1)
    record = DetectorRecord(
        spec=spec, postprocess=POST, threshold=threshold, pixel_threshold=0.01, dataset="tiny"
    )
    Detector(build_model(spec), record).save(root)
    return root


def raw_images(n: int, seed: int = 0) -> list[bytes]:
    """PNG bytes of ``n`` 48x40 BGR images (not the model size: preprocessing must resize)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image = rng.integers(0, 80, (48, 40, 3), dtype=np.uint8)
        image[10 + i : 20 + i, 5:15] = 250
        ok, buf = cv2.imencode(".png", image)
        assert ok
        out.append(buf.tobytes())
    return out


def in_process_scores(model_dir: Path, images: list[bytes], modality: str) -> np.ndarray:
    """Reference: weights loaded with safetensors into a fresh network, scored on frames
    preprocessed here (the evaluate stage's path: prepared frames -> detector)."""
    record = Detector.load(model_dir).record
    network = build_model(record.spec)
    network.load_state_dict(load_file(model_dir / "weights.safetensors"))
    detector = Detector(network, record)
    prep = IMAGE_PREP if modality == "image" else VIDEO_PREP
    frames = np.stack([preprocess_frame(decode_image(b, "ref"), prep) for b in images])
    if modality == "image":
        return detector.score_prepared(frames).scores
    return detector.score_clips([frames])[0].scores


@pytest.mark.parametrize("modality", ["image", "video"])
def test_logged_package_scores_equal_in_process_scores(mlflow_store, tmp_path, modality):
    images = raw_images(5)
    probe = tiny_model_dir(tmp_path / "probe", modality, threshold=0.0)
    reference = in_process_scores(probe, images, modality)
    finite = np.isfinite(reference)
    if modality == "video":
        assert np.isnan(reference[0]) and finite[1:].all()  # first frame has no prediction
    # A threshold between the scores, so the package's decisions are tested both ways.
    threshold = float(np.median(reference[finite]))
    model_dir = tiny_model_dir(tmp_path / "model", modality, threshold=threshold)
    with mlflow.start_run() as run:
        logged = pkg.log_package(model_dir, run_id=run.info.run_id)
    assert logged.run_id == run.info.run_id and logged.threshold == threshold
    loaded = mlflow.pyfunc.load_model(logged.model_uri)
    table = loaded.predict(pkg.images_frame(images))
    np.testing.assert_array_equal(table["score"].to_numpy(), reference)  # NaN == NaN here
    decided = table["is_anomaly"].to_numpy()[finite]
    np.testing.assert_array_equal(decided, reference[finite] >= threshold)
    assert decided.any() and not decided.all()


def test_package_heatmap_signature_and_checksum(mlflow_store, tmp_path):
    model_dir = tiny_model_dir(tmp_path / "model", "image", threshold=1e9)
    images = raw_images(2)
    out = pkg.save_package(tmp_path / "pkg", model_dir)
    # Weights inside the package are byte-identical to the trained ones.
    art = pkg.find_artifacts(out)
    assert pkg.file_sha256(art / "weights.safetensors") == pkg.file_sha256(
        model_dir / "weights.safetensors"
    )
    assert sorted(p.name for p in art.iterdir()) == ["detector.json", "weights.safetensors"]
    record = pkg.read_detector_record(out)  # threshold and post-processing stored once
    assert record.threshold == 1e9 and record.modality == "image" and record.postprocess == POST
    assert record.prep.size == (32, 32)
    loaded = mlflow.pyfunc.load_model(str(out))
    sig = loaded.metadata.get_input_schema()
    assert sig.input_names() == ["image"]
    table = loaded.predict(pkg.images_frame(images), params={"return_heatmap": True})
    assert not table["is_anomaly"].any()
    heat = cv2.imdecode(
        np.frombuffer(base64.b64decode(table["heatmap"][0]), np.uint8), cv2.IMREAD_COLOR
    )
    assert heat.shape == (48, 40, 3)  # the overlay is drawn at the input's resolution
    # Decoded frames in-process give the same scores as encoded bytes through pyfunc.
    direct = loaded.unwrap_python_model().score_decoded([decode_image(b) for b in images])
    np.testing.assert_array_equal(direct["score"].to_numpy(), table["score"].to_numpy())
    # Checksum: stable, and sensitive to any file change (an added .pyc included).
    first = pkg.package_checksum(out)
    assert pkg.package_checksum(out) == first
    assert not list(out.rglob("*.pyc"))  # loading and scoring wrote no bytecode into it
    (out / "code" / "vigil" / "__pycache__").mkdir(exist_ok=True)
    (out / "code" / "vigil" / "__pycache__" / "x.pyc").write_bytes(b"cache")
    assert pkg.package_checksum(out) != first
    (out / "code" / "vigil" / "__pycache__" / "x.pyc").unlink()
    assert pkg.package_checksum(out) == first
    weights = art / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    assert pkg.package_checksum(out) != first
    requirements = (out / "requirements.txt").read_text()
    assert "torch==2.13.0" in requirements and "+cpu" not in requirements
    assert (out / "code" / "vigil" / "registry" / "pyfunc_model.py").is_file()


def test_uncalibrated_and_legacy_packages_are_clear_errors(tmp_path):
    from vigil.serving.loader import ModelLoadError, scorer_from_package

    model_dir = tiny_model_dir(tmp_path / "model", "image", threshold=None)
    with pytest.raises(pkg.PackageError, match="no calibrated threshold; run the evaluate"):
        pkg.stage_artifacts(model_dir, tmp_path / "out")
    legacy = tmp_path / "legacy" / "artifacts" / "model"  # a package of vigil before 02d2c24
    legacy.mkdir(parents=True)
    for name in ("package.json", "model.json", "threshold.json"):
        (legacy / name).write_text("{}")
    with pytest.raises(pkg.PackageError, match=r"older vigil .*re-register it with `dvc repro"):
        pkg.load_detector(tmp_path / "legacy")
    manifest = {"name": "vigil-capsules-image", "version": "3"}
    with pytest.raises(ModelLoadError, match=r"vigil-capsules-image version 3: .*re-register"):
        scorer_from_package(tmp_path / "legacy", manifest, smoke_test=False)


ALIGN_PREP = ImagePrep(size=(32, 32), channels=3, align="phase")


def textured_image(shift: tuple[int, int] = (0, 0)) -> np.ndarray:
    """BGR uint8 (64, 64, 3): smooth blobs and a bright bar, rolled by ``shift`` (dy, dx)."""
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    base = 90 + 60 * np.sin(xx / 6.0) * np.cos(yy / 9.0)
    image = np.stack([base, base * 0.8 + 20, 255 - base], axis=-1)
    image[20:30, 12:40] = 250
    image = np.clip(image, 0, 255).astype(np.uint8)
    return np.roll(image, shift, axis=(0, 1))


def test_aligned_package_scores_as_evaluation_did(tmp_path):
    """prep.align set: the detector ships the prepared reference frame; pyfunc and the serving
    loader align every input to it, exactly as the prepared (evaluated) data was aligned."""
    from vigil.serving.loader import scorer_from_package

    model_dir = tmp_path / "model"
    cfg = ConvAEConfig(depth=2, filters=4, latent_channels=4)
    spec = model_spec("conv_ae", 3, ALIGN_PREP.size, cfg, prep=ALIGN_PREP)
    torch.manual_seed(1)
    save_trained(model_dir, build_model(spec).eval(), spec)
    reference = preprocess_frame(textured_image(), ALIGN_PREP)  # what prepare aligned to
    detector = Detector.from_trained(model_dir, POST, reference=reference)
    detector = detector.calibrated(threshold=0.0)
    detector.save(tmp_path / "detector")
    shifted = [textured_image((3, -2)), textured_image((-4, 5))]

    # evaluation's view: frames aligned to the reference at prepare time, then scored
    aligned = np.stack([preprocess_frame(im, ALIGN_PREP, reference) for im in shifted])
    expected = detector.score_prepared(aligned).scores
    unaligned = detector.score_prepared(
        np.stack([preprocess_frame(im, ALIGN_PREP) for im in shifted])
    ).scores
    assert not np.allclose(expected, unaligned)  # alignment matters for these inputs

    out = pkg.save_package(tmp_path / "pkg", tmp_path / "detector")
    np.testing.assert_array_equal(pkg.load_detector(out).reference, reference)  # lossless

    pngs = [cv2.imencode(".png", im)[1].tobytes() for im in shifted]
    table = mlflow.pyfunc.load_model(str(out)).predict(pkg.images_frame(pngs))
    np.testing.assert_allclose(table["score"].to_numpy(), expected, rtol=1e-6)

    scorer = scorer_from_package(out, {}, smoke_test=False)
    served = [r.score for r in scorer.score_images(shifted)]
    np.testing.assert_allclose(served, expected, rtol=1e-6)
    # a stream or clip aligns to the same reference, not to its own first frame
    np.testing.assert_array_equal(scorer.detector.prepare_clip(shifted), aligned)
    stream = scorer.stream()
    streamed = [stream.push(im).score for im in shifted]
    assert streamed[0] == pytest.approx(expected[0], rel=1e-6)
