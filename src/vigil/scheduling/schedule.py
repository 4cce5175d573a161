"""`vigil schedule`: retraining cycles on a cron expression or an interval (APScheduler 3).

One cycle at a time: the job has ``max_instances=1`` and ``coalesce=True`` (missed runs while a
cycle is busy collapse into one), and each cycle takes the retrain lock, so a manual `vigil
retrain` or a second scheduler on the same project waits or is skipped with a clear message. A
cycle that fails is recorded by the cycle itself; anything that still escapes is logged and the
scheduler goes on with the next tick.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from vigil.scheduling import RetrainConfig, ScheduleConfig
from vigil.scheduling.lock import LockBusyError, RetrainLock

log = logging.getLogger(__name__)


_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab numbering: 0 = Sunday


def crontab_weekdays(field: str) -> str:
    """A crontab day-of-week field as APScheduler 3 day names.

    APScheduler 3 numbers weekdays from Monday = 0 while crontab uses Sunday = 0 (and 7), so
    ``from_crontab("0 2 * * 1-5")`` would run Tuesday to Saturday. Expanding the field to names
    keeps the crontab meaning: ``1-5`` -> ``mon,tue,wed,thu,fri``.
    """
    days: set[int] = set()
    for token in field.lower().split(","):
        spec, _, step = token.partition("/")
        if spec == "*":
            lo, hi = 0, 6
        else:
            a, _, b = spec.partition("-")
            lo = _day_number(a)
            hi = _day_number(b) if b else (6 if step else lo)
            if hi < lo:  # "fri-sun": wraps past Saturday
                hi += 7
        days.update(d % 7 for d in range(lo, hi + 1, int(step) if step else 1))
    if days == set(range(7)):
        return "*"
    return ",".join(_DAY_NAMES[d] for d in sorted(days))


def _day_number(text: str) -> int:
    text = text.strip()
    if text in _DAY_NAMES:
        return _DAY_NAMES.index(text)
    if text.isdigit() and 0 <= int(text) <= 7:
        return int(text)
    raise ValueError(f"day of week {text!r}: expected 0-7 or sun..sat")


def build_trigger(cfg: ScheduleConfig) -> CronTrigger | IntervalTrigger:
    """The APScheduler trigger for ``schedule.cron`` or ``schedule.interval_minutes``."""
    if cfg.cron is not None:
        try:
            fields = cfg.cron.split()
            if len(fields) != 5:
                raise ValueError(
                    f"expected 5 fields (min hour day month weekday), got {len(fields)}"
                )
            minute, hour, day, month, weekday = fields
            return CronTrigger(
                minute=minute,
                hour=hour,
                day=day,
                month=month,
                day_of_week=crontab_weekdays(weekday),
                timezone=cfg.timezone,
            )
        except ValueError as error:
            raise ValueError(f"schedule.cron {cfg.cron!r}: {error}") from None
    return IntervalTrigger(seconds=cfg.interval_minutes * 60, timezone=cfg.timezone)


def locked_cycle(
    root: Path, cfg: RetrainConfig, *, force: bool = False, wait_s: float | None = None
) -> dict[str, Any]:
    """Take the retrain lock and run one cycle; LockBusyError when another one runs."""
    from vigil.scheduling.retrain import run_cycle

    timeout = cfg.lock.timeout_s if wait_s is None else wait_s
    with RetrainLock(root / cfg.lock.path, timeout_s=timeout, stale_after_s=cfg.lock.stale_after_s):
        return run_cycle(root, cfg, force=force)


def run_schedule(
    root: Path | str,
    cfg: RetrainConfig,
    *,
    max_cycles: int | None = None,
    cycle: Callable[[], Any] | None = None,
) -> list[str]:
    """Block and run cycles on the configured schedule; returns each tick's outcome.

    ``max_cycles`` stops after that many ticks (tests, one-shot containers); ``cycle`` replaces
    the locked retrain cycle (a different job on the same schedule).
    """
    root = Path(root).resolve()
    job = cycle or (lambda: locked_cycle(root, cfg))
    outcomes: list[str] = []
    scheduler = BlockingScheduler(timezone=cfg.schedule.timezone)

    def tick() -> None:
        try:
            result = job()
            status = result.get("status", "done") if isinstance(result, dict) else "done"
            outcomes.append(status)
        except LockBusyError as error:
            outcomes.append("skipped")
            log.warning("cycle skipped: %s", error)
        except Exception:
            outcomes.append("crashed")
            log.exception("retrain cycle crashed; the schedule goes on")
        if max_cycles is not None and len(outcomes) >= max_cycles:
            scheduler.shutdown(wait=False)
        else:
            next_run = scheduler.get_job("retrain").next_run_time
            log.info("next retrain cycle at %s", next_run)

    first = datetime.now(scheduler.timezone) if cfg.schedule.run_at_start else None
    kwargs = {"next_run_time": first} if first else {}
    scheduler.add_job(
        tick,
        build_trigger(cfg.schedule),
        id="retrain",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=None,
        **kwargs,
    )
    log.info(
        "vigil schedule: %s", cfg.schedule.cron or f"every {cfg.schedule.interval_minutes} min"
    )
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        log.info("vigil schedule: stopped")
    return outcomes
