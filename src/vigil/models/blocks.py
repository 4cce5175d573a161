"""Convolution blocks shared by the model families: down/up blocks, decoder, error head,
size checks and padding."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


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
