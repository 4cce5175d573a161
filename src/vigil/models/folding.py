"""Inference copies of trained networks with each batch norm folded into the convolution
before it.

At inference a ``BatchNorm2d`` is a fixed per-channel affine map, so ``conv -> bn`` equals one
convolution with rescaled weights and a bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``). The
folded copy computes the same maps up to float rounding and skips one pass over every
activation it folds (``draem``'s segmentation U-Net: 13 of them). Training, saving and
packaging keep the unfolded network: its weights are the ones the spec describes.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batch_norms(network: nn.Module) -> nn.Module:
    """An eval-mode deep copy of ``network`` in which every ``Conv2d`` followed directly by a
    ``BatchNorm2d`` in an ``nn.Sequential`` becomes one ``Conv2d`` (the norm an ``Identity``).
    The copy keeps the network's memory format (channels-last, ``spec.build_model``)."""
    folded = copy.deepcopy(network).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            conv, norm = module._modules[first], module._modules[second]
            if (isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)
                    and norm.track_running_stats and norm.running_mean is not None):
                fused = fuse_conv_bn_eval(conv, norm)
                fused.weight.data = fused.weight.data.contiguous(
                    memory_format=_memory_format(conv.weight))
                module._modules[first] = fused
                module._modules[second] = nn.Identity()
    return folded


def _memory_format(weight: torch.Tensor) -> torch.memory_format:
    return (torch.channels_last if weight.dim() == 4
            and weight.is_contiguous(memory_format=torch.channels_last)
            and not weight.is_contiguous() else torch.contiguous_format)
