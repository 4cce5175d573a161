"""MLflow logging for one training run: params, tags, dataset input, curves and example images.

Everything goes through an ``MlflowClient`` with an explicit run id (no global active run), so
nested sweep trials and threads cannot log into each other's runs.
"""

from __future__ import annotations

import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, RunStatus

from vigil.config import ImagePrep, Params
from vigil.data.prepared import PreparedDataset
from vigil.data.preprocess import to_tensor
from vigil.tracking import flatten, iter_chunks
from vigil.data.torch_datasets import clip_windows
from vigil import names

PARENT_TAG = names.PARENT_RUN


def git_commit(root: Path | str | None = None) -> str:
    """HEAD's commit hash, or ``unknown`` outside a git checkout (tolerates a missing git)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def run_params(params: Params, dataset: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The dataset's params (overrides merged) flattened with dotted names, with what the
    model spec fixed: ``model.family`` and ``model.<family>.*`` (the sweep's or best-config
    knobs) and ``prepare.<modality>.*`` (the prepared manifest's preprocessing); plus
    ``data.dataset``."""
    raw = params.model_dump(mode="json", exclude={"data"})
    raw["model"] = {"family": spec["family"], spec["family"]: spec["model"]}
    raw["prepare"] = {spec["modality"]: spec["prep"], "split": raw["prepare"]["split"]}
    flat = flatten(raw)
    flat["data.dataset"] = dataset
    return {k: ("None" if v is None else v) for k, v in flat.items()}


def start_run(
    client: MlflowClient,
    experiment_id: str,
    *,
    run_name: str | None,
    parent_run_id: str | None,
    tags: dict[str, str],
) -> str:
    """Create a RUNNING run (nested under ``parent_run_id`` when given) and return its id."""
    tags = dict(tags)
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    return client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id


def log_params(client: MlflowClient, run_id: str, flat: dict[str, Any]) -> None:
    from mlflow.entities import Param

    for chunk in iter_chunks(flat):
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in chunk.items()])


DATASET_LOG_ATTEMPTS = 4  # concurrent sweep workers: see log_dataset


def log_dataset(client: MlflowClient, run_id: str, data: PreparedDataset) -> None:
    """The prepared dataset as an ``mlflow.data`` input; its digest is the manifest hash."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(str(Path(data.root).resolve()))
    digest = str(data.content_hash).split(":")[-1][:32]  # MLflow caps digests at 36 chars
    meta = MetaDataset(source=source, name=f"prepared-{data.name}", digest=digest)
    entity = meta._to_mlflow_entity()
    tags = [InputTag("mlflow.data.context", "training")]
    # Sweep workers in several processes log the same dataset at the same moment; the store
    # checks for an existing row and then inserts, so one of them can lose the race with a
    # unique-constraint error. On a retry the row exists and is linked instead.
    for attempt in range(DATASET_LOG_ATTEMPTS):
        try:
            client.log_inputs(run_id, datasets=[DatasetInput(entity, tags=tags)])
            return
        except MlflowException as error:
            if attempt + 1 == DATASET_LOG_ATTEMPTS or not _lost_insert_race(error):
                raise
            time.sleep(0.05 * (attempt + 1))



def _lost_insert_race(error: Exception) -> bool:
    """True for SQLite's and PostgreSQL's unique-constraint violations."""
    text = str(error)
    return "UNIQUE constraint failed" in text or "duplicate key value" in text


def finish_run(client: MlflowClient, run_id: str, error: BaseException | None) -> None:
    """FINISHED, or FAILED with the error as a tag (KILLED for a pruned sweep trial)."""
    if error is None:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
        return
    pruned = type(error).__name__ == "TrialPruned"
    status = RunStatus.KILLED if pruned else RunStatus.FAILED
    client.set_tag(run_id, names.ERROR, f"{type(error).__name__}: {error}"[:5000])
    client.set_terminated(run_id, RunStatus.to_string(status))


class EpochMetricsCallback(pl.Callback):
    """Logs ``train_loss`` and ``val_loss`` (and any other epoch metric) with step = epoch."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(name, float(value), now, trainer.current_epoch)
            for name, value in trainer.callback_metrics.items()
            if value.numel() == 1
        ]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)


# --- example images ------------------------------------------------------------------------


