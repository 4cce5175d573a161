"""Training plan of the DRAEM-style family: restore and segment synthetic anomalies.

Each training sample is a normal image with (half the time) a synthetic anomaly pasted in
(``anomalies.SyntheticAnomalies``); the loss is

    L2(reconstruction, clean) + ssim_weight * (1 - SSIM(reconstruction, clean))
        + seg_weight * focal(mask logits, mask)

Validation uses the same corruption drawn from a fixed stream (the val images' draws never
change between epochs), so ``val_loss`` compares across epochs and drives early stopping and
checkpointing as for every family. The learning rate warms up over the first 3 % of training
and then follows a cosine down to 5 % of ``train.lr``; "training progress" is the larger of
the share of steps done (of ``max_epochs``) and the share of ``train.max_minutes`` used, so a
wall-clock budget still ends on a low learning rate.
"""

from __future__ import annotations

import math
import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from vigil.config import ImagePrep, TrainConfig
from vigil.data.prepared import PreparedDataset
from vigil.data.torch_datasets import ImageDataset
from vigil.models.error_maps import ssim_map
from vigil.models.draem.anomalies import (
    TRAIN_STREAM,
    VAL_STREAM,
    AnomalySettings,
    SyntheticAnomalies,
    unpack,
)
from vigil.models.draem.config import DraemConfig
from vigil.models.draem.network import DraemNetwork
from vigil.models.lightning import NonFiniteLossError
from vigil.models.reconstruction import TrainingPlan

WARMUP = 0.03
FINAL_LR_SHARE = 0.05


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Mean binary focal loss (Lin et al. 2017) of mask logits against a {0, 1} mask, same shape."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if gamma == 0:
        return ce.mean()
    p = torch.sigmoid(logits)
    p_true = p * target + (1 - p) * (1 - target)
    return ((1 - p_true).pow(gamma) * ce).mean()


def lr_factor(progress: float) -> float:
    """Share of the base learning rate at ``progress`` in [0, 1]: linear warm-up, then cosine."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < WARMUP:
        return max(progress / WARMUP, 0.01)
    t = (progress - WARMUP) / (1 - WARMUP)
    return FINAL_LR_SHARE + (1 - FINAL_LR_SHARE) * 0.5 * (1 + math.cos(math.pi * t))


class DraemModule(pl.LightningModule):
    """Trains a ``DraemNetwork`` on batches (B, 2C + 1, H, W) of ``SyntheticAnomalies``."""

    def __init__(
        self, model: DraemNetwork, *, lr: float, weight_decay: float, data_range: float | None,
        max_minutes: float | None = None, train_set: SyntheticAnomalies | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.cfg: DraemConfig = model.cfg
        self.lr = lr
        self.weight_decay = weight_decay
        self.data_range = data_range
        self.max_seconds = None if max_minutes is None else 60.0 * max_minutes
        self.train_set = train_set
        self._started = time.monotonic()

    def forward(self, x: torch.Tensor):
        return self.model(x)

    def on_train_start(self) -> None:
        self._started = time.monotonic()

    def on_train_epoch_start(self) -> None:
        if self.train_set is not None:
            self.train_set.epoch = int(self.current_epoch)  # new draws every epoch

    def progress(self) -> float:
        """Share of training done: steps of ``max_epochs`` or time of ``max_minutes``."""
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 0
        done = self.global_step / total if total and math.isfinite(total) else 0.0
        if self.max_seconds:
            done = max(done, (time.monotonic() - self._started) / self.max_seconds)
        return done

    def shared_step(self, batch: torch.Tensor, stage: str) -> torch.Tensor:
        corrupted, clean, mask = unpack(batch, self.model.in_channels)
        reconstruction, logits = self.model.segment(corrupted)
        l2 = F.mse_loss(reconstruction, clean)
        rng = self.data_range
        if rng is None:
            rng = (clean.max() - clean.min()).clamp_min(1e-6)
        ssim = ssim_map(reconstruction, clean, rng).mean()
        focal = focal_loss(logits, mask, self.cfg.focal_gamma)
        loss = l2 + self.cfg.ssim_weight * (1 - ssim) + self.cfg.seg_weight * focal
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"{stage} loss is {loss.item()} at epoch {self.current_epoch}, batch "
                f"{self.global_step}: training diverged (lower train.lr, check the input data)"
            )
        size = batch.shape[0]
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=size)
        self.log(f"{stage}_reconstruction_loss", l2 + self.cfg.ssim_weight * (1 - ssim),
                 on_step=False, on_epoch=True, batch_size=size)
        self.log(f"{stage}_segmentation_loss", focal, on_step=False, on_epoch=True, batch_size=size)
        return loss

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.shared_step(batch, "train")

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.shared_step(batch, "val")

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: lr_factor(self.progress()))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


@torch.inference_mode()
def set_map_scales(network: DraemNetwork, images: ImageDataset, batch_size: int = 16) -> None:
    """Each term's mean on the normal ``images`` becomes its scale (``fused`` map: both weigh 1
    on normal data)."""
    seg_total = rec_total = 0.0
    count = 0
    for batch in DataLoader(images, batch_size=batch_size):
        _, segmentation, rec_error = network.terms(batch.to(network.seg_scale.device))
        seg_total += float(segmentation.mean()) * len(batch)
        rec_total += float(rec_error.mean()) * len(batch)
        count += len(batch)
    if count:
        network.seg_scale.fill_(max(seg_total / count, 1e-8))
        network.rec_scale.fill_(max(rec_total / count, 1e-8))


def settings_of(cfg: DraemConfig) -> AnomalySettings:
    return AnomalySettings(cfg.anomaly_probability, cfg.min_coverage, cfg.max_coverage,
                           cfg.max_opacity, cfg.scar_share)


def draem_plan(
    network: DraemNetwork, data: PreparedDataset, prep: ImagePrep, train: TrainConfig
) -> TrainingPlan:
    """Train: normal train images with fresh synthetic anomalies each epoch (random crops of
    ``crop`` when set); val: the val images with a fixed draw of them; finish: the fused map's
    scales from the clean val images."""
    cfg: DraemConfig = network.cfg
    settings = settings_of(cfg)
    train_set = SyntheticAnomalies(ImageDataset(data, "train", prep), settings, train.seed,
                                   TRAIN_STREAM, crop=cfg.crop)
    val_images = ImageDataset(data, "val", prep)
    val_set = SyntheticAnomalies(val_images, settings, train.seed, VAL_STREAM)
    module = DraemModule(
        network, lr=train.lr, weight_decay=train.weight_decay,
        data_range=1.0 if prep.normalize == "unit" else None,
        max_minutes=getattr(train, "max_minutes", None), train_set=train_set,
    )
    return TrainingPlan(module, train_set, val_set,
                        finish=lambda model: set_map_scales(model, val_images))
