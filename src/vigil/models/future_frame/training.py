"""Training plan of the future-frame family: intensity + gradient loss on the predicted frame
(Liu et al. 2018, no optical flow), plus the appearance autoencoder's reconstruction loss; after
training, ``finish`` sets the fusion scales from the normal val split."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from vigil.config import ImagePrep, TrainConfig
from vigil.data.prepared import PreparedDataset
from vigil.data.torch_datasets import ClipDataset
from vigil.models.future_frame.network import FutureFramePredictor
from vigil.models.lightning import NonFiniteLossError
from vigil.models.reconstruction import TrainingPlan


def gradient_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean |(|dx pred| - |dx target|)| + the same along y; (N, C, H, W) each."""
    def grads(x):
        return (x[..., :, 1:] - x[..., :, :-1]).abs(), (x[..., 1:, :] - x[..., :-1, :]).abs()

    (px, py), (tx, ty) = grads(prediction), grads(target)
    return (px - tx).abs().mean() + (py - ty).abs().mean()


class FutureFrameModule(pl.LightningModule):
    """Trains ``model`` (a FutureFramePredictor) on clips (B, T, C, H, W) of normal video."""

    def __init__(self, model: FutureFramePredictor, train: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.lr = train.lr
        self.weight_decay = train.weight_decay

    def shared_step(self, clip: torch.Tensor, stage: str) -> torch.Tensor:
        histories, targets = self.model.windows(clip)
        prediction = self.model.predict(histories)
        loss = (prediction - targets).pow(2).mean()
        weight = self.model.cfg.gradient_loss_weight
        if weight:
            loss = loss + weight * gradient_loss(prediction, targets)
        frames = clip.flatten(0, 1)
        reconstruction = self.model.appearance(frames)
        if reconstruction is not None:
            loss = loss + (reconstruction - frames).pow(2).mean()
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"{stage} loss is {loss.item()} at epoch {self.current_epoch}: training diverged "
                "(lower train.lr, check the input data)"
            )
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=clip.shape[0])
        return loss

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.shared_step(batch, "train")

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.shared_step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


@torch.inference_mode()
def set_fusion_scales(model: FutureFramePredictor, clips: ClipDataset, batch_size: int = 8) -> None:
    """Each term's mean error on normal clips becomes its scale (both weigh 1 on normal data)."""
    pred_total = app_total = 0.0
    count = 0
    for clip in DataLoader(clips, batch_size=batch_size):
        _, pred_err, app_err = model.clip_terms(clip)
        pred_total += float(pred_err.mean()) * len(pred_err)
        app_total += float(app_err.mean()) * len(pred_err) if app_err is not None else 0.0
        count += len(pred_err)
    if count:
        model.pred_scale.fill_(max(pred_total / count, 1e-8))
        model.app_scale.fill_(max(app_total / count, 1e-8))


def plan(
    network: FutureFramePredictor, data: PreparedDataset, prep: ImagePrep, train: TrainConfig
) -> TrainingPlan:
    """Clips long enough for k frames of context plus at least one predicted frame."""
    clip_len = max(prep.clip_len, network.context + 1)
    stride = max(1, clip_len // 2)
    val = ClipDataset(data, "val", prep, clip_len, clip_len)
    return TrainingPlan(
        FutureFrameModule(network, train),
        ClipDataset(data, "train", prep, clip_len, stride),
        val,
        frames_per_sample=clip_len,
        finish=lambda model: set_fusion_scales(model, val),
    )
