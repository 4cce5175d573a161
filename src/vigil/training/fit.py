"""``fit()``: train one model on a prepared dataset, log it to MLflow, write the trained files.

The sweep is a loop over ``fit()`` (it passes ``model_cfg``, ``max_epochs``, ``parent_run_id``
and a pruning callback); the train stage calls it once. Checkpoints go to
``<out_dir>/checkpoints``. An interrupted run resumes from ``last.ckpt`` when a later call has
the same data, model and training settings; a run that completed is never resumed (its state
file says so), and neither is a checkpoint that trained more epochs than the new ``max_epochs``:
both start fresh, so the result is what a fresh training with these settings gives.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint, Timer
from torch.utils.data import DataLoader

from pydantic import BaseModel

from vigil.config import Params
from vigil.data.prepared import PreparedDataset
from vigil.models.registry import get_family
from vigil.models.spec import build_model, model_spec, save_trained
from vigil.tracking import connect, ensure_experiment
from vigil.training import tracking
from vigil.training.resume import fingerprint, resume_checkpoint, write_state
from vigil import names

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"


@dataclass(frozen=True)
class FitResult:
    objective: float  # best val_loss
    run_id: str
    weights: Path  # <out_dir>/weights.safetensors (best epoch)
    spec: dict[str, Any]
    epochs: int  # epochs trained in total (including resumed ones)
    wall_time_s: float
    checkpoint: Path | None = None  # best Lightning checkpoint


def experiment_name(dataset: str) -> str:
    return names.experiment_name(dataset)


def dataset_model_config(
    params: Params, dataset: str, modality: str, override: BaseModel | dict | None = None
) -> tuple[str, BaseModel]:
    """(family name, typed knobs) of ``dataset``: its family's section of the (per-dataset)
    model params, or ``override`` (the sweep's trial / best config) for that family."""
    model = params.for_dataset(dataset).model
    family = model.family_name(modality)
    if override is None:
        return family, model.family_config(family)
    config_cls = get_family(family).config
    if isinstance(override, dict):
        return family, config_cls.model_validate(override)
    if not isinstance(override, config_cls):
        raise TypeError(f"family {family!r} needs a {config_cls.__name__}, got "
                        f"{type(override).__name__}")
    return family, override


class _Throughput(pl.Callback):
    """Counts training samples (frames) and the time spent in training batches."""

    def __init__(self, frames_per_sample: int) -> None:
        self.frames_per_sample = frames_per_sample
        self.frames = 0
        self.seconds = 0.0
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.seconds += time.perf_counter() - self._t0
        self.frames += batch.shape[0] * self.frames_per_sample

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


class _EpochLine(pl.Callback):
    """One log line per epoch (losses, time, budget): the progress report when stderr is not
    a terminal (stage logs, CI), where Lightning's progress bar would be noise."""

    def __init__(self, max_minutes: float | None) -> None:
        self.max_minutes = max_minutes
        self._started = time.monotonic()

    def on_train_start(self, trainer, module) -> None:
        self._started = time.monotonic()

    def on_train_epoch_end(self, trainer, module) -> None:
        metrics = trainer.callback_metrics
        losses = ", ".join(f"{k} {float(metrics[k]):.5g}" for k in ("train_loss", "val_loss")
                           if k in metrics)
        minutes = (time.monotonic() - self._started) / 60
        budget = f" of {self.max_minutes:g}" if self.max_minutes else ""
        log.info("epoch %d/%d: %s (%.1f%s min)", trainer.current_epoch + 1, trainer.max_epochs,
                 losses, minutes, budget)


def fit(
    params: Params,
    dataset_dir: Path | str,
    out_dir: Path | str,
    *,
    model_cfg: BaseModel | dict | None = None,
    max_epochs: int | None = None,
    parent_run_id: str | None = None,
    callbacks: Sequence[pl.Callback] = (),
    run_name: str | None = None,
    log_model_images: bool = True,
    resume: bool = True,
) -> FitResult:
    """Train on ``dataset_dir``'s train split, early-stop on val, write ``out_dir``'s
    ``model.json`` + ``weights.safetensors`` (best epoch), and log one MLflow run in
    experiment ``vigil-<dataset>`` (nested under ``parent_run_id`` when given).

    Raises ``TrackingError`` (unreachable store, before any work), ``ImageTooSmallError``,
    ``NonFiniteLossError`` (run marked FAILED, no weights written).
    """
    started = time.perf_counter()
    client = connect()  # fail fast, with the URI, before any work
    data = PreparedDataset.load(dataset_dir)
    modality = data.modality
    prep = data.prep  # what the frames went through: the manifest is the one source
    params = params.for_dataset(data.name) if data.name in params.data.datasets else params
    family, cfg = dataset_model_config(params, data.name, modality, model_cfg)
    spec = model_spec(family, data.channels, data.size, cfg, prep=prep)
    pl.seed_everything(params.train.seed, workers=True, verbose=False)
    model = build_model(spec)  # raises ImageTooSmallError before a run exists
    plan = get_family(family).plan(model, data, prep, params.train)

    out_dir = Path(out_dir)
    ckpt_dir = out_dir / CHECKPOINT_DIR
    run_fingerprint = fingerprint(spec, params, data)
    max_epochs = max_epochs or params.train.max_epochs
    ckpt_path, resumed_from = resume_checkpoint(ckpt_dir, run_fingerprint, resume, max_epochs)

    experiment_id = ensure_experiment(experiment_name(data.name))
    tags = {
        names.GIT_COMMIT: tracking.git_commit(Path(__file__).parent),
        names.DATA_HASH: str(data.content_hash),
        names.DATASET: data.name,
        names.MODALITY: modality,
        names.STAGE: "sweep-trial" if parent_run_id else "train",
    }
    if resumed_from:
        tags[names.RESUMED_FROM] = resumed_from
    run_id = tracking.start_run(
        client, experiment_id, run_name=run_name, parent_run_id=parent_run_id, tags=tags
    )
    error: BaseException | None = None
    try:
        write_state(ckpt_dir, run_fingerprint, run_id, completed=False)
        result = _train_and_save(
            params, data, spec, model, plan, out_dir, ckpt_dir, ckpt_path,
            client, run_id, max_epochs, callbacks, log_model_images, started,
        )
        write_state(ckpt_dir, run_fingerprint, run_id, completed=True)
        return result
    except BaseException as exc:
        error = exc
        raise
    finally:
        tracking.finish_run(client, run_id, error)


def _train_and_save(
    params: Params,
    data: PreparedDataset,
    spec: dict,
    model: torch.nn.Module,
    plan,
    out_dir: Path,
    ckpt_dir: Path,
    ckpt_path: Path | None,
    client,
    run_id: str,
    max_epochs: int,
    callbacks: Sequence[pl.Callback],
    log_model_images: bool,
    started: float,
) -> FitResult:
    train = params.train
    prep = data.prep
    flat = tracking.run_params(params, data.name, spec)
    tracking.log_params(client, run_id, flat)
    tracking.log_dataset(client, run_id, data)
    enc = model.encoding_shape(*data.size)
    n_params = sum(p.numel() for p in model.parameters())
    client.log_metric(run_id, "n_params", n_params)
    client.log_metric(run_id, "encoding_size", int(enc[0] * enc[1] * enc[2]))
    client.set_tag(run_id, names.ENCODING_SHAPE, "x".join(str(d) for d in enc))

    module = plan.module
    clip_len = plan.frames_per_sample if data.modality == "video" else None
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir, filename="best-{epoch:03d}", monitor="val_loss", mode="min",
        save_top_k=1, save_last=True,
    )
    throughput = _Throughput(plan.frames_per_sample)
    all_callbacks: list[pl.Callback] = [
        checkpoint,
        EarlyStopping(monitor="val_loss", mode="min", patience=train.patience),
        tracking.EpochMetricsCallback(client, run_id),
        throughput,
    ]
    if log_model_images:
        examples = tracking.pick_examples(data, prep, clip_len)
        if examples is not None:
            all_callbacks.append(
                tracking.ExampleImagesCallback(
                    client, run_id, examples, prep.normalize, train.log_images_every_n_epochs
                )
            )
    interactive = sys.stderr.isatty()
    if not interactive:
        all_callbacks.append(_EpochLine(train.max_minutes))
    if train.max_minutes:  # checked at epoch ends, so the last epoch is validated too
        all_callbacks.append(Timer(timedelta(minutes=train.max_minutes), interval="epoch"))
    all_callbacks.extend(callbacks)
    generator = torch.Generator().manual_seed(train.seed)
    train_loader = DataLoader(
        plan.train_set, batch_size=train.batch_size, shuffle=True, num_workers=train.num_workers,
        generator=generator, drop_last=False,
    )
    val_loader = DataLoader(plan.val_set, batch_size=train.batch_size, num_workers=train.num_workers)
    _quiet_lightning_tips()
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        accelerator=train.accelerator,
        devices=1,
        logger=False,
        callbacks=all_callbacks,
        default_root_dir=str(out_dir),
        num_sanity_val_steps=0,
        enable_model_summary=False,
        enable_progress_bar=interactive,
        log_every_n_steps=1,
    )
    with warnings.catch_warnings():
        # resuming reuses the checkpoint folder on purpose
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
        # Lightning 2.6 builds a LeafSpec per loader, deprecated in torch 2.13: one line a trial
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`")
        trainer.fit(module, train_loader, val_loader, ckpt_path=str(ckpt_path) if ckpt_path else None)
    if checkpoint.best_model_score is None or not checkpoint.best_model_path:
        raise RuntimeError(f"training on {data.root} produced no validated checkpoint")
    best = Path(checkpoint.best_model_path)
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict(
        {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    )
    model = model.cpu().eval()
    if plan.finish is not None:
        plan.finish(model)
    weights = save_trained(out_dir, model, spec)

    wall = time.perf_counter() - started
    objective = float(checkpoint.best_model_score)
    epochs = int(trainer.current_epoch)
    for name, value in {
        "best_val_loss": objective,
        "wall_time_s": wall,
        "train_images_per_s": throughput.frames_per_s,
        "epochs": epochs,
    }.items():
        client.log_metric(run_id, name, value)
    return FitResult(objective, run_id, weights, spec, epochs, wall, best)


class _DropTips(logging.Filter):
    """Drops Lightning's advertising lines ("💡 Tip: ... litlogger"): noise in every stage log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def _quiet_lightning_tips() -> None:
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(f, _DropTips) for f in rank_zero.filters):
        rank_zero.addFilter(_DropTips())
