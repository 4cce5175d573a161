"""The evaluate stage on tiny generated data with tiny models trained by the real train stage.

generate (library) -> prepare (library) -> pipelines/train.py main() (fit + MLflow run +
train.json) -> pipelines/evaluate.py: metrics.json, plot CSVs, report, the calibrated detector
(models/<dataset>/detector/: detector.json + weights.safetensors), and the
``test_*`` metrics and report on the training run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import load_pipeline

PARAMS = {
    "data": {"datasets": {
        "caps": {"source": "raw/capsules", "modality": "image"},
        "melt": {"source": "raw/print", "modality": "video",
                 "labels_csv": "raw/print/testing/frame_labels.csv"},
    }},
    "generate": {
        "seed": 0,
        "capsules": {"image_size": 64, "n_train": 40, "n_test_good": 16, "n_test_per_defect": 6},
        "print": {"frame_size": 48, "fps": 30, "n_train_videos": 2, "n_test_videos": 2,
                  "frames_per_video": 60, "anomalies_per_test_video": 2},
    },
    "prepare": {"image": {"size": [32, 32], "channels": 3},
                "video": {"size": [32, 32], "channels": 1, "fps": 15, "clip_len": 4}},
    "model": {"image_family": "conv_ae",
              "conv_ae": {"depth": 2, "filters": 8, "latent_channels": 4},
              "convlstm": {"encoder_depth": 2, "filters": 8, "hidden_channels": 8}},
    "train": {"max_epochs": 1, "batch_size": 8, "lr": 0.003, "accelerator": "cpu",
              "log_images_every_n_epochs": 50},
    "evaluate": {"n_report_examples": 3},
}


@pytest.fixture(scope="module")
def project(_mlflow_template, tmp_path_factory):
    """A tiny project: params, raw + prepared data, a tracking store; ``train(name)`` runs the
    real train stage once per dataset (video only for the slow test)."""
    from vigil.config import load_params
    from vigil.data.prepare import prepare_dataset
    from vigil.data.synthetic import generate_all

    root = tmp_path_factory.mktemp("evalproj")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    db = root / "mlflow.db"
    shutil.copy(_mlflow_template, db)
    trained: set[str] = set()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        mp.chdir(root)
        params = load_params(root / "params.yaml")
        generate_all(root / "raw", params.generate)
        for name in ("caps", "melt"):
            prepare_dataset(name, params.dataset(name), params.prepare,
                            root / "data/prepared" / name, base_dir=root, progress=False)

    def train(name: str) -> Path:
        if name not in trained:
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
                mp.chdir(root)
                assert load_pipeline("train").main(["--dataset", name]) == 0
            trained.add(name)
        return root

    yield train


@pytest.fixture()
def in_project(project, monkeypatch):
    """The project root as working dir, its store as MLFLOW_TRACKING_URI, ``caps`` trained."""
    root = project("caps").resolve()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.chdir(root)
    return root


def training_run(project: Path, name: str):
    from vigil.tracking import connect

    run_id = json.loads((project / "models" / name / "train.json").read_text())["run_id"]
    client = connect()
    return client, client.get_run(run_id)


def test_evaluate_cli_writes_metrics_plots_report_threshold_and_logs_to_the_run(
    in_project, capsys
):
    assert load_pipeline("evaluate").main(["--dataset", "caps"]) == 0
    stdout = capsys.readouterr().out
    assert "evaluate caps: image AUROC" in stdout and "report:" in stdout

    out = in_project / "reports/caps"
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("image_auroc", "average_precision", "recall_at_precision", "threshold",
                "precision_at_threshold", "recall_at_threshold", "false_alarm_rate",
                "escape_rate", "pixel_auroc", "aupro", "gate_can_pass"):
        assert isinstance(metrics[key], (int, float)), key
    assert 0.0 <= metrics["image_auroc"] <= 1.0 and 0.0 <= metrics["aupro"] <= 1.0
    assert metrics["escape_rate"] == pytest.approx(1 - metrics["recall_at_threshold"])

    pr = np.genfromtxt(out / "plots/pr.csv", delimiter=",", names=True)
    assert {"recall", "precision"} <= set(pr.dtype.names) and len(pr) > 2
    assert (out / "plots/roc.csv").is_file() and (out / "plots/scores.csv").is_file()
    html = (out / "evaluation/report.html").read_text()
    pngs = {p.name for p in (out / "evaluation").glob("*.png")}
    assert {"pr_curve.png", "roc_curve.png", "score_hist.png"} <= pngs  # + false alarms/escapes
    assert html.count("data:image/png;base64,") == len(pngs) and "Per defect type" in html

    from vigil.detector import Detector
    from vigil.registry.package import read_detector_record

    folder = in_project / "models/caps/detector"
    assert sorted(p.name for p in folder.iterdir()) == ["detector.json", "weights.safetensors"]
    assert not (in_project / "models/caps/threshold.json").exists()
    record = json.loads((folder / "detector.json").read_text())
    assert record["threshold"] == pytest.approx(metrics["threshold"])
    assert record["calibration"]["split"] == "tune" and record["dataset"] == "caps"
    assert record["pixel_threshold"] > 0 and record["postprocess"]["median_blur"] == 3
    assert record["spec"]["family"] == "conv_ae" and record["spec"]["prep"]["size"] == [32, 32]
    # the test split the metrics were measured on travels with them (the gate's comparison key)
    assert len(metrics["test_split_hash"]) == 64
    assert record["test_split_hash"] == metrics["test_split_hash"]
    assert read_detector_record(folder).threshold == record["threshold"]
    # the saved detector scores the test split as the stage did (the scores behind the metrics)
    from vigil.data.prepared import PreparedDataset

    data = PreparedDataset.load(in_project / "data/prepared/caps")
    rows = data.indices("test")
    scores = Detector.load(folder).score_prepared(np.asarray(data.frames[rows])).scores
    table = np.genfromtxt(out / "plots/scores.csv", delimiter=",", names=True, dtype=None,
                          encoding="utf-8")
    assert len(table) == len(rows)
    np.testing.assert_allclose(np.sort(table["score"]), np.sort(scores), rtol=1e-5)

    client, run = training_run(in_project, "caps")
    assert run.data.metrics["test_image_auroc"] == pytest.approx(metrics["image_auroc"])
    assert run.data.tags["vigil.report"] == "evaluation/report.html"
    assert run.data.tags["vigil.test_split_hash"] == metrics["test_split_hash"]
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/report.html", "evaluation/detector.json",
            "evaluation/pr_curve.png"} <= logged


def test_evaluate_video_scores_clips_with_events_and_a_timeline(in_project, project):
    project("melt")
    evaluate = load_pipeline("evaluate")
    assert evaluate.main(["--dataset", "melt"]) == 0
    out = in_project / "reports/melt"
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"frame_auroc", "frame_auroc_raw", "event_recall", "event_precision"} <= set(metrics)
    assert "image_auroc" not in metrics
    timeline = np.genfromtxt(out / "plots/timeline.csv", delimiter=",", names=True,
                             dtype=None, encoding="utf-8")
    assert np.isnan(timeline["score"][timeline["frame"] == 0]).all()  # first frames: no score
    assert (out / "evaluation/timeline.png").is_file()
    # smoothing_window and alert_frames: auto -> candidates chosen on tune, shipped in the
    # detector (`vigil watch` alerts with the run length the event metrics counted)
    from vigil.config import ALERT_FRAMES, SMOOTHING_WINDOWS
    from vigil.detector import Detector

    record = Detector.load(in_project / "models/melt/detector").record
    assert metrics["smoothing_window"] in SMOOTHING_WINDOWS
    assert record.postprocess.smoothing_window == metrics["smoothing_window"]
    assert metrics["alert_frames"] in ALERT_FRAMES
    assert record.postprocess.alert_frames == metrics["alert_frames"]
    # frame_map and score: auto -> one pair chosen on tune, shipped, every pair in the report
    from vigil.config import SCORES
    from vigil.models.future_frame.config import FRAME_MAPS

    assert record.spec["model"]["frame_map"] in FRAME_MAPS
    assert record.postprocess.score in SCORES
    report = (out / "evaluation/report.html").read_text()
    assert "map and score chosen on tune (AUROC of each: fused / topk_mean" in report
    assert f"an alert (and an event in the metrics) is {metrics['alert_frames']} frame" in report
    _, run = training_run(in_project, "melt")
    assert run.data.metrics["test_frame_auroc"] == pytest.approx(metrics["frame_auroc"])


def test_a_test_split_without_anomalies_is_evaluated_on_synthetic_evidence(in_project, capsys):
    """Relabel every test item normal: no label metric is invented; the stage says what the
    numbers rest on (synthetic anomalies in val) and what the gate will miss."""
    src = in_project / "data/prepared/caps"
    bad = in_project / "data/prepared/caps_one_class"
    shutil.copytree(src, bad, dirs_exist_ok=True)
    manifest = json.loads((bad / "manifest.json").read_text())
    for item in manifest["items"]:
        if item["split"] == "test":
            item["label"], item["defect"] = 0, "good"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    evaluate = load_pipeline("evaluate")
    code = evaluate.main(["--dataset", "caps", "--data-dir", str(bad), "--out",
                          str(in_project / "reports/bad"), "--no-mlflow"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((in_project / "reports/bad/metrics.json").read_text())
    assert metrics["evidence"] == "synthetic"
    assert "image_auroc" not in metrics and "synthetic_image_auroc" in metrics
    assert "false_alarm_rate" in metrics  # measured on the normal test items


def test_tune_split_without_anomalies_falls_back_and_the_gate_cannot_pass(in_project):
    from vigil.config import load_params
    from vigil.evaluation.evaluate import evaluate

    src = in_project / "data/prepared/caps"
    noanom = in_project / "data/prepared/caps_no_tune_anomalies"
    shutil.copytree(src, noanom, dirs_exist_ok=True)
    manifest = json.loads((noanom / "manifest.json").read_text())
    for item in manifest["items"]:
        if item["split"] == "tune" and item["label"] == 1:
            item["split"] = "test"
    (noanom / "manifest.json").write_text(json.dumps(manifest))
    model_dir = in_project / "models/caps_copy"
    shutil.copytree(in_project / "models/caps", model_dir, dirs_exist_ok=True)
    params = load_params("params.yaml")
    params = params.model_copy(
        update={"evaluate": params.evaluate.model_copy(update={"threshold_method": "precision"})}
    )
    result = evaluate(params, "caps", noanom, model_dir,
                      in_project / "reports/fallback", log_mlflow=False)
    assert result.calibration.method == "normal_quantile"
    assert result.metrics["gate_can_pass"] == 0
    assert "cannot pass" in result.calibration.note


def test_a_model_that_outputs_nan_is_a_clear_error(in_project):
    import torch

    from vigil.config import load_params
    from vigil.evaluation.evaluate import evaluate
    from vigil.evaluation.metrics import MetricsInputError
    from vigil.models.spec import load_trained, save_trained

    model, spec = load_trained(in_project / "models/caps")
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    broken = in_project / "models/caps_nan"
    save_trained(broken, model, spec)
    with pytest.raises(MetricsInputError, match=r"tune split: \d+ of \d+ scores are NaN"):
        evaluate(load_params("params.yaml"), "caps", in_project / "data/prepared/caps", broken,
                 in_project / "reports/nan", log_mlflow=False)
    assert not (broken / "detector").exists()  # nothing half-written
