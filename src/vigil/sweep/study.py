"""``run_sweep``: an Optuna study over the encoding size, one MLflow child run per trial.

- Storage: ``sweep.storage``, else ``VIGIL_OPTUNA_STORAGE``, else SQLite in the project root
  (``vigil.config.optuna_storage``). ``journal:<path>`` selects a JournalStorage file (shared
  folder, several workers without a server). RDB storages get a heartbeat, so a killed worker's
  RUNNING trial is marked FAIL by the next worker and the study goes on.
- Study name: dataset + a hash of everything that shapes a trial (space, sweep/model/train
  params, data hash), so the same config resumes its study and a changed one starts afresh.
- ``n_trials`` counts every trial of the study; workers (processes here, or other invocations
  elsewhere) stop once the study holds that many.
- MLflow: the parent run id is a study user attribute, so every worker nests under one parent.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import multiprocessing
import os
import shutil
import socket
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from vigil.atomic import atomic_write_json
from vigil.config import Params, optuna_storage
from vigil.data.prepared import PreparedDataset
from vigil.registry.tracking import connect, ensure_experiment
from vigil.sweep.objective import check_tune_split, tune_errors
from vigil.sweep.plots import skipped_figure, sweep_figure, write_plot_data
from vigil.sweep.pruning import OptunaPruning
from vigil.sweep.space import SearchSpace, grid, grid_size, load_space, model_config, suggest

log = logging.getLogger(__name__)

PARENT_ATTR = "mlflow_parent_run_id"
HEARTBEAT_S = 10
GRACE_S = 30
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class StorageError(RuntimeError):
    """The Optuna storage URL cannot be reached or opened; the message names the URL."""


class SweepError(RuntimeError):
    """The sweep cannot produce a best configuration."""


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


# --- storage ---------------------------------------------------------------------------------


def _redact(url: str) -> str:
    """The URL without a password (``user:***@host``)."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url
    return url


def _driver_url(url: str) -> str:
    """``postgresql://`` with the installed driver: SQLAlchemy 2.1 defaults to psycopg 3, the
    environment ships psycopg2."""
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def open_storage(
    url: str, heartbeat_s: int = HEARTBEAT_S, grace_s: int = GRACE_S
) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url`` with a heartbeat (RDB) or a journal file; fails fast."""
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("postgresql"):
        engine_kwargs = {"connect_args": {"connect_timeout": 5}, "pool_pre_ping": True}
    elif url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                _driver_url(url),
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_s,
                grace_period=grace_s,
            )
    except Exception as error:  # noqa: BLE001 - any failure here means "cannot use this storage"
        raise StorageError(
            f"Optuna storage {_redact(url)} cannot be reached or opened: "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''} "
            "(set sweep.storage or VIGIL_OPTUNA_STORAGE)"
        ) from None


# --- study -----------------------------------------------------------------------------------


def study_name(params: Params, space: SearchSpace, data: PreparedDataset) -> str:
    knobs = space.knobs(dataset_family(params, data))
    blob = json.dumps(
        {
            "space": {k: v.model_dump() for k, v in knobs.items()},
            "sweep": params.sweep.model_dump(mode="json", exclude={"n_trials", "storage", "space"}),
            "model": params.model.model_dump(mode="json"),
            "train": params.train.model_dump(mode="json"),
            "data": data.content_hash,
        },
        sort_keys=True,
    )
    return f"vigil-{data.name}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def make_sampler(params: Params, knobs: dict, worker: int = 0) -> optuna.samplers.BaseSampler:
    seed = params.sweep.seed + worker  # workers must not draw the same points
    if params.sweep.sampler == "grid":
        return optuna.samplers.GridSampler(grid(knobs), seed=seed)
    if params.sweep.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(4, params.sweep.n_trials))


def make_pruner(params: Params) -> optuna.pruners.BasePruner:
    if not params.sweep.pruning:
        return optuna.pruners.NopPruner()
    # the first epoch's ratio is noisy: with a budget of 3+ epochs, judge from the second on
    warmup = 1 if params.sweep.epochs_per_trial >= 3 else 0
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=warmup)


def open_study(
    params: Params, storage: optuna.storages.BaseStorage, name: str, knobs: dict, worker: int = 0
) -> optuna.Study:
    return optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize",
        load_if_exists=True,
        sampler=make_sampler(params, knobs, worker),
        pruner=make_pruner(params),
    )


def _count(study: optuna.Study, states=(*FINISHED, TrialState.RUNNING)) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


# --- one trial -------------------------------------------------------------------------------


def dataset_family(params: Params, data: PreparedDataset) -> str:
    """The model family the dataset's (per-dataset) params choose for its modality."""
    return params.for_dataset(data.name).model.family_name(data.modality)


class Objective:
    """Train one short model (real ``fit``) and score it on the tune split."""

    def __init__(
        self, params: Params, dataset_dir: Path, work_dir: Path, knobs: dict, parent_run_id: str
    ) -> None:
        self.params = params
        self.dataset_dir = Path(dataset_dir)
        self.work_dir = Path(work_dir)
        self.knobs = knobs
        self.parent_run_id = parent_run_id
        self.data = PreparedDataset.load(dataset_dir)
        self.family = dataset_family(params, self.data)

    def _scorer(self, trial: optuna.Trial):
        """The pruning metric: the tune objective of the model in training; its errors are kept
        as trial attributes, so a pruned trial still appears (as pruned) in the figure."""

        def score(module) -> float:
            errors = tune_errors(
                module.model, self.data, self.family, self.params.sweep.max_normal_error
            )
            enc = _encoding_shape(module.model, *self.data.size)
            attrs = {
                **errors.as_dict(),
                "encoding_shape": "x".join(map(str, enc)),
                "encoding_size": math.prod(enc),
            }
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
            return errors.objective

        return score

    def __call__(self, trial: optuna.Trial) -> float:
        from vigil.models.spec import load_trained
        from vigil.training import fit

        values = suggest(trial, self.knobs)
        cfg = model_config(self.params.for_dataset(self.data.name).model, self.family, values)
        trial.set_user_attr("model", cfg.model_dump(mode="json"))
        trial.set_user_attr("worker", worker_id())
        pruning = OptunaPruning(trial, self._scorer(trial))
        epochs = self.params.sweep.epochs_per_trial
        trial.set_user_attr("epoch_budget", epochs)
        out = self.work_dir / f"trial-{trial.number:04d}"
        callbacks = [pruning] if self.params.sweep.pruning else []
        try:
            result = fit(
                self.params,
                self.dataset_dir,
                out,
                model_cfg=cfg,
                max_epochs=epochs,
                parent_run_id=self.parent_run_id,
                callbacks=callbacks,
                run_name=f"trial-{trial.number}",
                log_model_images=False,
                resume=False,
            )
        except optuna.TrialPruned:
            trial.set_user_attr("epochs", pruning.epochs)
            trial.set_user_attr("wall_time_s", pruning.seconds)
            raise
        finally:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
        model, _ = load_trained(out)
        errors = tune_errors(model, self.data, self.family, self.params.sweep.max_normal_error)
        enc = _encoding_shape(model, *self.data.size)
        attrs = {
            **errors.as_dict(),
            "run_id": result.run_id,
            "epochs": result.epochs,
            "wall_time_s": result.wall_time_s,
            "encoding_shape": "x".join(map(str, enc)),
            "encoding_size": math.prod(enc),
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        client = connect()
        for key in ("total_error", "anomaly_error", "normal_error", "ratio", "objective"):
            client.log_metric(result.run_id, f"tune_{key}", float(attrs[key]))
        client.set_tag(result.run_id, "vigil.trial", str(trial.number))
        client.set_tag(result.run_id, "vigil.feasible", str(errors.feasible).lower())
        return errors.objective


def worker_id() -> str:
    """``host:pid`` of the process running a trial (which worker, which machine)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _encoding_shape(model, height: int, width: int) -> tuple[int, int, int]:
    """(C, H', W'): the network's encoding (every family declares it)."""
    return tuple(int(d) for d in model.encoding_shape(height, width))


# --- workers ---------------------------------------------------------------------------------


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
    study = open_study(params, open_storage(url), name, knobs, worker)
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
    from vigil.registry.tracking import TrackingError

    try:
        _worker(*args)
    except (StorageError, TrackingError) as error:
        log.error("%s: %s", multiprocessing.current_process().name, error)
        raise SystemExit(2) from None


def _parent_run(study: optuna.Study, data: PreparedDataset, params: Params) -> str:
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
    from vigil.registry.tracking import flatten

    flat = flatten({"sweep": params.sweep.model_dump(mode="json")})
    for key, value in flat.items():
        client.log_param(run.info.run_id, key, str(value))
    study.set_user_attr(PARENT_ATTR, run.info.run_id)
    return run.info.run_id


def quotas(remaining: int, n_workers: int) -> list[int]:
    """``remaining`` trials split as evenly as possible over ``n_workers``."""
    return [remaining // n_workers + (w < remaining % n_workers) for w in range(n_workers)]


def _run_workers(
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


# --- results ---------------------------------------------------------------------------------


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        duration = t.duration.total_seconds() if t.duration else None
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "params": dict(t.params),
                "value": t.value,
                "duration_s": duration,
                "epochs_run": a.get("epochs", len(t.intermediate_values)),
                **{
                    k: a.get(k)
                    for k in (
                        "encoding_size",
                        "encoding_shape",
                        "total_error",
                        "anomaly_error",
                        "normal_error",
                        "ratio",
                        "feasible",
                        "objective",
                        "run_id",
                        "worker",
                        "epoch_budget",
                        "model",
                    )
                },
            }
        )
    return rows


def pruning_summary(rows: list[dict[str, Any]], epochs_per_trial: int) -> dict[str, Any]:
    """Epochs and (estimated) seconds that pruning saved: for each pruned trial, the unrun
    epochs of its budget times its measured seconds per epoch."""
    pruned = [r for r in rows if r["state"] == "PRUNED"]
    run_epochs = sum(max(1, r["epochs_run"] or 1) for r in pruned)
    saved_epochs, saved_s, spent_s = 0, 0.0, 0.0
    for r in pruned:
        ran = max(1, r["epochs_run"] or 1)
        seconds = r["duration_s"] or 0.0
        spent_s += seconds
        saved_epochs += max(0, epochs_per_trial - ran)
        saved_s += max(0, epochs_per_trial - ran) * seconds / ran
    total_s = sum(r["duration_s"] or 0.0 for r in rows)
    return {
        "sweep_ran": True,
        "n_trials": len(rows),
        "n_pruned": len(pruned),
        "pruned_epochs_run": run_epochs,
        "epochs_saved": saved_epochs,
        "time_saved_s_est": round(saved_s, 2),
        "pruned_time_s": round(spent_s, 2),
        "sweep_trial_time_s": round(total_s, 2),
        "fraction_saved_est": round(saved_s / (total_s + saved_s), 4) if saved_s else 0.0,
    }


def _best(study: optuna.Study) -> tuple[optuna.trial.FrozenTrial, bool]:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        states = {}
        for t in study.get_trials(deepcopy=False):
            states[t.state.name] = states.get(t.state.name, 0) + 1
        raise SweepError(
            f"study {study.study_name} has no completed trial (states: {states}); "
            "raise sweep.n_trials or turn sweep.pruning off"
        )
    feasible = [t for t in done if t.user_attrs.get("feasible")]
    if feasible:
        return max(feasible, key=lambda t: t.value), True
    log.warning("no trial met sweep.max_normal_error; choosing the lowest normal error")
    return min(done, key=lambda t: t.user_attrs.get("normal_error", math.inf)), False


def _report_parent(
    parent: str,
    best: optuna.trial.FrozenTrial,
    feasible: bool,
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    png: Path,
    plot_json: Path,
) -> None:
    client = connect()
    for row in rows:
        if row["run_id"]:
            client.set_tag(
                row["run_id"], "vigil.best_trial", str(row["trial"] == best.number).lower()
            )
    client.set_tag(parent, "vigil.best_trial", str(best.number))
    client.set_tag(parent, "vigil.best_run_id", str(best.user_attrs.get("run_id")))
    client.set_tag(parent, "vigil.best_feasible", str(feasible).lower())
    for key in ("ratio", "total_error", "anomaly_error", "normal_error", "encoding_size"):
        if best.user_attrs.get(key) is not None:
            client.log_metric(parent, f"best_{key}", float(best.user_attrs[key]))
    for key, value in summary.items():
        client.log_metric(parent, f"pruning_{key}", float(value))
    client.log_artifact(parent, str(png), "sweep")
    client.log_artifact(parent, str(plot_json), "sweep")
    client.set_terminated(parent, "FINISHED")


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
    """Run (or resume) the study; write ``sweep.json``/``sweep.csv``/``sweep.png`` and
    ``pruning.json`` into ``out_dir``; return the best configuration.

    Trials train into ``work_dir`` (a temp folder by default, removed afterwards).
    Raises SearchSpaceError, NoAnomaliesError, StorageError (all before any training).
    """
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    space = load_space(params.sweep.space)
    data = PreparedDataset.load(dataset_dir)
    knobs = space.knobs(dataset_family(params, data))
    check_tune_split(data)
    if params.sweep.sampler == "grid" and grid_size(knobs) < params.sweep.n_trials:
        log.warning(
            "grid has %d points < sweep.n_trials=%d", grid_size(knobs), params.sweep.n_trials
        )
    url = storage or optuna_storage(params.sweep.storage)
    name = name or study_name(params, space, data)
    study = open_study(params, open_storage(url), name, knobs)
    parent = _parent_run(study, data, params)
    temp = None if work_dir else tempfile.mkdtemp(prefix="vigil-sweep-")
    try:
        remaining = max(0, params.sweep.n_trials - _count(study))
        _run_workers(
            params,
            dataset_dir,
            Path(work_dir or temp),
            url,
            name,
            knobs,
            n_workers,
            parent,
            remaining,
        )
    finally:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    best, feasible = _best(study)
    rows = trial_rows(study)
    summary = pruning_summary(rows, params.sweep.epochs_per_trial)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_plot_data(rows, out_dir / "sweep.json", out_dir / "sweep.csv")
    atomic_write_json(out_dir / "pruning.json", summary)
    png = sweep_figure(rows, out_dir / "sweep.png", title=f"{data.name}: {name}")
    _report_parent(parent, best, feasible, rows, summary, png, out_dir / "sweep.json")
    return SweepResult(
        model=best.user_attrs["model"],
        trial=best.number,
        objective=best.value,
        study=name,
        storage=_redact(url),
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
    encoding = _encoding_shape(model, *data.size)
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
