"""Knobs of the conv autoencoder family (``model.conv_ae`` in params.yaml)."""

from __future__ import annotations

from pydantic import Field

from vigil.config import Strict
from vigil.models.error_maps import ErrorMapKind


class ConvAEConfig(Strict):
    """Convolutional autoencoder; encoding = latent_channels x (H / 2**depth) x (W / 2**depth)."""

    depth: int = Field(3, ge=1, le=6)
    filters: int = Field(32, ge=1)  # filters of the first block; doubled per block, capped at 256
    latent_channels: int = Field(32, ge=1)
    batch_norm: bool = False
    skip: bool = False  # skip connections let anomalies through: off by default
    error_head: bool = False  # 1-filter conv that predicts the model's own error
    error_map: ErrorMapKind = "l2"  # anomaly map: l2 | ssim | gradient (vigil.models.error_maps)
