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
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import MISSING, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from vigil.config import Params, load_params
from vigil.scheduling import RetrainConfig
from vigil.scheduling.drift import check_drift
from vigil.scheduling.inbox import (
    dataset_folders,
    dvc_env,
    ingest_all,
    sha256_file,
    tracked_version,
    utc_now,
    write_json_atomic,
)

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
CHAMPION = "champion"


class CycleError(RuntimeError):
    """A cycle step failed; ``step`` names it for the record."""

    def __init__(self, step: str, message: str, tail: str = "") -> None:
        super().__init__(message)
        self.step = step
        self.tail = tail


# --- data versions ---------------------------------------------------------------------------


def _lock_out_md5(root: Path, rel: str) -> str | None:
    """md5 of ``rel`` as an output in dvc.lock (e.g. data/raw/capsules from `generate`)."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return None
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    target = Path(rel).as_posix().rstrip("/")
    for stage in stages.values():
        for out in stage.get("outs", []):
            if Path(out.get("path", "")).as_posix().rstrip("/") == target:
                return out.get("md5")
    return None


def data_version(root: Path, params: Params, dataset: str) -> dict[str, Any]:
    """What DVC has recorded for the dataset's data: source and ingested extra folder.

    ``{"version": short hash of both, "source": md5 | None, "extra": md5 | None}``. The source's
    md5 comes from ``<source>.dvc`` (a user folder under ``dvc add``) or from dvc.lock (a stage
    output such as the generated built-in data).
    """
    folders = dataset_folders(root, params, dataset)
    source_rel = params.dataset(dataset).source
    source = tracked_version(root / source_rel) or _lock_out_md5(root, source_rel)
    extra = tracked_version(folders.extra)
    digest = hashlib.sha256(json.dumps([source, extra]).encode()).hexdigest()[:12]
    return {"version": digest, "source": source, "extra": extra}


def load_state(root: Path, cfg: RetrainConfig) -> dict[str, Any]:
    path = root / cfg.state_dir / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {"last_trained": {}}


def save_state(root: Path, cfg: RetrainConfig, state: dict[str, Any]) -> None:
    write_json_atomic(root / cfg.state_dir / STATE_FILE, state)


def ensure_baseline(
    root: Path,
    cfg: RetrainConfig,
    params: Params,
    names: Iterable[str],
    versions: dict[str, dict] | None = None,
) -> dict[str, Any]:
    """The state, with a trained-on version for every dataset seen for the first time.

    At first sight the pipeline is taken as trained on the data as it is now; call this before
    any ingest (``vigil ingest`` does) so that data ingested later counts as new.
    """
    state = load_state(root, cfg)
    missing = [d for d in names if d not in state["last_trained"]]
    for d in missing:
        state["last_trained"][d] = (versions or {}).get(d, data_version(root, params, d))["version"]
    if missing:
        save_state(root, cfg, state)
    return state


# --- registry --------------------------------------------------------------------------------


def model_name(params: Params, dataset: str) -> str:
    return f"{params.register.model_name_prefix}-{dataset}-{params.dataset(dataset).modality}"


def champions(params: Params, datasets: Iterable[str]) -> dict[str, dict | None]:
    """The champion version of each dataset's registered model (None when there is none)."""
    from mlflow.exceptions import MlflowException

    from vigil.registry.tracking import connect

    client = connect()
    found: dict[str, dict | None] = {}
    for dataset in datasets:
        name = model_name(params, dataset)
        try:
            version = client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException as error:
            if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                found[dataset] = None
                continue
            raise
        found[dataset] = {
            "model": name,
            "version": str(version.version),
            "created": version.creation_timestamp / 1000.0,
            "run_id": version.run_id,
        }
    return found


# --- the pipeline run ------------------------------------------------------------------------


