"""What a retrain cycle leaves behind: the register stage's decision read back, the cycle record
(``reports/retrain/<cycle_id>.json``, mode 0600, credentials redacted) and its MLflow run, and a
plain-text summary."""

from __future__ import annotations

import json
import time
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from vigil.atomic import atomic_write
from vigil.redact import redact, redact_obj
from vigil.scheduling import RetrainConfig
from vigil import names

RECORD_MODE = 0o600  # records quote errors, which may name hosts and paths: owner only


def _decision_fields() -> tuple[set[str], list[str]]:
    """(all, required) field names of the register stage's ``Decision`` (its decision.json)."""
    from vigil.registry.promotion import Decision

    every = fields(Decision)
    required = [f.name for f in every if f.default is MISSING and f.default_factory is MISSING]
    return {f.name for f in every}, required


def read_decision(path: Path) -> dict[str, Any]:
    """The register stage's decision file (``vigil.registry.promotion.write_decision``) as the
    record's fields: ``verdict`` ("pass" | "fail", from the gate's ``passed``), ``promoted``,
    ``candidate_version``, ``champion_before``, ``champion_after``, ``reasons``, ``forced``, and
    the whole file under ``decision``. Raises ValueError naming the file and the field when the
    file is not such a decision (another format, a missing field, a non-boolean verdict)."""
    from vigil.registry.promotion import Decision

    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object (a register decision), got {raw!r:.80}")
    known, required = _decision_fields()
    missing = [name for name in required if name not in raw]
    if missing:
        raise ValueError(
            f"{path}: not a register decision: missing field(s) {', '.join(missing)} "
            f"(found {', '.join(sorted(raw)) or 'none'}; see vigil.registry.promotion.Decision)"
        )
    decision = Decision(**{k: v for k, v in raw.items() if k in known})
    for name in ("passed", "promoted"):
        if not isinstance(getattr(decision, name), bool):
            raise ValueError(
                f"{path}: field {name!r} must be true or false, got {getattr(decision, name)!r}"
            )

    def version(value: Any) -> str | None:
        return str(value) if value is not None else None

    return {
        "verdict": "pass" if decision.passed else "fail",
        "promoted": decision.promoted,
        "candidate_version": version(decision.version),
        "champion_before": version(decision.champion_before),
        "champion_after": version(decision.champion_after),
        "reasons": list(decision.reasons),
        "forced": decision.forced,
        "decision": raw,
    }


def records_dir(root: Path, cfg: RetrainConfig) -> Path:
    return root / cfg.records


def write_record(root: Path, cfg: RetrainConfig, record: dict[str, Any]) -> Path:
    """Write the record atomically, readable by its owner only, credentials in URIs masked."""
    text = json.dumps(redact_obj(record), indent=1, default=str) + "\n"
    path = records_dir(root, cfg) / f"{record['cycle_id']}.json"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), mode=RECORD_MODE)


def log_record_to_mlflow(cfg: RetrainConfig, record: dict[str, Any]) -> str:
    """One MLflow run per cycle in ``cfg.mlflow_experiment``: params, metrics, tags, the JSON."""
    from mlflow.entities import Metric, Param, RunTag

    from vigil.tracking import connect, ensure_experiment

    client = connect()
    experiment_id = ensure_experiment(cfg.mlflow_experiment)
    run = client.create_run(experiment_id, run_name=f"cycle-{record['cycle_id']}")
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    params = [
        Param("trigger", ",".join(record["trigger"]) or "none"),
        Param("status", record["status"]),
    ]
    metrics = [
        Metric(f"duration_{k}_s", float(v), now, 0) for k, v in record["durations_s"].items()
    ]
    tags = [RunTag(names.STAGE, "retrain"), RunTag(names.CYCLE_ID, record["cycle_id"])]
    for d, entry in record["datasets"].items():
        metrics.append(Metric(f"{d}.ingested", float(entry.get("ingested", 0)), now, 0))
        metrics.append(Metric(f"{d}.quarantined", float(len(entry.get("quarantined", {}))), now, 0))
        for key in (
            "data_version_before",
            "data_version_after",
            "verdict",
            "promoted",
            "candidate_version",
            "champion_before",
            "champion_after",
        ):
            if entry.get(key) is not None:
                tags.append(RunTag(f"{d}.{key}", str(entry[key])))
    if record["error"]:
        tags.append(RunTag("error.step", record["error"]["step"]))
        tags.append(RunTag("error.message", redact(record["error"]["message"])[:4000]))
    client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
    client.log_dict(run_id, redact_obj(record), f"cycle-{record['cycle_id']}.json")
    client.set_terminated(run_id, "FAILED" if record["status"] == "failed" else "FINISHED")
    return run_id


def summarize(record: dict[str, Any]) -> str:
    """A few plain lines: what triggered, what came in, what the gate said."""
    trigger = ", ".join(record["trigger"]) or "none"
    lines = [f"retrain cycle {record['cycle_id']}: {record['status']} (trigger: {trigger})"]
    for d, e in record["datasets"].items():
        lines.append(
            f"  {d}: +{e.get('ingested', 0)} item(s), {len(e.get('quarantined', {}))} quarantined, "
            f"data {e.get('data_version_before')} -> {e.get('data_version_after')}"
            + (
                f", candidate v{e['candidate_version']} {e.get('verdict')}"
                + (" (promoted)" if e.get("promoted") else "")
                if e.get("candidate_version")
                else ""
            )
            + (
                f", champion {e.get('champion_before')} -> {e.get('champion_after')}"
                if "champion_after" in e
                else ""
            )
        )
    if record["error"]:
        lines.append(f"  error at {record['error']['step']}: {redact(record['error']['message'])}")
    return "\n".join(lines)
