"""The console's retraining panel: the last cycle records and a "run one cycle now" runner.

Records are the files ``vigil.scheduling.retrain.run_cycle`` writes to ``reports/retrain/``
(``<cycle_id>.json``, sortable by time); each is summarized to what the panel shows: trigger,
data versions, verdict, champion before and after, duration, error. ``CycleRunner`` runs one cycle
on a background thread under the same lock as ``vigil retrain`` (``RetrainLock``, no waiting): a
cycle already running, here or in another process, is ``CycleBusyError`` (the console answers 409).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DATASET_FIELDS = (
    "trigger",
    "data_version_before",
    "data_version_after",
    "ingested",
    "candidate_version",
    "verdict",
    "promoted",
    "champion_before",
    "champion_after",
    "reasons",
)


class CycleBusyError(RuntimeError):
    """A retraining cycle is running already; the message names who holds the lock."""


class RetrainUnavailableError(RuntimeError):
    """No usable retrain config: the message names the file and what is wrong."""


def summarize(record: dict[str, Any]) -> dict[str, Any]:
    """A cycle record reduced to the panel's columns."""
    datasets = {
        name: {key: entry.get(key) for key in DATASET_FIELDS}
        for name, entry in (record.get("datasets") or {}).items()
    }
    for name, entry in datasets.items():
        entry["quarantined"] = len((record["datasets"][name] or {}).get("quarantined") or {})
    error = record.get("error") or None
    return {
        "cycle_id": record.get("cycle_id"),
        "started": record.get("started"),
        "finished": record.get("finished"),
        "status": record.get("status"),
        "trigger": record.get("trigger") or [],
        "datasets": datasets,
        "duration_s": (record.get("durations_s") or {}).get("total"),
        "error": {"step": error.get("step"), "message": error.get("message")} if error else None,
        "mlflow_run_id": record.get("mlflow_run_id"),
    }


def read_cycles(folder: Path, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` records in ``folder``, newest first; an unreadable file is listed as
    an entry whose ``error`` names it."""
    if not folder.is_dir():
        return []
    files = sorted(folder.glob("*.json"), reverse=True)[:limit]
    cycles = []
    for path in files:
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            cycles.append(summarize(record))
        except (OSError, ValueError, AttributeError, TypeError) as error:
            cycles.append(
                {
                    "cycle_id": path.stem,
                    "status": "unreadable",
                    "error": {"step": "record", "message": f"{path}: {error}"},
                }
            )
    return cycles


class CycleRunner:
    """Runs one cycle at a time in the background, as ``vigil retrain`` does (same lock)."""

    def __init__(self, root: Path, config_path: Path) -> None:
        self.root = root
        self.config_path = config_path
        self._mutex = threading.Lock()
        self._thread: threading.Thread | None = None
        self._output: deque[str] = deque(maxlen=200)
        self.started_at: str | None = None
        self.last: dict[str, Any] | None = None  # summary of the last cycle run from here

    def config(self) -> Any:
        """The retrain config; RetrainUnavailableError when missing or invalid."""
        from vigil.config import ConfigError
        from vigil.scheduling import load_retrain_config

        if not self.config_path.is_file():
            raise RetrainUnavailableError(f"{self.config_path}: retrain config not found")
        try:
            return load_retrain_config(self.config_path)
        except ConfigError as error:
            raise RetrainUnavailableError(str(error)) from None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> str:
        """Take the retrain lock and start a cycle; returns when it started. CycleBusyError when
        a cycle is running (here or elsewhere), RetrainUnavailableError without a config."""
        from vigil.scheduling.lock import LockBusyError, RetrainLock

        cfg = self.config()
        with self._mutex:
            if self.running:
                raise CycleBusyError(f"a cycle started from this console at {self.started_at} "
                                     "is still running")
            lock = RetrainLock(
                self.root / cfg.lock.path, timeout_s=0, stale_after_s=cfg.lock.stale_after_s
            )
            try:
                lock.acquire()
            except LockBusyError as error:
                raise CycleBusyError(str(error)) from None
            self.started_at = datetime.now(UTC).isoformat(timespec="seconds")
            self._output.clear()
            self._thread = threading.Thread(
                target=self._run, args=(lock, cfg), name="vigil-console-retrain", daemon=True
            )
            self._thread.start()
            return self.started_at

    def _run(self, lock: Any, cfg: Any) -> None:
        from vigil.scheduling.retrain import run_cycle

        try:
            record = run_cycle(self.root, cfg, echo=self._output.append)
            self.last = summarize(record)
        except Exception as error:  # noqa: BLE001 - shown in the panel, never kills the server
            log.exception("console retrain cycle failed")
            self.last = {"status": "failed", "error": {"step": "cycle", "message": str(error)}}
        finally:
            lock.release()

    def status(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "started_at": self.started_at,
            "output": list(self._output)[-40:],
            "last": self.last,
        }
