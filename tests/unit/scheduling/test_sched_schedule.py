"""`vigil schedule`: N cycles on an interval, one at a time, surviving a failing cycle."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from vigil.config import ConfigError
from vigil.scheduling import RetrainConfig, ScheduleConfig, load_retrain_config
from vigil.scheduling.lock import RetrainLock
from vigil.scheduling.schedule import build_trigger, crontab_weekdays, locked_cycle, run_schedule

FAST = {"interval_minutes": 0.2 / 60, "run_at_start": True}  # a tick every 0.2 s


def _cfg(tmp_path: Path, **schedule) -> RetrainConfig:
    return RetrainConfig(
        datasets={"tiles": {"inbox": "inbox/tiles"}},
        lock={"path": str(tmp_path / "retrain.lock")},
        schedule=schedule or FAST,
    )


def test_runs_n_cycles_and_survives_a_failing_one(tmp_path: Path) -> None:
    calls: list[float] = []
    running = threading.Lock()

    def cycle() -> dict:
        assert running.acquire(blocking=False), "two cycles overlapped"
        try:
            calls.append(time.monotonic())
            if len(calls) == 2:
                raise RuntimeError("training crashed")
            time.sleep(0.3)  # longer than the interval: ticks must not overlap
            return {"status": "no_change"}
        finally:
            running.release()

    outcomes = run_schedule(tmp_path, _cfg(tmp_path), max_cycles=4, cycle=cycle)
    assert outcomes == ["no_change", "crashed", "no_change", "no_change"]
    assert len(calls) == 4


def test_busy_lock_skips_the_tick_with_a_message(tmp_path: Path, caplog) -> None:
    cfg = _cfg(tmp_path)
    with RetrainLock(tmp_path / "retrain.lock"):
        outcomes = run_schedule(
            tmp_path, cfg, max_cycles=2, cycle=lambda: locked_cycle(tmp_path, cfg)
        )
    assert outcomes == ["skipped", "skipped"]
    assert "another retraining cycle is running" in caplog.text


def test_cron_and_interval_triggers() -> None:
    cron = build_trigger(ScheduleConfig(cron="30 2 * * 1-5"))
    saturday_noon = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    fire = cron.get_next_fire_time(None, saturday_noon)
    assert (fire.weekday(), fire.hour, fire.minute) == (0, 2, 30)  # next Monday 02:30 UTC
    assert build_trigger(ScheduleConfig(interval_minutes=5)).interval.total_seconds() == 300
    with pytest.raises(ValueError, match="schedule.cron"):
        build_trigger(ScheduleConfig(cron="61 * * * *"))


def test_config_is_strict(tmp_path: Path) -> None:
    good = {"datasets": {"a": {"inbox": "inbox/a"}}, "schedule": {"cron": "0 2 * * *"}}
    path = tmp_path / "retrain.yaml"
    path.write_text(yaml.safe_dump({**good, "shedule": {"cron": "0 * * * *"}}))
    with pytest.raises(ConfigError, match="shedule: unknown key"):
        load_retrain_config(path)
    path.write_text(
        yaml.safe_dump({**good, "schedule": {"cron": "0 * * * *", "interval_minutes": 5}})
    )
    with pytest.raises(ConfigError, match="exactly one of"):
        load_retrain_config(path)
    path.write_text(yaml.safe_dump({**good, "datasets": {"a": {"inbox": "i", "channels": 2}}}))
    with pytest.raises(ConfigError, match="datasets.a.channels"):
        load_retrain_config(path)


@pytest.mark.parametrize(
    ("field", "names"),
    [
        ("1-5", "mon,tue,wed,thu,fri"),
        ("0", "sun"),
        ("7", "sun"),
        ("5-7", "sun,fri,sat"),
        ("fri-sun", "sun,fri,sat"),
        ("*/2", "sun,tue,thu,sat"),
        ("*", "*"),
        ("0-6", "*"),
    ],
)
def test_crontab_weekdays_keep_sunday_zero(field: str, names: str) -> None:
    assert crontab_weekdays(field) == names
