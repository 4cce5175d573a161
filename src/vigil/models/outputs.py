"""The typed result every vigil model returns (anomalib style: a NamedTuple, not a dict)."""

from __future__ import annotations

from typing import NamedTuple

import torch


class AnomalyOutput(NamedTuple):
    """What a model says about its input.

    For images the shapes are as below; the video model inserts a time axis after the batch axis
    (``(B, T-1, ...)``: frames 1..T-1 predicted from the frames before them).

    - ``reconstruction`` (B, C, H, W): the reconstruction (image) or prediction (video).
    - ``error_map`` (B, 1, H, W): squared error averaged over channels, in model input space.
    - ``score`` (B,): mean of ``error_map``.
    - ``predicted_error`` (B, 1, H, W) or None: the error head's estimate of ``error_map``.
    - ``heat_map`` (B, 1, H, W) or None: the map to show and to judge pixels by when it is not
      ``error_map`` (a family's ``heat_knob``); the image score still comes from ``error_map``.
    """

    reconstruction: torch.Tensor
    error_map: torch.Tensor
    score: torch.Tensor
    predicted_error: torch.Tensor | None = None
    heat_map: torch.Tensor | None = None


def anomaly_output(
    target: torch.Tensor,
    reconstruction: torch.Tensor,
    predicted_error: torch.Tensor | None = None,
    channel_dim: int = 1,
) -> AnomalyOutput:
    """Build an ``AnomalyOutput`` from a target and its reconstruction of the same shape.

    ``channel_dim`` is 1 for (B, C, H, W) and 2 for (B, T, C, H, W); the score averages every
    axis after ``channel_dim - 1``.
    """
    error_map = (reconstruction - target).pow(2).mean(dim=channel_dim, keepdim=True)
    score = error_map.flatten(start_dim=channel_dim).mean(dim=-1)
    return AnomalyOutput(reconstruction, error_map, score, predicted_error)
