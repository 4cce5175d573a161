"""vigil.scheduling: retraining as new normal data arrives (inbox, triggers, cycle, schedule).

Settings live in ``configs/retrain.yaml`` and are validated here, strictly (unknown keys are
errors). Paths in that file are relative to the project root. Layout on disk::

    <inbox>/                      new normal items dropped by people or the line
    data/extra/<dataset>/         ingested normal items, DVC-tracked (data/extra/<dataset>.dvc)
    <quarantine>/<dataset>/       rejected items, each with <name>.reason.txt
    <records>/<cycle_id>.json     one record per cycle that did something
    <state_dir>/                  ingest journal, last trained data versions, lock file
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vigil.config import read_yaml_mapping, validate_config
from vigil import names

DEFAULT_CONFIG = "configs/retrain.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DriftConfig(_Strict):
    """Drift trigger over a JSONL log of production scores (one ``{"score": ...}`` per line).

    Fires when the share of the last ``window`` scores above the threshold exceeds
    ``max_alarm_fraction``, or (when ``ks_pvalue`` is set) when a two-sample KS test between the
    recent window and the reference scores gives p < ``ks_pvalue``.
    """

    scores_log: str
    window: int = Field(200, ge=1)
    min_samples: int = Field(50, ge=1)  # fewer recent scores: no verdict
    threshold: float | None = None  # None: each line's "threshold" field
    max_alarm_fraction: float | None = Field(0.1, ge=0, le=1)
    ks_pvalue: float | None = Field(None, gt=0, lt=1)
    reference_log: str | None = None  # None: the `window` scores before the recent window


class InboxSpec(_Strict):
    """One dataset's inbox and what its items must look like."""

    inbox: str
    # "auto": as the dataset's existing normal data ([h, w] when it all agrees, else any size)
    size: Literal["auto"] | tuple[int, int] | None = "auto"
    channels: Literal["auto", 1, 3] | None = "auto"
    min_frames: int = Field(2, ge=1)  # video items: fewer decodable frames is an error
    # an item whose size or mtime changes within this many seconds is still being written
    settle_s: float = Field(1.0, ge=0, le=60)
    drift: DriftConfig | None = None


class LockConfig(_Strict):
    path: str = ".vigil/retrain.lock"
    timeout_s: float = Field(0, ge=0)  # how long a second run waits; 0: exit at once
    stale_after_s: float = Field(6 * 3600, gt=0)  # older locks of dead/remote holders are broken


class ScheduleConfig(_Strict):
    cron: str | None = None  # crontab expression, e.g. "0 2 * * *"
    interval_minutes: float | None = Field(None, gt=0)
    timezone: str = "UTC"
    run_at_start: bool = False  # one cycle immediately, then on the schedule

    @model_validator(mode="after")
    def _one_of(self) -> ScheduleConfig:
        if (self.cron is None) == (self.interval_minutes is None):
            raise ValueError("set exactly one of schedule.cron and schedule.interval_minutes")
        return self


class ReproConfig(_Strict):
    """How a cycle runs the pipeline. ``{dataset}`` is replaced by each triggered dataset."""

    targets: list[str] = ["register@{dataset}"]  # []: the whole pipeline (`dvc repro`)
    # age/drift/--force: rerun this and downstream; extra@ (not prepare@) so a dataset whose data
    # also changed gets its fingerprint redone, and prepare@ records the data it read
    force_from: str | None = "extra@{dataset}"
    decision: str = "reports/{dataset}/decision.json"  # written by the register stage
    timeout_s: float | None = Field(None, gt=0)


class RetrainConfig(_Strict):
    datasets: dict[str, InboxSpec]
    params: str = "params.yaml"
    quarantine: str = "quarantine"
    records: str = "reports/retrain"
    state_dir: str = ".vigil"
    max_model_age_days: float | None = Field(None, gt=0)  # None: never retrain on age alone
    mlflow_experiment: str = names.RETRAIN_EXPERIMENT
    lock: LockConfig = LockConfig()
    schedule: ScheduleConfig = ScheduleConfig(cron="0 2 * * *")
    repro: ReproConfig = ReproConfig()

    @model_validator(mode="after")
    def _has_datasets(self) -> RetrainConfig:
        if not self.datasets:
            raise ValueError("datasets: at least one dataset with an inbox is required")
        return self


def load_retrain_config(path: Path | str = DEFAULT_CONFIG) -> RetrainConfig:
    """Read and validate ``configs/retrain.yaml``; ConfigError names the file and every bad key."""
    raw = read_yaml_mapping(path, "retrain config")
    return validate_config(RetrainConfig, raw, path, "retrain config")
