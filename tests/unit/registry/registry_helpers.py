"""Tiny real inputs for registry tests: a calibrated detector folder, a logged package, the files
the register stage reads, and a git checkout for the promotion policy."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import mlflow
import torch

from vigil.config import EvaluateConfig, ImagePrep

PREP = ImagePrep(size=(32, 32), channels=1)
POST = EvaluateConfig(median_blur=3)
NAME = "vigil-tiny-image"
LINEAGE = {"git_commit": "abc123", "data_hash": "d1", "dataset": "tiny", "modality": "image"}
GOOD = {
    "precision_at_threshold": 0.95,
    "recall_at_threshold": 0.9,
    "recall_at_precision": 0.9,
    "image_auroc": 0.99,
    "false_alarm_rate": 0.0,
    "target_precision": 0.9,
    "threshold": 0.1,
}
WEAK = {**GOOD, "recall_at_threshold": 0.3, "recall_at_precision": 0.3, "image_auroc": 0.7}
BETTER = {**GOOD, "recall_at_threshold": 1.0, "recall_at_precision": 1.0, "image_auroc": 1.0}


def detector_dir(model_dir: Path, seed: int, threshold: float = 0.1) -> Path:
    """A tiny untrained conv-AE written as the train stage does, calibrated as evaluate does;
    returns ``model_dir/detector``."""
    from vigil.detector import Detector
    from vigil.models.conv_ae.config import ConvAEConfig
    from vigil.models.spec import build_model, model_spec, save_trained

    spec = model_spec(
        "conv_ae", 1, PREP.size, ConvAEConfig(depth=1, filters=2, latent_channels=2), prep=PREP
    )
    torch.manual_seed(seed)
    save_trained(model_dir, build_model(spec), spec)
    detector = Detector.from_trained(model_dir, POST, dataset="tiny").calibrated(
        threshold=threshold, pixel_threshold=0.01, calibration={"method": "precision"},
        test_split_hash="t1",
    )
    return detector.save(model_dir / "detector")


def logged_package(root: Path, seed: int):
    """A package of a fresh tiny detector logged into a new run."""
    from vigil.registry import package as pkg

    folder = detector_dir(root / f"model-{seed}", seed)
    with mlflow.start_run() as run:
        return pkg.log_package(folder, run_id=run.info.run_id)


def champion(client, name: str = NAME) -> str | None:
    from vigil.registry import promotion as pro

    found = pro.alias_version(client, name, pro.CHAMPION)
    return None if found is None else str(found.version)


def write_stage_inputs(
    root: Path, seed: int, metrics: dict, data_hash: str = "h1", promote: str = "auto"
) -> str:
    """params.yaml, a calibrated tiny detector, train.json and metrics.json under ``root``, as
    the earlier stages write them; returns the training run id."""
    (root / "params.yaml").write_text(
        "data:\n  datasets:\n    tiny:\n      source: data/raw/tiny\n      modality: image\n"
        f"register:\n  model_name_prefix: vigil\n  promote: {promote}\n"
    )
    model_dir = root / "models" / "tiny"
    detector_dir(model_dir, seed)
    with mlflow.start_run(
        tags={"vigil.git_commit": "c0ffee", "vigil.data_hash": data_hash}
    ) as run:
        pass
    (model_dir / "train.json").write_text(json.dumps({"run_id": run.info.run_id}))
    (root / "reports" / "tiny").mkdir(parents=True, exist_ok=True)
    (root / "reports" / "tiny" / "metrics.json").write_text(json.dumps(metrics))
    return run.info.run_id


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=root, check=True, capture_output=True, text=True,
    ).stdout


def commit_all(root: Path, message: str = "state") -> None:
    """A git checkout of ``root`` whose pipeline inputs are all committed (a clean commit).
    Stage outputs and stores are ignored, as in the real project."""
    if not (root / ".git").is_dir():
        git(root, "init", "-q")
        (root / ".gitignore").write_text("mlflow.db\nmlruns/\nmlartifacts/\n")
    git(root, "add", "-A")
    git(root, "commit", "-qm", message, "--allow-empty")
