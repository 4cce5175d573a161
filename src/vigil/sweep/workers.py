"""Sweep workers: processes (or this one) that share one study through its storage.

Each worker opens the study, runs up to its quota of trials and stops early once the study holds
``sweep.n_trials`` (other workers, other invocations, other machines count too). Child processes
are spawned with a fair share of the CPU threads; a storage or tracking failure in one ends it
with one log line, and the parent names the failed workers.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from pathlib import Path
from typing import Any

import optuna

from vigil.config import Params
from vigil.sweep.identity import SweepError, open_study
from vigil.sweep.storage import StorageError, open_storage
from vigil.sweep.trial import Objective

log = logging.getLogger(__name__)


def _worker(
    params: Params,
    dataset_dir: str,
    work_dir: str,
    url: str,
    name: str,
    knobs: dict,
    quota: int,
    worker: int,
    parent_run_id: str,
    torch_threads: int | None,
) -> None:
    """One worker: opens the shared study and runs up to ``quota`` trials, stopping early once
    the study holds ``sweep.n_trials`` (other workers, other machines, count too)."""
    import torch

    from vigil.models.blocks import ImageTooSmallError
    from vigil.models.lightning import NonFiniteLossError

    if torch_threads:
        torch.set_num_threads(torch_threads)
    study = open_study(params, open_storage(url), name, knobs)
    objective = Objective(params, Path(dataset_dir), Path(work_dir), knobs, parent_run_id)
    if quota > 0:
        study.optimize(
            objective,
            n_trials=quota,
            catch=(ImageTooSmallError, NonFiniteLossError),
            callbacks=[optuna.study.MaxTrialsCallback(params.sweep.n_trials, states=None)],
        )


def _worker_process(*args: Any) -> None:
    """``_worker`` as a child process: a storage or tracking failure ends it with one log
    line and exit status 2 (the parent reports the failed worker), not a traceback."""
    from vigil.tracking import TrackingError

    try:
        _worker(*args)
    except (StorageError, TrackingError) as error:
        log.error("%s: %s", multiprocessing.current_process().name, error)
        raise SystemExit(2) from None


def quotas(remaining: int, n_workers: int) -> list[int]:
    """``remaining`` trials split as evenly as possible over ``n_workers``."""
    return [remaining // n_workers + (w < remaining % n_workers) for w in range(n_workers)]


def run_workers(
    params: Params,
    dataset_dir: Path,
    work_dir: Path,
    url: str,
    name: str,
    knobs: dict,
    n_workers: int,
    parent: str,
    remaining: int,
) -> None:
    """Run ``remaining`` more trials of study ``name``: here when ``n_workers`` is 1, else in
    that many spawned processes; SweepError naming the workers that failed."""
    shares = quotas(remaining, max(1, n_workers))
    if n_workers <= 1:
        _worker(
            params, str(dataset_dir), str(work_dir), url, name, knobs, shares[0], 0, parent, None
        )
        return
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(
            target=_worker_process,
            name=f"sweep-worker-{w}",
            args=(
                params,
                str(dataset_dir),
                str(work_dir),
                url,
                name,
                knobs,
                share,
                w,
                parent,
                threads,
            ),
        )
        for w, share in enumerate(shares)
        if share > 0
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    failed = [f"{p.name} (exit {p.exitcode})" for p in procs if p.exitcode != 0]
    if failed:
        raise SweepError(f"sweep workers failed: {', '.join(failed)} (see their log above)")

