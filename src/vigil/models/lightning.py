"""One LightningModule for both models: a shared step for train, val and test.

The batch is an image batch (B, C, H, W) for ``ConvAutoencoder`` or a clip batch (B, T, C, H, W)
for ``FramePredictor``; the model's ``AnomalyOutput`` carries the reconstruction and error map,
so the step is the same for both. Logged metrics: ``train_loss``, ``val_loss``, ``test_loss``
(per epoch); ``val_loss`` drives early stopping, checkpointing and sweep pruning.
"""

from __future__ import annotations

from typing import Literal

import pytorch_lightning as pl
import torch
from torch import nn

from vigil.models.error_maps import ssim_map
from vigil.models.outputs import AnomalyOutput

LossName = Literal["mse", "ssim", "mse+ssim"]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf: the run stops and no weights are written."""


def _flat_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, T, C, H, W) -> (B*T, C, H, W); images pass through."""
    return x.flatten(0, 1) if x.ndim == 5 else x


def reconstruction_loss(
    output: AnomalyOutput, target: torch.Tensor, loss: LossName, data_range: float | None
) -> torch.Tensor:
    """Scalar loss of ``output.reconstruction`` against ``target`` (same shape).

    ``data_range`` is 1.0 for unit inputs; None (z-scored inputs) uses the target's range.
    """
    mse = output.error_map.mean()
    if loss == "mse":
        return mse
    rec, tgt = _flat_frames(output.reconstruction), _flat_frames(target)
    rng = data_range if data_range is not None else (tgt.max() - tgt.min()).clamp_min(1e-6)
    ssim = ssim_map(rec, tgt, rng).mean()
    if loss == "ssim":
        return 1.0 - ssim
    if loss == "mse+ssim":
        return mse + (1.0 - ssim)
    raise ValueError(f"unknown loss {loss!r}; expected 'mse', 'ssim' or 'mse+ssim'")


class AnomalyModule(pl.LightningModule):
    """Trains a vigil model on normal data only; optional error-head loss on detached errors."""

    def __init__(
        self,
        model: nn.Module,
        *,
        loss: LossName = "mse",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        data_range: float | None = 1.0,
        error_head_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss_name = loss
        self.lr = lr
        self.weight_decay = weight_decay
        self.data_range = data_range
        self.error_head_weight = error_head_weight

    def forward(self, x: torch.Tensor) -> AnomalyOutput:
        return self.model(x)

    @staticmethod
    def target_of(batch: torch.Tensor) -> torch.Tensor:
        """What the model is scored against: the image itself, or frames 1..T-1 of a clip."""
        return batch[:, 1:] if batch.ndim == 5 else batch

    def shared_step(self, batch: torch.Tensor, stage: str) -> torch.Tensor:
        output = self.model(batch)
        loss = reconstruction_loss(output, self.target_of(batch), self.loss_name, self.data_range)
        if output.predicted_error is not None:
            head = (output.predicted_error - output.error_map.detach()).pow(2).mean()
            self.log(f"{stage}_error_head_loss", head, on_step=False, on_epoch=True)
            loss = loss + self.error_head_weight * head
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"{stage} loss is {loss.item()} at epoch {self.current_epoch}, batch "
                f"{self.global_step}: training diverged (lower train.lr, check the input data)"
            )
        self.log(
            f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True,
            batch_size=batch.shape[0],
        )
        return loss

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.shared_step(batch, "train")

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.shared_step(batch, "val")

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.shared_step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
