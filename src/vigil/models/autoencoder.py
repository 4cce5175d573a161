"""Convolutional autoencoder for images: the encoding size is the anomaly-detection knob.

Encoder: ``depth`` blocks of a stride-2 3x3 conv (filters ``filters * 2**i``, capped at 256),
then a 3x3 conv to ``latent_channels``: the encoding is latent_channels x H/2**depth x W/2**depth.
Decoder: a 3x3 conv back to the widest block, ``depth`` stride-2 4x4 transposed convs, and a 3x3
conv to the input channels with a sigmoid (inputs in [0, 1]) or identity (z-scored inputs) output.
Batch norm and skip connections are options, off by default: skips let anomalies through.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vigil.config import ImageModelConfig
from vigil.models.outputs import AnomalyOutput, anomaly_output

MAX_FILTERS = 256
OutputActivation = Literal["sigmoid", "identity"]


class ImageTooSmallError(ValueError):
    """The image cannot be downsampled ``depth`` times."""


def block_filters(filters: int, depth: int) -> list[int]:
    """Filters of each downsampling block: ``filters`` doubled per block, capped at 256."""
    return [min(filters * 2**i, MAX_FILTERS) for i in range(depth)]


def check_size(height: int, width: int, depth: int) -> None:
    """Raise ``ImageTooSmallError`` naming both numbers when the image is below 2**depth."""
    need = 2**depth
    if height < need or width < need:
        raise ImageTooSmallError(
            f"image {height}x{width} is too small for depth {depth}: "
            f"needs at least {need}x{need}"
        )


def padded_size(height: int, width: int, depth: int) -> tuple[int, int]:
    """Smallest size >= (height, width) that divides by 2**depth."""
    step = 2**depth
    return math.ceil(height / step) * step, math.ceil(width / step) * step


def pad_to_multiple(x: torch.Tensor, depth: int) -> torch.Tensor:
    """Replicate-pad the bottom and right of (N, C, H, W) so H and W divide by 2**depth."""
    height, width = x.shape[-2:]
    check_size(height, width, depth)
    ph, pw = padded_size(height, width, depth)
    if (ph, pw) == (height, width):
        return x
    return F.pad(x, (0, pw - width, 0, ph - height), mode="replicate")


def activation(name: OutputActivation) -> nn.Module:
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "identity":
        return nn.Identity()
    raise ValueError(f"unknown output activation {name!r}; expected 'sigmoid' or 'identity'")


def down_block(c_in: int, c_out: int, batch_norm: bool) -> nn.Sequential:
    """(N, c_in, H, W) -> (N, c_out, H/2, W/2)."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.LeakyReLU(0.1, inplace=True))
    return nn.Sequential(*layers)


def up_block(c_in: int, c_out: int, batch_norm: bool) -> nn.Sequential:
    """(N, c_in, H, W) -> (N, c_out, 2H, 2W)."""
    layers: list[nn.Module] = [
        nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=not batch_norm)
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.LeakyReLU(0.1, inplace=True))
    return nn.Sequential(*layers)


class ConvDecoder(nn.Module):
    """Features (N, c_in, h, w) -> image (N, out_channels, h * 2**depth, w * 2**depth).

    ``forward`` also returns the last feature map (N, filters, H, W), which the error head reads.
    """

    def __init__(
        self, c_in: int, filters: list[int], out_channels: int, batch_norm: bool, skip: bool
    ) -> None:
        super().__init__()
        self.skip = skip
        self.entry = nn.Sequential(nn.Conv2d(c_in, filters[-1], 3, padding=1), nn.LeakyReLU(0.1))
        outs = filters[:-1][::-1] + [filters[0]]
        self.ups = nn.ModuleList(
            up_block(c, o, batch_norm) for c, o in zip(filters[::-1], outs, strict=True)
        )
        self.head = nn.Conv2d(filters[0], out_channels, 3, padding=1)

    def forward(
        self, z: torch.Tensor, skips: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.entry(z)
        for i, up in enumerate(self.ups):
            h = up(h)
            if self.skip and skips is not None and i < len(skips):
                h = h + skips[i]
        return self.head(h), h


class ErrorHead(nn.Module):
    """1-filter 3x3 conv: decoder features (N, F, H, W) -> predicted squared error (N, 1, H, W).

    Trained on detached errors of normal data, so it learns where the model is always wrong.
    """

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, 1, 3, padding=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.conv(features.detach()))


class ConvAutoencoder(nn.Module):
    """Image (B, C, H, W) -> ``AnomalyOutput`` with reconstruction, error map and score."""

    def __init__(
        self, in_channels: int, cfg: ImageModelConfig, output: OutputActivation = "sigmoid"
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
        return anomaly_output(x, reconstruction, predicted)
