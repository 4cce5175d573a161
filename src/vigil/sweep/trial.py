"""One sweep trial: ``Objective`` trains a short model with the real ``fit`` and scores it on the
tune split (``vigil.sweep.objective``); errors, encoding size and the MLflow child run id become
trial attributes (the figure's and ``sweep.json``'s data), the tune metrics go to the run."""

from __future__ import annotations

import math
import os
import shutil
import socket
from pathlib import Path

import optuna

from vigil.config import Params
from vigil.data.prepared import PreparedDataset
from vigil.tracking import connect
from vigil.sweep.identity import dataset_family
from vigil.sweep.objective import tune_errors
from vigil.sweep.pruning import OptunaPruning
from vigil.sweep.space import model_config, suggest


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
            enc = encoding_shape(module.model, *self.data.size)
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
        cfg = model_config(
            self.params.for_dataset(self.data.name).model, self.family, values, self.data.size
        )
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
        enc = encoding_shape(model, *self.data.size)
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


def encoding_shape(model, height: int, width: int) -> tuple[int, int, int]:
    """(C, H', W'): the network's encoding (every family declares it)."""
    return tuple(int(d) for d in model.encoding_shape(height, width))

