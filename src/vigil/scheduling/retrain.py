"""`vigil retrain`: one retraining cycle.

1. ingest every inbox (validate, version new normal data with DVC, quarantine the rest);
2. decide per dataset whether to retrain. Triggers: ``new_data`` (the data version changed in
   this ingest, or differs from the version the last successful cycle trained on, so a cycle that
   failed is retried), ``model_age`` (the champion is older than ``max_model_age_days``),
   ``drift`` (see ``vigil.scheduling.drift``), ``force`` (``--force``);
3. run ``dvc repro`` for the triggered datasets, streaming its output; the pipeline's own gate
   (register stage) alone decides whether the champion moves;
4. read each dataset's decision file and the registry's champion after the run;
5. write a cycle record JSON atomically to ``<records>/<cycle_id>.json`` and log it to MLflow
   (experiment ``vigil-retrain``, one run per cycle).

With nothing to do (no trigger, nothing quarantined) it writes nothing and says so. A failure at
any step is caught, named in the record (``error.step``) and leaves data, DVC state and registry
as the failing tool left them, which each keeps consistent on its own: ingest rolls back, DVC
only records stages that finished, and the register stage moves the alias last.

``dvc repro`` runs in its own process group (``vigil.scheduling.repro``), recorded in the retrain
lock; a timeout ends the whole group. The record is written owner-only (0600) with credentials
in URIs masked (``vigil.redact``). Modules: ``repro`` (running the pipeline), ``records`` (the
decision read back, the record, its MLflow run, the summary); this one decides and runs a cycle.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


from vigil.config import Params, load_params
from vigil.scheduling import RetrainConfig
from vigil.scheduling.drift import check_drift
from vigil.scheduling.dvc_tools import sha256_file, utc_now
from vigil.scheduling.inbox import ingest_all
from vigil.scheduling.records import (
    log_record_to_mlflow,
    read_decision,
    records_dir,
    summarize,
    write_record,
)
from vigil.scheduling.repro import ReproError, repro_commands, run_in_group, run_repro
from vigil.scheduling.versions import (
    STATE_FILE,
    champions,
    data_version,
    ensure_baseline,
    load_state,
    model_name,
    save_state,
)

__all__ = [
    "STATE_FILE",
    "Cycle",
    "CycleError",
    "champions",
    "data_version",
    "ensure_baseline",
    "load_state",
    "model_name",
    "save_state",
    "log_record_to_mlflow",
    "read_decision",
    "records_dir",
    "repro_commands",
    "run_cycle",
    "run_in_group",
    "run_repro",
    "summarize",
    "write_record",
]

log = logging.getLogger(__name__)


class CycleError(RuntimeError):
    """A cycle step failed; ``step`` names it for the record."""

    def __init__(self, step: str, message: str, tail: str = "") -> None:
        super().__init__(message)
        self.step = step
        self.tail = tail


def _repro(
    root: Path, cfg: RetrainConfig, triggers: dict[str, list[str]], echo: Callable[[str], None]
) -> list[str]:
    try:
        return run_repro(root, cfg, triggers, echo)
    except ReproError as error:
        raise CycleError("repro", str(error), error.tail) from error


def _file_digest(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


# --- the cycle -------------------------------------------------------------------------------


def new_cycle_id() -> str:
    """Sortable by time to the millisecond, unique: ``20261123T013512.345Z-1a2b``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f")[:-3]
    return f"{stamp}Z-{secrets.token_hex(2)}"


def _triggers_for(
    cfg: RetrainConfig,
    before: str,
    after: str,
    last_trained: str,
    champion: dict | None,
    force: bool,
    drift: dict | None,
) -> list[str]:
    """Why ``dataset`` retrains this cycle, in a fixed order; [] when it does not."""
    triggers = []
    if after != before or after != last_trained:
        triggers.append("new_data")
    max_age = cfg.max_model_age_days
    if champion and max_age is not None and (time.time() - champion["created"]) / 86400 > max_age:
        triggers.append("model_age")
    if drift and drift.get("fired"):
        triggers.append("drift")
    if force:
        triggers.append("force")
    return triggers


class Cycle:
    """One cycle's state while it runs; ``record`` is what gets written and logged."""

    def __init__(self, root: Path, cfg: RetrainConfig, echo: Callable[[str], None]) -> None:
        self.root, self.cfg, self.echo = root, cfg, echo
        self.t0 = time.monotonic()
        self.record: dict[str, Any] = {
            "cycle_id": new_cycle_id(),
            "started": utc_now(),
            "finished": None,
            "status": "running",
            "trigger": [],
            "datasets": {},
            "durations_s": {},
            "repro_commands": [],
            "error": None,
            "mlflow_run_id": None,
        }

    def timed(self, step: str, fn: Callable[[], Any]) -> Any:
        start = time.monotonic()
        try:
            return fn()
        finally:
            self.record["durations_s"][step] = round(time.monotonic() - start, 3)

    def ds(self, dataset: str) -> dict[str, Any]:
        return self.record["datasets"].setdefault(dataset, {})