@dataclass(frozen=True)
class Examples:
    """Fixed inputs shown every few epochs: images (K, C, H, W) or clips (K, T, C, H, W)."""

    inputs: torch.Tensor
    labels: list[int]


def pick_examples(
    data: PreparedDataset, prep: ImagePrep, clip_len: int | None, per_kind: int = 2
) -> Examples | None:
    """Up to ``per_kind`` normal items (val) and anomalous items (tune); None if there are none.

    For video, an example is a clip whose last frame is the one shown (anomalous when that
    frame is labelled anomalous)."""
    if data.modality == "image":
        normal = list(data.indices("val")[:per_kind])
        tune = data.indices("tune")
        anomalous = list(tune[data.labels("tune") == 1][:per_kind])
        rows = normal + anomalous
        if not rows:
            return None
        inputs = to_tensor(data.frames[np.array(rows)], prep)
        return Examples(inputs, [0] * len(normal) + [1] * len(anomalous))
    assert clip_len is not None
    normal_windows = clip_windows(data.videos("val"), clip_len, clip_len)[:per_kind]
    label_of = {it.index: it.label for it in data.items}
    anomalous_windows = [
        w for w in clip_windows(data.videos("tune"), clip_len, 1) if label_of[int(w[-1])] == 1
    ][:: max(1, clip_len)][:per_kind]
    windows = normal_windows + anomalous_windows
    if not windows:
        return None
    inputs = torch.stack([to_tensor(data.frames[w], prep) for w in windows])
    return Examples(inputs, [0] * len(normal_windows) + [1] * len(anomalous_windows))


def _to_uint8_rgb(x: torch.Tensor, normalize: str) -> np.ndarray:
    """(C, H, W) model-space image -> uint8 (H, W, 3) RGB for display."""
    x = x.detach().float().cpu()
    if normalize == "zscore":
        x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-6)
    array = (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array


def _heat(error: torch.Tensor, vmax: float) -> np.ndarray:
    """(1, H, W) error -> uint8 (H, W, 3) RGB, blue (0) to red (``vmax``)."""
    scaled = (error[0].detach().float().cpu() / max(vmax, 1e-12)).clamp(0, 1) * 255
    bgr = cv2.applyColorMap(scaled.round().byte().numpy(), cv2.COLORMAP_JET)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@torch.no_grad()
def example_grid(model: torch.nn.Module, examples: Examples, normalize: str) -> np.ndarray:
    """uint8 RGB grid: one row per example, columns input | reconstruction | error map.

    Error maps share one color scale (the largest error in the grid), so normal and anomalous
    rows compare directly. Rows are outlined green (normal) or red (anomalous).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    inputs = examples.inputs.to(device)
    out = model(inputs)
    model.train(was_training)
    if inputs.ndim == 5:  # video: show the last predicted frame of each clip
        target, rec, err = inputs[:, -1], out.reconstruction[:, -1], out.error_map[:, -1]
    else:
        target, rec, err = inputs, out.reconstruction, out.error_map
    vmax = float(err.max())
    rows = []
    for i, label in enumerate(examples.labels):
        row = np.concatenate(
            [_to_uint8_rgb(target[i], normalize), _to_uint8_rgb(rec[i], normalize),
             _heat(err[i], vmax)], axis=1,
        )
        color = (220, 40, 40) if label else (40, 180, 40)
        rows.append(cv2.copyMakeBorder(row, 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=color))
    grid = np.concatenate(rows, axis=0)
    scale = max(1, 256 // grid.shape[1])
    if scale > 1:
        grid = cv2.resize(grid, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    return grid


class ExampleImagesCallback(pl.Callback):
    """Every ``every_n_epochs`` epochs (and at the last), logs ``images/epoch_NNN.png``."""

    def __init__(
        self, client: MlflowClient, run_id: str, examples: Examples, normalize: str,
        every_n_epochs: int,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.examples = examples
        self.normalize = normalize
        self.every_n_epochs = every_n_epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        last = epoch >= (trainer.max_epochs or 0) or trainer.should_stop
        if epoch % self.every_n_epochs and not last:
            return
        grid = example_grid(module.model, self.examples, self.normalize)
        self.client.log_image(self.run_id, grid, artifact_file=f"images/epoch_{epoch:03d}.png")
