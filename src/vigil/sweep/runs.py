"""The sweep's MLflow parent run: one per study (its id is a study user attribute, so every
worker and every later invocation nests its trial runs under it); ``report_parent`` records the
chosen trial, the pruning summary and the figure on it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna

from vigil.config import Params
from vigil.data.prepared import PreparedDataset
from vigil.tracking import connect, ensure_experiment, flatten

log = logging.getLogger(__name__)

PARENT_ATTR = "mlflow_parent_run_id"


def parent_run(study: optuna.Study, data: PreparedDataset, params: Params) -> str:
    """The id of the study's parent run; created (with the sweep params) on first use."""
    client = connect()
    existing = study.user_attrs.get(PARENT_ATTR)
    if existing:
        try:
            client.get_run(existing)
            return existing
        except Exception:  # noqa: BLE001 - the study outlived its tracking store: start anew
            log.warning(
                "parent run %s of study %s is not in %s; creating a new one",
                existing,
                study.study_name,
                client.tracking_uri,
            )
    experiment_id = ensure_experiment(f"vigil-{data.name}")
    run = client.create_run(
        experiment_id,
        run_name=f"sweep-{study.study_name}",
        tags={
            "vigil.stage": "sweep",
            "vigil.dataset": data.name,
            "vigil.modality": data.modality,
            "vigil.study": study.study_name,
            "vigil.data_hash": str(data.content_hash),
        },
    )
    # n_trials is not a param of the study (the sweep chooses among its first n_trials; a later
    # sweep may ask for more): report_parent tags the value of each sweep instead
    flat = flatten({"sweep": params.sweep.model_dump(mode="json", exclude={"n_trials"})})
    for key, value in flat.items():
        client.log_param(run.info.run_id, key, str(value))
    study.set_user_attr(PARENT_ATTR, run.info.run_id)
    return run.info.run_id


def report_parent(
    parent: str,
    best: optuna.trial.FrozenTrial,
    feasible: bool,
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    png: Path,
    plot_json: Path,
) -> None:
    """Tag the chosen trial on its run and the parent, log its errors and the pruning summary
    on the parent with the figure and its data, and mark the parent finished."""
    client = connect()
    client.set_tag(parent, "vigil.n_trials", str(summary.get("n_trials")))
    for row in rows:
        if row["run_id"]:
            client.set_tag(
                row["run_id"], "vigil.best_trial", str(row["trial"] == best.number).lower()
            )
    client.set_tag(parent, "vigil.best_trial", str(best.number))
    client.set_tag(parent, "vigil.best_run_id", str(best.user_attrs.get("run_id")))
    client.set_tag(parent, "vigil.best_feasible", str(feasible).lower())
    # labelled (tune anomalies) or synthetic (anomalies pasted into val): normal-only datasets
    client.set_tag(parent, "vigil.sweep_evidence", str(best.user_attrs.get("evidence", "labelled")))
    for key in ("ratio", "total_error", "anomaly_error", "normal_error", "encoding_size"):
        if best.user_attrs.get(key) is not None:
            client.log_metric(parent, f"best_{key}", float(best.user_attrs[key]))
    for key, value in summary.items():
        client.log_metric(parent, f"pruning_{key}", float(value))
    client.log_artifact(parent, str(png), "sweep")
    client.log_artifact(parent, str(plot_json), "sweep")
    client.set_terminated(parent, "FINISHED")

