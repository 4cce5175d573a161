"""One detector, the same answers everywhere (issue 11): the same inputs scored through the
evaluate stage's path, the registered MLflow pyfunc (``mlflow.pyfunc.load_model``), ``vigil
serve`` over real HTTP and ``vigil watch`` give identical scores (|diff| <= 1e-6), identical
``is_anomaly`` and identical heat-map PNG bytes, for each built-in family.

Inputs are the prepared frames themselves (PNG-encoded), so preprocessing is the identity and
every path must land on exactly the evaluated numbers.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path

import cv2
import httpx
import mlflow
import numpy as np
import pytest

from tests.unit.serving.conftest import LiveServer
from tests.unit.training.conftest import (
    make_image_dataset,
    make_video_dataset,
    tiny_params,
    tune_clip_as_test,
)
from vigil.data.prepared import PreparedDataset
from vigil.evaluation.evaluate import evaluate
from vigil.evaluation.splits import score_split
from vigil.registry.package import encode_png, frames_to_png, images_frame, save_package
from vigil.training import fit

TOL = 1e-6


def _bgr(frame: np.ndarray) -> np.ndarray:
    """A prepared frame (RGB or gray (h, w, C)) as OpenCV would decode its PNG."""
    return cv2.cvtColor(frame, cv2.COLOR_RGB2BGR) if frame.shape[2] == 3 else frame[..., 0]


@pytest.fixture(params=["conv_ae", "convlstm", "future_frame"])
def trained(request, mlflow_store: str, tmp_path: Path):
    """(modality, prepared data, split, detector folder, package folder) for a tiny trained model
    of each family."""
    family = request.param
    modality = "image" if family == "conv_ae" else "video"
    if modality == "image":
        name, split = "tiny", "test"
        data_dir = make_image_dataset(tmp_path / "data" / "prepared" / name)
    else:
        name, split = "tinyvid", "tune"
        data_dir = make_video_dataset(tmp_path / "data" / "prepared" / name)
    params = tiny_params(video_family=family if modality == "video" else "convlstm",
                         max_epochs=2)
    if modality == "video":  # the tiny clips have no test split: evaluate on tune as test
        tune_clip_as_test(data_dir)
    fit(params, data_dir, tmp_path / "models" / name)
    evaluate(params, name, data_dir, tmp_path / "models" / name, tmp_path / "reports" / name,
             log_mlflow=False)
    detector_dir = tmp_path / "models" / name / "detector"
    package = save_package(tmp_path / f"package-{name}", detector_dir)
    return modality, PreparedDataset.load(data_dir), split, detector_dir, package


def test_evaluate_pyfunc_serve_and_watch_give_identical_answers(trained, tmp_path: Path):
    from vigil.detector import Detector
    from vigil.serving.app import create_app
    from vigil.serving.follow import ModelHolder
    from vigil.serving.loader import load_scorer
    from vigil.serving.watch import watch

    modality, data, split, detector_dir, package = trained
    detector = Detector.load(detector_dir)
    evaluated = score_split(detector, data, split)
    if modality == "video":  # one clip, in time order
        start, stop = evaluated.clips[0][1:]
        rows = evaluated.rows[start:stop]
        expected_scores = evaluated.scores[start:stop]
        maps = evaluated.maps[start:stop]
    else:
        rows, expected_scores, maps = evaluated.rows, evaluated.scores, evaluated.maps
    frames = np.asarray(data.frames[rows])
    expected_flags = [bool(math.isfinite(s) and s >= detector.threshold) for s in expected_scores]
    expected_png = [encode_png(detector.overlay(m, frame=f)) for m, f in zip(maps, frames)]
    pngs = frames_to_png(frames)

    # the registered package, loaded the way MLflow loads it
    loaded = mlflow.pyfunc.load_model(str(package))
    table = loaded.predict(images_frame(pngs), params={"return_heatmap": True})
    _assert_same(expected_scores, expected_flags, expected_png, table["score"],
                 table["is_anomaly"], [base64.b64decode(h) for h in table["heatmap"]], "pyfunc")

    # vigil serve, real HTTP
    scorer = load_scorer(package)
    route = "/score/clip" if modality == "video" else "/score/batch"
    with LiveServer(create_app(ModelHolder(scorer))) as server:
        files = [("files", (f"f{i:03d}.png", png, "image/png")) for i, png in enumerate(pngs)]
        answer = httpx.post(f"{server.url}{route}?heatmap=true", files=files, timeout=60).json()
    results = answer["results"]
    _assert_same(expected_scores, expected_flags, expected_png,
                 [r["score"] for r in results], [r["is_anomaly"] for r in results],
                 [base64.b64decode(r["heatmap_png"]) for r in results], "serve")

    # vigil watch over a folder of the same frames (one stream)
    folder = tmp_path / "stream"
    folder.mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:04d}.png"), _bgr(frame))
    seen: list = []
    watch(scorer, str(folder), target_fps=None, events=None, output=tmp_path / "side.mp4",
          on_frame=lambda index, result: seen.append(result))
    _assert_same(expected_scores, expected_flags, expected_png,
                 [r.score for r in seen], [r.is_anomaly for r in seen],
                 [encode_png(r.overlay) for r in seen], "watch")


def _assert_same(scores, flags, pngs, got_scores, got_flags, got_pngs, where: str) -> None:
    got_scores = [float("nan") if s is None else float(s) for s in got_scores]
    assert len(got_scores) == len(scores), where
    for i, (want, got) in enumerate(zip(scores, got_scores)):
        if math.isnan(want):
            assert math.isnan(got), f"{where}: item {i} should have no score, got {got}"
        else:
            assert abs(want - got) <= TOL, f"{where}: item {i} score {got} != {want}"
    assert [bool(f) for f in got_flags] == flags, f"{where}: is_anomaly differs"
    assert got_pngs == pngs, f"{where}: heat-map PNG bytes differ"
