"""Our own Optuna pruning callback on ``pytorch_lightning`` (optuna-integration's imports the
``lightning`` namespace, whose callbacks fail in a ``pytorch_lightning`` Trainer)."""

from __future__ import annotations

import time
from collections.abc import Callable

import optuna
import pytorch_lightning as pl


class OptunaPruning(pl.Callback):
    """After each validation: ``trial.report(metric(module), epoch)``; prune when told.

    ``metric`` maps the LightningModule to the value the study optimizes (here the tune-split
    objective, so the pruner compares like with like). ``epochs`` and ``seconds`` record how far
    the trial got, for the pruning summary.

    The last epoch of the budget is reported but never pruned: the trial has already paid for
    its full training, and pruning it then would throw a finished result away.
    """

    def __init__(self, trial: optuna.Trial, metric: Callable[[pl.LightningModule], float]) -> None:
        self.trial = trial
        self.metric = metric
        self.epochs = 0
        self.started = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        self.epochs = epoch + 1
        self.trial.report(float(self.metric(pl_module)), step=epoch)
        if _is_last_epoch(trainer, epoch):
            return
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"trial {self.trial.number} pruned at epoch {epoch}")

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


def _is_last_epoch(trainer: pl.Trainer, epoch: int) -> bool:
    """True when ``epoch`` (0-based) is the last the trainer will run (budget or early stop)."""
    max_epochs = trainer.max_epochs
    return bool(trainer.should_stop) or (max_epochs is not None and 0 <= max_epochs <= epoch + 1)
