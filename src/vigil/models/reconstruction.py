"""Training plans of the reconstruction families: the shared ``AnomalyModule`` over images
(conv autoencoder) or fixed-length clips (frame predictors).

A family's ``training`` reference returns a ``TrainingPlan``; ``vigil.training.fit`` runs any
plan the same way (early stopping on ``val_loss``, checkpoints, MLflow).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytorch_lightning as pl
from torch import nn
from torch.utils.data import Dataset

from vigil.config import ImagePrep, TrainConfig
from vigil.data.prepared import PreparedDataset
from vigil.data.torch_datasets import ClipDataset, ImageDataset
from vigil.models.lightning import AnomalyModule


@dataclass(frozen=True)
class TrainingPlan:
    """What ``fit`` trains: the LightningModule (logs ``train_loss``/``val_loss``; its network is
    its ``model`` attribute), its datasets, how many frames one training sample holds (throughput
    figures), and ``finish``: an optional step on the best network before it is saved (e.g.
    calibrating fusion scales on the normal val split)."""

    module: pl.LightningModule
    train_set: Dataset
    val_set: Dataset
    frames_per_sample: int = 1
    finish: Callable[[nn.Module], None] | None = None


def _module(network: nn.Module, prep: ImagePrep, train: TrainConfig) -> AnomalyModule:
    return AnomalyModule(
        network, loss=train.loss, lr=train.lr, weight_decay=train.weight_decay,
        data_range=1.0 if prep.normalize == "unit" else None,
    )


def image_plan(
    network: nn.Module, data: PreparedDataset, prep: ImagePrep, train: TrainConfig
) -> TrainingPlan:
    """Images (C, H, W) of the train and val splits, reconstruction loss."""
    return TrainingPlan(
        _module(network, prep, train),
        ImageDataset(data, "train", prep),
        ImageDataset(data, "val", prep),
    )


def clip_plan(
    network: nn.Module, data: PreparedDataset, prep: ImagePrep, train: TrainConfig
) -> TrainingPlan:
    """Clips (T, C, H, W) of ``prep.clip_len`` frames (train windows overlap by half),
    next-frame prediction loss."""
    clip_len = prep.clip_len
    stride = max(1, clip_len // 2)
    return TrainingPlan(
        _module(network, prep, train),
        ClipDataset(data, "train", prep, clip_len, stride),
        ClipDataset(data, "val", prep, clip_len, clip_len),
        frames_per_sample=clip_len,
    )