def _step(step: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn``; any exception becomes a CycleError naming ``step``."""
    try:
        return fn()
    except CycleError:
        raise
    except Exception as error:
        raise CycleError(step, f"{type(error).__name__}: {error}") from error


def _observe(cycle: Cycle, params: Params, names: list[str]) -> tuple[dict, dict, dict, dict]:
    """Ingest and look: (versions before, versions after, state, drift results) per dataset."""
    root, cfg = cycle.root, cycle.cfg
    before = _step("data_version", lambda: {d: data_version(root, params, d) for d in names})
    state = _step("state", lambda: ensure_baseline(root, cfg, params, names, before))
    reports = cycle.timed(
        "ingest", lambda: _step("ingest", lambda: ingest_all(root, cfg, params, names))
    )
    after = _step("data_version", lambda: {d: data_version(root, params, d) for d in names})
    drift = {
        d: _step("drift", lambda s=cfg.datasets[d]: check_drift(s.drift, root).as_dict())
        for d in names
        if cfg.datasets[d].drift is not None
    }
    for d in names:
        cycle.ds(d).update(
            {
                "data_version_before": before[d]["version"],
                "data_version_after": after[d]["version"],
                "data": after[d],
                "ingested": len(reports[d].ingested),
                "quarantined": reports[d].quarantined,
                "resumed_ingest": reports[d].resumed,
                "waiting": reports[d].waiting,
            }
        )
        if d in drift:
            cycle.ds(d)["drift"] = drift[d]
    return before, after, state, drift


def _decide(cycle: Cycle, params: Params, names: list[str], force: bool, seen: tuple) -> dict:
    """Triggers per dataset; asks the registry only when age matters or a retrain is due."""
    before, after, state, drift = seen
    args = {d: (before[d]["version"], after[d]["version"], state["last_trained"][d]) for d in names}
    without_age = {d: _triggers_for(cycle.cfg, *args[d], None, force, drift.get(d)) for d in names}
    champs: dict[str, dict | None] = {}
    if cycle.cfg.max_model_age_days is not None or any(without_age.values()):
        champs = cycle.timed(
            "registry", lambda: _step("registry", lambda: champions(params, names))
        )
    triggers = {
        d: _triggers_for(cycle.cfg, *args[d], champs.get(d), force, drift.get(d)) for d in names
    }
    for d in names:
        cycle.ds(d)["trigger"] = triggers[d]
        cycle.ds(d)["champion_before"] = (champs.get(d) or {}).get("version")
    cycle.record["trigger"] = sorted({t for ts in triggers.values() for t in ts})
    return {d: t for d, t in triggers.items() if t}


def _read_results(cycle: Cycle, params: Params, decisions: dict[str, Path], digests: dict) -> None:
    """Each retrained dataset's decision (when the run rewrote it) and champion after."""
    decision_error = None
    for d, path in decisions.items():
        entry = cycle.ds(d)
        if _file_digest(path) in (None, digests[d]):
            entry.update({"verdict": "unchanged", "candidate_version": None})
            continue
        try:
            decision = _step("decision", lambda p=path: read_decision(p))
        except CycleError as error:  # still record where the champion is, then fail
            decision_error = decision_error or error
            continue
        entry.update({k: v for k, v in decision.items() if v is not None or k not in entry})
    champs = cycle.timed(
        "registry_after", lambda: _step("registry", lambda: champions(params, list(decisions)))
    )
    for d in decisions:
        cycle.ds(d)["champion_after"] = (champs.get(d) or {}).get("version")
    if decision_error:
        raise decision_error


def _run_steps(cycle: Cycle, force: bool, datasets: list[str] | None) -> None:
    root, cfg = cycle.root, cycle.cfg
    params = _step("config", lambda: load_params(root / cfg.params))
    names = datasets or list(cfg.datasets)
    seen = _observe(cycle, params, names)
    triggered = _decide(cycle, params, names, force, seen)
    if not triggered:
        cycle.record["status"] = "no_change"
        return
    decisions = {d: root / cfg.repro.decision.format(dataset=d) for d in triggered}
    digests = {d: _file_digest(p) for d, p in decisions.items()}
    cycle.record["repro_commands"] = ["dvc " + " ".join(c) for c in repro_commands(cfg, triggered)]
    cycle.timed("repro", lambda: _repro(root, cfg, triggered, cycle.echo))
    state = seen[2]
    for d in triggered:  # trained: a failed repro never gets here, so the next cycle retries
        trained = _step("data_version", lambda d=d: data_version(root, params, d))
        state["last_trained"][d] = cycle.ds(d)["data_version_trained"] = trained["version"]
    _step("state", lambda: save_state(root, cfg, state))
    _read_results(cycle, params, decisions, digests)
    cycle.record["status"] = "retrained"


def run_cycle(
    root: Path | str = ".",
    cfg: RetrainConfig | None = None,
    *,
    force: bool = False,
    datasets: list[str] | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run one cycle (the caller holds the lock); returns the record, written when it did work."""
    from vigil.scheduling import load_retrain_config

    root = Path(root).resolve()
    cfg = cfg or load_retrain_config(root / "configs" / "retrain.yaml")
    cycle = Cycle(root, cfg, echo)
    try:
        _run_steps(cycle, force, datasets)
    except CycleError as error:
        cycle.record["status"] = "failed"
        cycle.record["error"] = {"step": error.step, "message": str(error), "tail": error.tail}
        log.error("retrain cycle failed at %s: %s", error.step, error)
    record = cycle.record
    record["finished"] = utc_now()
    record["durations_s"]["total"] = round(time.monotonic() - cycle.t0, 3)
    did_something = record["status"] != "no_change" or any(
        e.get("quarantined") or e.get("ingested") for e in record["datasets"].values()
    )
    if not did_something:
        echo(
            f"retrain: no change ({', '.join(record['datasets']) or 'no datasets'}: no new data, "
            "champion within age, no drift); nothing to do"
        )
        return record
    path = write_record(root, cfg, record)
    try:
        record["mlflow_run_id"] = log_record_to_mlflow(cfg, record)
    except Exception as error:  # noqa: BLE001 - the record on disk is the source of truth
        record["mlflow_error"] = f"{type(error).__name__}: {error}"
        log.error("could not log cycle %s to MLflow: %s", record["cycle_id"], error)
    write_record(root, cfg, record)
    echo(summarize(record) + f"\nrecord: {path}")
    return record
