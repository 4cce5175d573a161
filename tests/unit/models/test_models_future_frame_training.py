"""future_frame through the real pipeline, shrunk: ``fit`` (plan + fusion scales set on the normal
val split), the evaluate stage (video metrics beside the raw pooled AUROC), the saved detector
scoring as evaluated; and the balanced video sweep objective on a trained network."""

from __future__ import annotations


import numpy as np
import pytest

from tests.unit.training.conftest import make_video_dataset, tune_clip_as_test
from vigil.config import parse_params
from vigil.data.prepared import PreparedDataset
from vigil.detector import Detector
from vigil.evaluation.evaluate import evaluate
from vigil.evaluation.splits import score_split
from vigil.models.future_frame.network import FutureFramePredictor
from vigil.models.spec import load_trained
from vigil.sweep.objective import raw_detector, tune_errors
from vigil.training import fit

TINY = {"context": 2, "depth": 2, "filters": 4, "bottleneck_channels": 4}


def future_frame_params(**model):
    """Tiny params: clip_len 4 > context 2, one epoch on CPU."""
    return parse_params({
        "data": {"datasets": {"tinyvid": {"source": "tests/tinyvid", "modality": "video"}}},
        "prepare": {"video": {"size": [32, 32], "channels": 1, "clip_len": 4}},
        "model": {"video_family": "future_frame", "future_frame": {**TINY, **model}},
        "train": {"max_epochs": 1, "batch_size": 4, "accelerator": "cpu",
                  "log_images_every_n_epochs": 1},
        "evaluate": {"smoothing_window": 1},
    })


@pytest.fixture()
def trained(mlflow_store, tmp_path):
    data_dir = make_video_dataset(tmp_path / "data" / "prepared" / "tinyvid")
    tune_clip_as_test(data_dir)
    params = future_frame_params()
    model_dir = tmp_path / "models" / "tinyvid"
    result = fit(params, data_dir, model_dir, log_model_images=False)
    return params, data_dir, model_dir, result


def test_fit_sets_fusion_scales_and_evaluate_reports_the_video_metrics(trained, tmp_path):
    params, data_dir, model_dir, result = trained
    assert result.spec["family"] == "future_frame" and result.epochs >= 1
    model, spec = load_trained(model_dir)
    assert isinstance(model, FutureFramePredictor) and model.context == 2
    # finish ran before saving: the scales are the normal val errors, not the initial 1.0
    assert 0 < float(model.pred_scale) < 1 and 0 < float(model.app_scale) < 1

    evaluated = evaluate(params, "tinyvid", data_dir, model_dir, tmp_path / "reports",
                         log_mlflow=False)
    m = evaluated.metrics
    for key in ("frame_auroc", "frame_auroc_raw", "frame_auroc_clip_normalized",
                "frame_auroc_mean_per_clip", "recall_at_precision", "event_recall",
                "event_precision"):
        assert np.isfinite(m[key]), key
    assert m["n_clips_with_both_classes"] == 1
    # one test clip: the per-clip min-max normalization changes no order
    assert m["frame_auroc_clip_normalized"] == pytest.approx(m["frame_auroc"])
    assert m["frame_auroc_mean_per_clip"] == pytest.approx(m["frame_auroc"])

    data = PreparedDataset.load(data_dir)
    detector = Detector.load(evaluated.detector_dir)
    assert detector.record.family == "future_frame"
    test = score_split(detector, data, "test")
    assert not test.scored[:2].any() and test.scored[2:].all()  # k=2 frames of context first
    assert float(detector.network.pred_scale) == pytest.approx(float(model.pred_scale))


def test_balanced_video_objective_weighs_normal_and_anomalous_means_equally(trained):
    _, data_dir, model_dir, _ = trained
    data = PreparedDataset.load(data_dir)
    model, _ = load_trained(model_dir)
    errors = tune_errors(model, data, "future_frame", max_normal_error=1e9)
    # recompute from the raw per-frame map means on tune + val clips, stepped as a stream
    label_of = {it.index: it.label for it in data.items}
    clips = [rows for split in ("tune", "val") for rows in data.videos(split)]
    parts = raw_detector(model, data, "future_frame").score_clips(
        [np.asarray(data.frames[r]) for r in clips]
    )
    err = np.concatenate([p.raw[p.valid] for p in parts])
    lab = np.concatenate([np.array([label_of[int(r)] for r in rows])[p.valid]
                          for rows, p in zip(clips, parts, strict=True)])
    normal, anomaly = err[lab == 0].mean(), err[lab == 1].mean()
    # the feasibility guard reads the prediction error of normal frames in input units, not the
    # fused map (whose normal mean is ~2 by construction)
    assert 0 < errors.normal_error < normal
    assert errors.anomaly_error == pytest.approx(anomaly, rel=1e-5)
    assert errors.total_error == pytest.approx(0.5 * (normal + anomaly), rel=1e-5)
    assert errors.ratio == pytest.approx(anomaly / errors.total_error, rel=1e-5)
    assert (lab == 0).sum() > 3 * (lab == 1).sum()  # a pooled mean would be mostly normal frames
    assert errors.feasible and errors.objective == errors.ratio
