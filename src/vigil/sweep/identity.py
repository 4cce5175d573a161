"""Which study a sweep runs, and how its trials are drawn, so the same params give the same
trials and the same choice on any clone.

- Identity: ``study_name`` hashes everything that shapes a trial (the search space, the sweep
  params but ``n_trials``/``storage``, the model family and its params, the train params, the
  prepared data's hash). A changed one starts a new study.
- ``n_trials`` is not part of it: trial k of a study is the same whatever ``n_trials`` says
  (see below), and the sweep chooses among the first ``n_trials`` trials (``first_trials``).
  Raising ``n_trials`` runs only the missing trials; lowering it reuses the first ones.
- Trial k is drawn by a sampler seeded with (``sweep.seed``, k) from the history of trials
  0..k-1 (``TrialSeededSampler``), so an interrupted, resumed or extended study draws what one
  uninterrupted run would. One worker (the DVC stage's default) makes this exact; several
  workers draw from whatever history each sees, so their studies are not reproducible.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from vigil.config import Params
from vigil.data.prepared import PreparedDataset
from vigil.sweep.space import SearchSpace, grid

#: The study's objective, named in the storage (Optuna dashboard, ``study.metric_names``).
METRIC_NAME = "anomaly_to_total_error_ratio"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class SweepError(RuntimeError):
    """The sweep cannot produce a best configuration."""


def dataset_family(params: Params, data: PreparedDataset) -> str:
    """The model family the dataset's (per-dataset) params choose for its modality."""
    return params.for_dataset(data.name).model.family_name(data.modality)


def study_name(params: Params, space: SearchSpace, data: PreparedDataset) -> str:
    """``vigil-<dataset>-<hash>``: the hash of everything that shapes a trial, not n_trials."""
    family = dataset_family(params, data)
    knobs = space.knobs(family)
    blob = json.dumps(
        {
            "space": {k: v.model_dump() for k, v in knobs.items()},
            "sweep": params.sweep.model_dump(mode="json", exclude={"n_trials", "storage", "space"}),
            "family": family,
            "model": params.model.model_dump(mode="json"),
            "train": params.train.model_dump(mode="json"),
            "data": data.content_hash,
        },
        sort_keys=True,
    )
    return f"vigil-{data.name}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial ``number`` of a study swept with ``sweep.seed = seed``."""
    digest = hashlib.sha256(f"vigil-sweep:{seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """Delegates to a fresh sampler per trial, built by ``make(seed)`` with
    ``trial_seed(base_seed, trial.number)``: what trial k draws depends only on the seed, k and
    the trials before it, not on which process or invocation runs it."""

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], base_seed: int):
        self._make = make
        self._base_seed = base_seed
        self._inner = make(trial_seed(base_seed, 0))

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner = self._make(trial_seed(self._base_seed, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:  # the seed is the trial's: nothing to reseed
        return None


def make_sampler(params: Params, knobs: dict) -> optuna.samplers.BaseSampler:
    """``sweep.sampler`` (grid, random or TPE), seeded per trial (``TrialSeededSampler``)."""
    kind = params.sweep.sampler
    # min(4, n_trials) random startup trials: the same trials k < n_trials for any n_trials
    startup = min(4, params.sweep.n_trials)

    def make(seed: int) -> optuna.samplers.BaseSampler:
        if kind == "grid":
            return optuna.samplers.GridSampler(grid(knobs), seed=seed)
        if kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)

    return TrialSeededSampler(make, params.sweep.seed)


def make_pruner(params: Params) -> optuna.pruners.BasePruner:
    """Median pruning after 2 finished trials (``sweep.pruning``), else none."""
    if not params.sweep.pruning:
        return optuna.pruners.NopPruner()
    # the first epoch's ratio is noisy: with a budget of 3+ epochs, judge from the second on
    warmup = 1 if params.sweep.epochs_per_trial >= 3 else 0
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=warmup)


def open_study(
    params: Params, storage: optuna.storages.BaseStorage, name: str, knobs: dict
) -> optuna.Study:
    """Create or load study ``name`` (maximize the named ratio) with the sweep's sampler."""
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize",
        load_if_exists=True,
        sampler=make_sampler(params, knobs),
        pruner=make_pruner(params),
    )
    if study.metric_names != [METRIC_NAME]:
        with warnings.catch_warnings():  # experimental since Optuna 3.2, still in 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([METRIC_NAME])
    return study


def count_trials(study: optuna.Study, states=(*FINISHED, TrialState.RUNNING)) -> int:
    """How many trials of ``study`` are in ``states`` (by default: all but waiting)."""
    return len(study.get_trials(deepcopy=False, states=states))


def first_trials(study: optuna.Study, n_trials: int) -> list[FrozenTrial]:
    """The study's first ``n_trials`` trials by number: the ones this sweep chooses from."""
    return sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)[:n_trials]
