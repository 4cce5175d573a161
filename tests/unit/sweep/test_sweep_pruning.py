"""OptunaPruning: prunes from intermediate values, but never a trial at its last epoch."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest

from vigil.sweep.pruning import OptunaPruning


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def _trainer(epoch: int, max_epochs: int, should_stop: bool = False) -> SimpleNamespace:
    return SimpleNamespace(
        sanity_checking=False, current_epoch=epoch, max_epochs=max_epochs, should_stop=should_stop
    )


def _callback() -> tuple[optuna.Study, OptunaPruning]:
    study = optuna.create_study(direction="maximize", pruner=AlwaysPrune())
    trial = study.ask()
    return study, OptunaPruning(trial, lambda module: 1.5)


def test_prunes_before_the_last_epoch():
    _, callback = _callback()
    with pytest.raises(optuna.TrialPruned, match="pruned at epoch 1"):
        callback.on_validation_end(_trainer(1, max_epochs=3), None)
    assert callback.epochs == 2


@pytest.mark.parametrize(
    "trainer", [_trainer(2, max_epochs=3), _trainer(0, max_epochs=1), _trainer(1, 5, True)]
)
def test_never_prunes_at_the_last_epoch(trainer):
    study, callback = _callback()
    callback.on_validation_end(trainer, None)  # the pruner says prune: ignored at the end
    (trial,) = study.get_trials(deepcopy=False)
    assert trial.intermediate_values == {trainer.current_epoch: 1.5}  # still reported
    study.tell(trial.number, 1.5)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE
