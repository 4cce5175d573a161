"""Convolutional autoencoder for images: the encoding size is the anomaly-detection knob.

Encoder: ``depth`` blocks of a stride-2 3x3 conv (filters ``filters * 2**i``, capped at 256),
then a 3x3 conv to ``latent_channels``: the encoding is latent_channels x H/2**depth x W/2**depth.
Decoder: a 3x3 conv back to the widest block, ``depth`` stride-2 4x4 transposed convs, and a 3x3
conv to the input channels with a sigmoid (inputs in [0, 1]) or identity (z-scored inputs) output.
Batch norm and skip connections are options, off by default: skips let anomalies through.
"""

from __future__ import annotations

import torch
from torch import nn

from vigil.models.blocks import (
    ConvDecoder,
    ErrorHead,
    OutputActivation,
    activation,
    block_filters,
    check_size,
    down_block,
    pad_to_multiple,
    padded_size,
)
from vigil.models.conv_ae.config import ConvAEConfig
from vigil.models.error_maps import error_map
from vigil.models.outputs import AnomalyOutput


class ConvAutoencoder(nn.Module):
    """Image (B, C, H, W) -> ``AnomalyOutput`` with reconstruction, error map (``cfg.error_map``:
    l2, ssim or gradient, (B, 1, H, W)) and score (its mean, (B,))."""

    def __init__(
        self, in_channels: int, cfg: ConvAEConfig, output: OutputActivation = "sigmoid"
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.cfg = cfg
        self.depth = cfg.depth
        filters = block_filters(cfg.filters, cfg.depth)
        chans = [in_channels, *filters]
        self.downs = nn.ModuleList(
            down_block(c, o, cfg.batch_norm) for c, o in zip(chans[:-1], chans[1:], strict=True)
        )
        self.to_latent = nn.Conv2d(filters[-1], cfg.latent_channels, 3, padding=1)
        self.decoder = ConvDecoder(cfg.latent_channels, filters, in_channels, cfg.batch_norm, cfg.skip)
        self.output = activation(output)
        self.data_range = 1.0 if output == "sigmoid" else None  # SSIM's range: [0, 1] or per batch
        self.error_head = ErrorHead(filters[0]) if cfg.error_head else None

    def encoding_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(C, H', W') of the encoding of an image of ``height`` x ``width``."""
        check_size(height, width, self.depth)
        ph, pw = padded_size(height, width, self.depth)
        return self.cfg.latent_channels, ph // 2**self.depth, pw // 2**self.depth

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, C, H, W), H and W divisible by 2**depth -> encoding (B, C', H', W') and the
        block outputs for skips, deepest-but-one first."""
        feats = []
        h = x
        for down in self.downs:
            h = down(h)
            feats.append(h)
        skips = feats[:-1][::-1] if self.cfg.skip else []
        return self.to_latent(h), skips

    def forward(self, x: torch.Tensor) -> AnomalyOutput:
        """x (B, C, H, W) in model input space -> AnomalyOutput (maps cropped to H x W)."""
        height, width = x.shape[-2:]
        padded = pad_to_multiple(x, self.depth)
        z, skips = self.encode(padded)
        logits, features = self.decoder(z, skips)
        reconstruction = self.output(logits)[..., :height, :width]
        predicted = None
        if self.error_head is not None:
            predicted = self.error_head(features)[..., :height, :width]
        error = error_map(x, reconstruction, self.cfg.error_map, self.data_range)
        return AnomalyOutput(reconstruction, error, error.flatten(start_dim=1).mean(dim=1), predicted)
