"""A normal-only dataset (``train/good`` and nothing else, a real line's usual start) runs through
the real ``dvc repro`` to a decision whose reasons say which evidence was used: the sweep and
evaluate measure on synthetic anomalies pasted into val, and the gate refuses to promote on them
until ``gate.allow_synthetic_evidence`` is set (then it judges them, and says so)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.integration.test_integration_pipeline import VENV_BIN, _run, _write_params, project

__all__ = ["project"]  # the fixture, shared with the full-pipeline test

TINY = {
    "data": {"datasets": {"line": {"source": "data/line", "modality": "image"}}},
    "prepare": {"image.size": [32, 32]},
    "sweep": {"n_trials": 1, "epochs_per_trial": 1},
    "train": {"max_epochs": 2},
}


def _normal_only_source(root: Path) -> None:
    """The built-in capsules' ``train/good``, alone, as ``data/line`` (MVTec layout)."""
    from vigil.config import CapsulesGen
    from vigil.data.synthetic.capsules import generate_capsules

    full = root.parent / "capsules"
    generate_capsules(full, CapsulesGen(image_size=32, n_train=30, n_test_good=1,
                                        n_test_per_defect=1), seed=0)
    shutil.copytree(full / "train" / "good", root / "data" / "line" / "train" / "good")


def _read(root: Path, *parts: str) -> dict | list:
    return json.loads(root.joinpath(*parts).read_text())


@pytest.mark.slow  # ~9 min wall on the shared 2-core machine (about 2 min of CPU)
def test_normal_only_dataset_runs_to_a_decision_naming_its_evidence(project):
    root, env = project
    dvc = str(VENV_BIN / "dvc")
    _normal_only_source(root)
    _write_params(root / "params.yaml", **TINY)
    _run([dvc, "repro", "register@line"], root, env)

    manifest = _read(root, "data", "prepared", "line", "manifest.json")
    assert manifest["labelled_anomalies"] == 0
    assert manifest["counts"]["tune"]["items"] == manifest["counts"]["test"]["items"] == 0
    sweep_rows = _read(root, "reports", "line", "sweep.json")
    assert sweep_rows and {r["evidence"] for r in sweep_rows} == {"synthetic"}
    metrics = _read(root, "reports", "line", "metrics.json")
    assert metrics["evidence"] == "synthetic" and "synthetic_image_auroc" in metrics
    assert "image_auroc" not in metrics and "recall_at_threshold" not in metrics

    decision = _read(root, "reports", "line", "decision.json")
    assert not decision["passed"] and not decision["promoted"], decision
    assert decision["gate"]["evidence"] == "synthetic"
    assert decision["reasons"][0].startswith("evidence: synthetic only, not accepted")
    assert "add test/<defect>/ images with ground_truth masks" in decision["reasons"][0]
    assert "gate.allow_synthetic_evidence: true" in decision["reasons"][0]

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["gate"]["allow_synthetic_evidence"] = True
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run([dvc, "repro", "register@line"], root, env)
    assert "Running stage 'train@line'" not in out  # only evaluate/register read gate
    judged = _read(root, "reports", "line", "decision.json")
    assert judged["gate"]["evidence"] == "synthetic"
    assert judged["reasons"][0].startswith("evidence: synthetic anomalies pasted into the val")
    assert any("on synthetic anomalies in val" in r for r in judged["reasons"]), judged