def _stream(
    cmd: list[str], root: Path, timeout_s: float | None, echo: Callable[[str], None]
) -> tuple[int, str]:
    """Run ``cmd``, echoing each output line; returns (exit code, last lines)."""
    tail: deque[str] = deque(maxlen=60)
    proc = subprocess.Popen(
        cmd,
        cwd=root,
        env=dvc_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    timer = threading.Timer(timeout_s, proc.kill) if timeout_s else None
    if timer:
        timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            echo(line.rstrip("\n"))
            tail.append(line.rstrip("\n"))
        code = proc.wait()
    finally:
        if timer:
            timer.cancel()
    if timer and code < 0:
        tail.append(f"killed after the {timeout_s} s repro timeout")
    return code, "\n".join(tail)


def repro_commands(cfg: RetrainConfig, triggers: dict[str, list[str]]) -> list[list[str]]:
    """dvc repro argument lists: plain for new data, ``--force --downstream`` for the rest."""
    plain = [d for d, t in triggers.items() if t == ["new_data"]]
    forced = [d for d, t in triggers.items() if t and t != ["new_data"]]
    commands = []
    if plain:
        targets = [t.format(dataset=d) for d in plain for t in cfg.repro.targets]
        commands.append(["repro", *targets])
    if forced:
        if cfg.repro.force_from:
            commands.append(
                [
                    "repro",
                    "--force",
                    "--downstream",
                    *[cfg.repro.force_from.format(dataset=d) for d in forced],
                ]
            )
        else:
            targets = [t.format(dataset=d) for d in forced for t in cfg.repro.targets]
            commands.append(["repro", "--force", *targets])
    return commands


def run_repro(
    root: Path, cfg: RetrainConfig, triggers: dict[str, list[str]], echo: Callable[[str], None]
) -> list[str]:
    """Run the repro commands in order; raises CycleError("repro") on the first failure."""
    ran = []
    for args in repro_commands(cfg, triggers):
        cmd = [sys.executable, "-m", "dvc", *args]
        ran.append("dvc " + " ".join(args))
        echo(f"$ {ran[-1]}")
        code, tail = _stream(cmd, root, cfg.repro.timeout_s, echo)
        if code != 0:
            raise CycleError("repro", f"`{ran[-1]}` failed (exit {code})", tail)
    return ran


def _file_digest(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


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
    cycle.timed("repro", lambda: run_repro(root, cfg, triggered, cycle.echo))
    state = seen[2]
    for d in triggered:  # trained: a failed repro never gets here, so the next cycle retries
        trained = _step("data_version", lambda d=d: data_version(root, params, d))
        state["last_trained"][d] = cycle.ds(d)["data_version_trained"] = trained["version"]
    _step("state", lambda: save_state(root, cfg, state))
    _read_results(cycle, params, decisions, digests)
    cycle.record["status"] = "retrained"


def records_dir(root: Path, cfg: RetrainConfig) -> Path:
    return root / cfg.records


def write_record(root: Path, cfg: RetrainConfig, record: dict[str, Any]) -> Path:
    return write_json_atomic(records_dir(root, cfg) / f"{record['cycle_id']}.json", record)


def log_record_to_mlflow(cfg: RetrainConfig, record: dict[str, Any]) -> str:
    """One MLflow run per cycle in ``cfg.mlflow_experiment``: params, metrics, tags, the JSON."""
    from mlflow.entities import Metric, Param, RunTag

    from vigil.registry.tracking import connect, ensure_experiment

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
    tags = [RunTag("vigil.stage", "retrain"), RunTag("vigil.cycle_id", record["cycle_id"])]
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
        tags.append(RunTag("error.message", record["error"]["message"][:4000]))
    client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
    client.log_dict(run_id, record, f"cycle-{record['cycle_id']}.json")
    client.set_terminated(run_id, "FAILED" if record["status"] == "failed" else "FINISHED")
    return run_id


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
        lines.append(f"  error at {record['error']['step']}: {record['error']['message']}")
    return "\n".join(lines)
