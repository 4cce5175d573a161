"""``run_sweep``: an Optuna study over the encoding size, one MLflow child run per trial, and
``run_stage``, the DVC ``sweep`` stage around it.

- Storage: ``sweep.storage``, else ``VIGIL_OPTUNA_STORAGE``, else SQLite in the project root
  (``vigil.locations.optuna_storage``); see ``vigil.sweep.storage``.
- Which study, and reproducibility: ``vigil.sweep.identity``. The study's name hashes everything
  that shapes a trial except ``n_trials``; trial k is the same in any run of that study, and the
  sweep chooses among the first ``n_trials`` trials, so the same params give the same trials
  and the same choice on any clone (one worker). The stage says what it did: "new study",
  "N finished, running M more" or "reusing the first N trials".
- ``n_trials`` counts every trial of the study; workers (``vigil.sweep.workers``: processes
  here, or other invocations elsewhere) stop once the study holds that many.
- MLflow: the parent run id is a study user attribute, so every worker nests under one parent
  (``vigil.sweep.runs``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from vigil.atomic import atomic_write_json
from vigil.config import Params
from vigil.locations import optuna_storage
from vigil.data.prepared import PreparedDataset
from vigil.sweep.identity import (
    FINISHED,
    SweepError,
    count_trials,
    dataset_family,
    first_trials,
    open_study,
    study_name,
)
from vigil.sweep.objective import check_tune_split
from vigil.sweep.plots import skipped_figure, sweep_figure, write_plot_data
from vigil.sweep.results import choose_best, pruning_summary, trial_rows
from vigil.sweep.runs import parent_run, report_parent
from vigil.sweep.space import grid_size, load_space
from vigil.sweep.storage import StorageError, open_storage, redact
from vigil.sweep.trial import encoding_shape
from vigil.sweep.workers import quotas, run_workers

__all__ = [
    "StorageError",
    "SweepError",
    "SweepResult",
    "open_storage",
    "pruning_summary",
    "quotas",
    "run_stage",
    "run_sweep",
    "study_name",
]

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    model: dict[str, Any]  # the best model config of the dataset's modality
    trial: int | None
    objective: float | None
    study: str
    storage: str
    parent_run_id: str | None
    feasible: bool
    rows: list[dict[str, Any]] = field(default_factory=list)
    pruning: dict[str, Any] = field(default_factory=dict)

    def best_config(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "trial": self.trial,
            "objective": self.objective,
            "study": self.study,
            "feasible": self.feasible,
        }



def _announce(study: optuna.Study, n_trials: int) -> int:
    """Log what this sweep will do with the study; returns how many trials to run."""
    finished = count_trials(study, FINISHED)
    running = count_trials(study, (TrialState.RUNNING,))
    remaining = max(0, n_trials - finished - running)
    name = study.study_name
    elsewhere = f" ({running} running elsewhere)" if running else ""
    if finished + running == 0:
        log.info("study %s: new, running %d trials", name, remaining)
    elif remaining:
        log.info("study %s: %d finished%s, running %d more", name, finished, elsewhere, remaining)
    elif finished > n_trials:
        log.info(
            "study %s: reusing its first %d trials (it holds %d: sweep.n_trials chooses among "
            "the first n)", name, n_trials, finished
        )
    else:
        log.info("study %s: reusing %d trials%s", name, finished, elsewhere)
    return remaining


def run_sweep(
    params: Params,
    dataset_dir: Path | str,
    out_dir: Path | str,
    n_workers: int = 1,
    *,
    work_dir: Path | str | None = None,
    storage: str | None = None,
    name: str | None = None,
) -> SweepResult:
    """Run (or resume, or reuse) the study; write ``sweep.json``/``sweep.csv``/``sweep.png``
    and ``pruning.json`` into ``out_dir``; return the best of its first ``sweep.n_trials``.

    Trials train into ``work_dir`` (a temp folder by default, removed afterwards).
    Raises SearchSpaceError, NoAnomaliesError, StorageError (all before any training).
    """
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    space = load_space(params.sweep.space)
    data = PreparedDataset.load(dataset_dir)
    knobs = space.knobs(dataset_family(params, data))
    check_tune_split(data)
    n_trials = params.sweep.n_trials
    if params.sweep.sampler == "grid" and grid_size(knobs) < n_trials:
        log.warning("grid has %d points < sweep.n_trials=%d", grid_size(knobs), n_trials)
    url = storage or optuna_storage(params.sweep.storage)
    name = name or study_name(params, space, data)
    study = open_study(params, open_storage(url), name, knobs)
    parent = parent_run(study, data, params)
    remaining = _announce(study, n_trials)
    temp = None if work_dir else tempfile.mkdtemp(prefix="vigil-sweep-")
    try:
        run_workers(
            params, dataset_dir, Path(work_dir or temp), url, name, knobs, n_workers, parent,
            remaining,
        )
    finally:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    trials = first_trials(study, n_trials)
    best, feasible = choose_best(trials, name)
    log.info("study %s: chose trial %d of the first %d", name, best.number, len(trials))
    rows = trial_rows(trials)
    summary = pruning_summary(rows, params.sweep.epochs_per_trial)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_plot_data(rows, out_dir / "sweep.json", out_dir / "sweep.csv", chosen=best.number)
    atomic_write_json(out_dir / "pruning.json", summary)
    png = sweep_figure(rows, out_dir / "sweep.png", title=f"{data.name}: {name}",
                       chosen=best.number)
    report_parent(parent, best, feasible, rows, summary, png, out_dir / "sweep.json")
    return SweepResult(
        model=best.user_attrs["model"],
        trial=best.number,
        objective=best.value,
        study=name,
        storage=redact(url),
        parent_run_id=parent,
        feasible=feasible,
        rows=rows,
        pruning=summary,
    )


# --- the DVC stage ---------------------------------------------------------------------------


def run_stage(
    params: Params,
    dataset: str,
    *,
    root: Path | str = ".",
    out: Path | str | None = None,
    n_workers: int = 1,
) -> dict[str, Any]:
    """The ``sweep`` stage for one dataset: ``models/<dataset>/best_config.json`` and
    ``reports/<dataset>/``: ``sweep.json``/``sweep.csv`` (plot data), ``sweep.png`` and
    ``pruning.json``. ``sweep.n_trials: 0`` writes the configured model as is, and still every
    declared output (empty plot data, a figure and a pruning summary saying the sweep was
    skipped), so ``dvc repro`` finds them all."""
    root = Path(root)
    params = params.for_dataset(dataset)
    out = Path(out) if out else root / "models" / dataset / "best_config.json"
    reports = root / "reports" / dataset
    data_dir = root / "data" / "prepared" / dataset
    if params.sweep.n_trials == 0:
        best = _skip_sweep(params, PreparedDataset.load(data_dir), reports)
    else:
        result = run_sweep(params, data_dir, reports, n_workers)
        best = result.best_config()
    best["family"] = dataset_family(params, PreparedDataset.load(data_dir))
    atomic_write_json(out, best)
    return best


def _skip_sweep(params: Params, data: PreparedDataset, reports: Path) -> dict[str, Any]:
    """``sweep.n_trials: 0``: the configured model as the best config, and the stage's report
    files (``sweep.json``, ``sweep.csv``, ``sweep.png``, ``pruning.json``) saying so."""
    from vigil.models.spec import build_model, model_spec

    family = dataset_family(params, data)
    configured = params.model.family_config(family)
    model = build_model(model_spec(family, data.channels, data.size, configured, prep=data.prep))
    encoding = encoding_shape(model, *data.size)
    write_plot_data([], reports / "sweep.json", reports / "sweep.csv")
    skipped_figure(reports / "sweep.png", configured.model_dump(mode="json"), encoding)
    atomic_write_json(
        reports / "pruning.json",
        {
            **pruning_summary([], params.sweep.epochs_per_trial),
            "sweep_ran": False,
            "reason": "sweep.n_trials is 0: the configured model is used as is",
        },
    )
    return {
        "model": configured.model_dump(mode="json"),
        "trial": None,
        "objective": None,
        "study": None,
        "feasible": None,
    }
