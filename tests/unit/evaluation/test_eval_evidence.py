"""evaluate on a normal-only dataset: threshold on normal items, no label metrics (never NaN),
``evidence`` and ``synthetic_*`` metrics in metrics.json; the real stage on a tiny model."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch
import yaml

from vigil.config import ImagePrep, Params
from vigil.data.prepared import PreparedDataset, write_prepared
from vigil.evaluation.evaluate import evaluate, summary_lines
from vigil.evaluation.evidence import evidence_of, synthetic_metrics
from vigil.evaluation.splits import score_split
from vigil.models.conv_ae.config import ConvAEConfig
from vigil.models.spec import build_model, model_spec, save_trained
from vigil.sweep.objective import raw_detector

REPO = Path(__file__).resolve().parents[3]
SIZE = 16


def normal_only(root: Path, n_test: int = 0) -> Path:
    """6 train, 4 val and ``n_test`` normal test images; no anomaly anywhere."""
    rng = np.random.default_rng(0)
    layout = ["train"] * 6 + ["val"] * 4 + ["test"] * n_test
    frames = rng.integers(40, 80, (len(layout), SIZE, SIZE, 3)).astype(np.uint8)
    items = [
        {"index": i, "origin": f"{s}/good/{i}.png", "split": s, "label": 0, "defect": "good",
         "has_mask": False, "sha256": f"{i:064d}"}
        for i, s in enumerate(layout)
    ]
    manifest = {
        "dataset": "line", "modality": "image", "source": "tests",
        "content_hash": hashlib.sha256(frames.tobytes()).hexdigest(),
        "params": {"prep": ImagePrep(size=(SIZE, SIZE)).model_dump(mode="json"),
                   "split": {"seed": 0}},
        "labelled_anomalies": 0, "items": items,
    }
    return write_prepared(root, frames, np.zeros(frames.shape[:3], np.uint8), manifest)


def _model_dir(root: Path, data: PreparedDataset) -> Path:
    torch.manual_seed(0)
    cfg = ConvAEConfig(depth=2, filters=4, latent_channels=2)
    spec = model_spec("conv_ae", data.channels, data.size, cfg, prep=data.prep)
    save_trained(root, build_model(spec), spec)
    return root


def _params() -> Params:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["datasets"] = {"line": {"source": "unused", "modality": "image"}}
    raw["prepare"]["image"]["size"] = [SIZE, SIZE]
    return Params.model_validate(raw)


def test_evidence_of_a_normal_only_dataset_is_synthetic(tmp_path):
    data = PreparedDataset.load(normal_only(tmp_path / "d", n_test=2))
    torch.manual_seed(0)
    spec = model_spec("conv_ae", 3, (SIZE, SIZE), ConvAEConfig(depth=2, filters=4,
                                                                latent_channels=2), prep=data.prep)
    detector = raw_detector(build_model(spec).eval(), data, "conv_ae")
    assert evidence_of(data, score_split(detector, data, "test")) == "synthetic"
    found = synthetic_metrics(detector, data, threshold=0.5, precision=0.9)
    assert found["synthetic_n"] == 8 and found["synthetic_n_anomalous"] == 4
    assert 0.0 <= found["synthetic_image_auroc"] <= 1.0
    assert all(k.startswith("synthetic_") for k in found)


def test_evaluate_normal_only_writes_evidence_and_no_label_metrics(tmp_path):
    data = PreparedDataset.load(normal_only(tmp_path / "d", n_test=3))
    model_dir = _model_dir(tmp_path / "m", data)
    params = _params()
    result = evaluate(params, "line", data.root, model_dir, tmp_path / "r", log_mlflow=False)
    written = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert written["evidence"] == "synthetic"
    for absent in ("image_auroc", "precision_at_threshold", "recall_at_threshold",
                   "recall_at_precision", "pixel_auroc"):
        assert absent not in written
    assert all(not isinstance(v, float) or math.isfinite(v) for v in written.values())
    assert "synthetic_image_auroc" in written and "false_alarm_rate" in written
    # calibrated on normal items to the gate's false-alarm bar
    assert result.calibration.method == "false_alarm_rate" and result.calibration.gate_can_pass
    assert result.calibration.n_normal_used == 4  # the val images (tune is empty)
    record = json.loads((model_dir / "detector" / "detector.json").read_text())
    assert record["threshold"] == written["threshold"]
    pr = (tmp_path / "r" / "plots" / "pr.csv").read_text().splitlines()
    assert pr == ["recall,precision,threshold"]  # declared outputs exist, empty curves
    report = (tmp_path / "r" / "evaluation" / "report.html").read_text()
    assert "no labelled anomalies in the test split" in report
    lines = summary_lines("line", result)
    assert "evidence: synthetic" in lines[0] and "synthetic anomalies in val" in lines[2]
