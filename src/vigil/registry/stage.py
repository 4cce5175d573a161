"""The register stage's library: package the evaluated model, register it, gate it, record it.

``register_stage`` reads the train and evaluate stages' outputs, logs the MLflow pyfunc package
into the training run, registers it as a new version of ``<prefix>-<dataset>-<modality>`` (tags:
gate verdict and criteria, metrics, gate settings, promotion policy, git commit, data hash,
test-split hash, package checksum), sets ``challenger``, records ``reports/<D>/decision.json``
and moves ``champion`` only on a gate pass in a run the promotion policy allows
(``register.promote``, ``vigil.registry.policy``). Registry failures raise ``PromotionError`` or
``TrackingError`` (champion unchanged); bad inputs raise ``FileNotFoundError``/``ValueError``/
``TypeError``/``ConfigError``/``PackageError``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vigil.registry.decision import Decision
from vigil import names

DECISION_FILE = "decision.json"


def read_json(path: Path, what: str) -> dict:
    """A JSON object from ``path``; errors name the file and ``what`` writes it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing ({what})")
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise TypeError(f"{path}: expected a JSON object")
    return value


def example_images(data_dir: Path) -> list[bytes] | None:
    """One prepared test frame as PNG (the package's input example), or None without data."""
    from vigil.data.prepared import PreparedDataError, PreparedDataset
    from vigil.registry.package import frames_to_png

    try:
        data = PreparedDataset.load(data_dir)
    except PreparedDataError:
        return None
    rows = data.indices("test")
    return frames_to_png(data.frames[rows[:1]]) if len(rows) else None


def lineage(run_id: str, dataset: str, modality: str, data_dir: Path) -> dict[str, str | None]:
    """git commit and data hash from the training run's tags (fallback: git, the manifest)."""
    import mlflow

    tags = mlflow.MlflowClient().get_run(run_id).data.tags
    commit, data_hash = tags.get(names.GIT_COMMIT), tags.get(names.DATA_HASH)
    if not commit:
        from vigil.training.tracking import git_commit

        commit = git_commit()
    if not data_hash and (data_dir / "manifest.json").is_file():
        data_hash = json.loads((data_dir / "manifest.json").read_text()).get("content_hash")
    return {"git_commit": commit, "data_hash": data_hash, "dataset": dataset, "modality": modality}


def register_stage(
    params_path: Path | str,
    dataset: str,
    model_dir: Path | None = None,
    reports: Path | None = None,
    data_dir: Path | None = None,
    *,
    root: Path | None = None,
) -> Decision:
    """The whole stage for ``dataset`` (see the module docstring); returns the decision.

    ``root``: the project folder whose git state the promotion policy reads (default: cwd)."""
    from vigil.config import load_params
    from vigil.registry.gate import SETTINGS_KEY, gate_settings, settings_hash
    from vigil.registry.package import log_package, read_detector_record
    from vigil.registry.policy import promotion_policy
    from vigil.registry.promotion import model_name, register_candidate, registry_errors
    from vigil.tracking import connect

    params = load_params(params_path)
    spec = params.dataset(dataset)
    model_dir = model_dir or Path("models") / dataset
    reports = reports or Path("reports") / dataset
    data_dir = data_dir or Path("data/prepared") / dataset
    run_id = read_json(model_dir / "train.json", "written by the train stage").get("run_id")
    if not run_id:
        raise ValueError(f"{model_dir / 'train.json'}: no run_id")
    metrics = read_json(reports / "metrics.json", "written by the evaluate stage")
    detector_dir = model_dir / "detector"
    record = read_detector_record(detector_dir)  # written by the evaluate stage
    decision_path = reports / DECISION_FILE
    decision_path.unlink(missing_ok=True)  # never leave the previous run's verdict standing
    policy = promotion_policy(params.register.promote, root)
    method = record.calibration.get("method")
    evidence = metrics.get("evidence") or "labelled"  # vigil.registry.evidence
    settings = {
        **params.gate.model_dump(mode="json"), "threshold_method": method, "evidence": evidence
    }
    client = connect()
    examples = example_images(data_dir)
    with registry_errors(f"logging the model package to training run {run_id}"):
        package = log_package(detector_dir, example_images=examples, run_id=run_id)
        origin = lineage(run_id, dataset, spec.modality, data_dir)
    origin["test_split_hash"] = metrics.get("test_split_hash") or record.test_split_hash
    origin["evidence"] = evidence  # the version's vigil.evidence tag
    candidate = {
        **metrics, SETTINGS_KEY: settings_hash(gate_settings(params.gate, method, evidence))
    }
    name = model_name(params.register.model_name_prefix, dataset, spec.modality)
    decision = register_candidate(
        client, name, package, candidate, params.gate, origin,
        policy=policy, decision_path=decision_path, settings=settings,
    )
    publish_registered_report(client, run_id, reports, decision)
    return decision


def publish_registered_report(
    client: Any, run_id: str, reports: Path, decision: Decision
) -> Path | None:
    """Log the evaluation report with the registration verdict added to the training run, in
    place of the evaluate stage's copy (the run's ``vigil.report`` artifact). Best effort: the
    registration is complete before this; a failure only leaves the evaluate-time report there.
    Returns the local report read, or None when there is none."""
    from vigil.evaluation.report import with_registration

    path = reports / "evaluation" / "report.html"
    if not path.is_file():
        return None
    try:
        artifact = client.get_run(run_id).data.tags.get(names.REPORT) or "evaluation/report.html"
        client.log_text(run_id, with_registration(path.read_text(), decision), artifact)
    except Exception as error:  # noqa: BLE001 - the verdict is already recorded
        print(f"  (the report in the MLflow run was not updated: {type(error).__name__}: {error})")
    return path
