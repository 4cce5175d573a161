"""DRAEM-style network: a reconstructive autoencoder and a discriminative segmentation net.

Reconstructive part: the conv autoencoder of ``conv_ae`` (``depth`` stride-2 3x3 convs with
``filters * 2**i`` filters, a 3x3 conv to ``latent_channels``, the shared ``ConvDecoder``); its
encoding, latent_channels x H/2**depth x W/2**depth, is the knob the sweep searches. Trained to
restore images into which synthetic anomalies were pasted, it maps anything off-normal back to
normal.

Discriminative part (``SegmentationNet``): a small U-Net over the channel concatenation
[input, reconstruction] (B, 2C, H, W) that predicts the anomaly mask's logits (B, 1, H, W).
Its widths (``seg_filters`` doubled per level, capped at 128; ``seg_depth`` levels) are kept
small so that inference with a heat map runs at line speed on two CPU cores. ``seg_decoder``
joins each upsampled level to its skip: ``concat`` (the classic U-Net: a 3x3 conv over both,
stacked) or ``add`` (a 1x1 conv brings the coarser level to the skip's width before upsampling,
then the two are summed and one 3x3 conv of the skip's width follows: 3x fewer decoder FLOPs,
which were two thirds of the net's).

Anomaly map (``AnomalyOutput.error_map``, ``cfg.anomaly_map``):
- ``segmentation``: the predicted anomaly probability, mean-filtered with a kernel of
  ``smooth_fraction`` of the shorter side (the paper's map; ``score`` is its maximum);
- ``reconstruction``: the restoration-trained autoencoder's error (``cfg.error_map``: l2, ssim
  or gradient, ``vigil.models.error_maps``);
- ``fused``: ``segmentation / seg_scale + reconstruction / rec_scale``, each term divided by its
  mean on the normal val images (set after training, ``training.set_map_scales``), so both
  weigh 1 on normal data;
- ``auto``: read as ``fused`` until the evaluate stage chooses one of the three on the labelled
  tune split (``evaluation.map_choice``).

Heat map (``AnomalyOutput.heat_map``, ``cfg.heat_map``): one of the same three shown in overlays
and judged by pixel metrics apart from the scored map (None when it is the anomaly map:
``same``, or ``auto`` until evaluate chooses it on the tune split's masks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vigil.models.blocks import (
    ConvDecoder,
    OutputActivation,
    activation,
    block_filters,
    check_size,
    down_block,
    pad_to_multiple,
    padded_size,
)
from vigil.models.draem.config import ANOMALY_MAPS, DraemConfig
from vigil.models.error_maps import error_map
from vigil.models.outputs import AnomalyOutput

MAX_SEG_FILTERS = 128


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv + batch norm + LeakyReLU: (N, c_in, H, W) -> (N, c_out, H/stride, W/stride)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.1, inplace=True),
    )


class SegmentationNet(nn.Module):
    """U-Net: (N, c_in, H, W), H and W divisible by 2**depth * stride -> mask logits (N, 1, H, W).

    ``stride`` 2 runs the U-Net at half resolution (a stride-2 stem) and upsamples the logits
    bilinearly: its full-resolution layers were most of the family's inference time.
    ``decoder``: how an upsampled level meets its skip, ``concat`` or ``add`` (module docstring)."""

    def __init__(
        self, c_in: int, filters: int, depth: int, stride: int = 1, decoder: str = "concat"
    ) -> None:
        super().__init__()
        widths = [min(filters * 2**i, MAX_SEG_FILTERS) for i in range(depth + 1)]
        self.stride = stride
        self.decoder = decoder
        self.stem = _conv_bn(c_in, widths[0], stride=stride)
        self.downs = nn.ModuleList(
            nn.Sequential(_conv_bn(widths[i], widths[i + 1], stride=2),
                          _conv_bn(widths[i + 1], widths[i + 1]))
            for i in range(depth)
        )
        levels = list(reversed(range(depth)))
        if decoder == "add":
            self.laterals = nn.ModuleList(
                nn.Conv2d(widths[i + 1], widths[i], 1, bias=False) for i in levels
            )
            self.ups = nn.ModuleList(_conv_bn(widths[i], widths[i]) for i in levels)
        else:
            self.ups = nn.ModuleList(_conv_bn(widths[i + 1] + widths[i], widths[i]) for i in levels)
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        skips = [h]
        for down in self.downs:
            h = down(h)
            skips.append(h)
        skips.pop()  # the bottom level is h itself
        for level, up in enumerate(self.ups):
            skip = skips.pop()
            if self.decoder == "add":
                h = F.interpolate(self.laterals[level](h), size=skip.shape[-2:], mode="nearest")
                h = up(h + skip)
            else:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
                h = up(torch.cat([h, skip], dim=1))
        logits = self.head(h)
        if self.stride > 1:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits


def mean_filter(maps: torch.Tensor, kernel: int) -> torch.Tensor:
    """(N, 1, H, W) -> the same, averaged over a ``kernel`` x ``kernel`` window (borders: the
    mean of the pixels inside the image). ``kernel`` <= 1 returns the input."""
    if kernel <= 1:
        return maps
    # a summed-area table: O(1) per pixel for any kernel (avg_pool2d took ~10 ms at 256x256 on
    # 2 cores for an 11-px kernel); float64 keeps the differences of large sums exact enough
    pad = kernel // 2
    height, width = maps.shape[-2:]
    table = F.pad(maps.double(), (pad + 1, pad, pad + 1, pad)).cumsum(-1).cumsum(-2)
    sums = (table[..., kernel:, kernel:] - table[..., :-kernel, kernel:]
            - table[..., kernel:, :-kernel] + table[..., :-kernel, :-kernel])
    return (sums / (_inside(height, pad, maps.device)[:, None]
                    * _inside(width, pad, maps.device)[None, :])).to(maps.dtype)


def _inside(n: int, pad: int, device: torch.device) -> torch.Tensor:
    """(n,) float64: how many of the window's 2*pad+1 positions around each index lie in 0..n-1."""
    index = torch.arange(n, device=device)
    return ((index + pad + 1).clamp(max=n) - (index - pad).clamp(min=0)).double()


class DraemNetwork(nn.Module):
    """Image (B, C, H, W) -> ``AnomalyOutput(reconstruction, anomaly map (B, 1, H, W) of
    ``cfg.anomaly_map``, its maximum (B,), None)``."""

    def __init__(
        self, in_channels: int, cfg: DraemConfig, output: OutputActivation = "sigmoid"
    ) -> None:
        super().__init__()
        for knob in ("seg_stride", "error_stride"):
            if getattr(cfg, knob) == "auto":
                raise ValueError(f"draem's {knob} 'auto' depends on the image size: resolve it "
                                 "with DraemConfig.at_size (model_spec does) before building")
        self.in_channels = in_channels
        self.cfg = cfg
        self.depth = cfg.depth
        self.pad_depth = max(cfg.depth, cfg.seg_depth + (cfg.seg_stride - 1))
        filters = block_filters(cfg.filters, cfg.depth)
        chans = [in_channels, *filters]
        self.downs = nn.ModuleList(
            down_block(c, o, False) for c, o in zip(chans[:-1], chans[1:], strict=True)
        )
        self.to_latent = nn.Conv2d(filters[-1], cfg.latent_channels, 3, padding=1)
        self.decoder = ConvDecoder(cfg.latent_channels, filters, in_channels, False, False)
        self.output = activation(output)
        self.data_range = 1.0 if output == "sigmoid" else None  # SSIM's range: [0, 1] or per batch
        self.register_buffer("seg_scale", torch.ones(()))
        self.register_buffer("rec_scale", torch.ones(()))
        self.segmenter = SegmentationNet(2 * in_channels, cfg.seg_filters, cfg.seg_depth,
                                         cfg.seg_stride, cfg.seg_decoder)

    def encoding_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(C, H', W') of the reconstructive encoding of an image of ``height`` x ``width``."""
        check_size(height, width, self.pad_depth)
        ph, pw = padded_size(height, width, self.pad_depth)
        return self.cfg.latent_channels, ph // 2**self.depth, pw // 2**self.depth

    def smoothing_kernel(self, height: int, width: int) -> int:
        """Odd mean-filter side for maps of ``height`` x ``width`` (1: no smoothing)."""
        side = round(self.cfg.smooth_fraction * min(height, width))
        return side + 1 if side % 2 == 0 else side

    def _restore(self, padded: torch.Tensor) -> torch.Tensor:
        """Padded x (B, C, H', W') -> its reconstruction (B, C, H', W')."""
        h = padded
        for down in self.downs:
            h = down(h)
        logits, _ = self.decoder(self.to_latent(h))
        return self.output(logits)

    def segment(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) -> (reconstruction (B, C, H, W), mask logits (B, 1, H, W))."""
        height, width = x.shape[-2:]
        padded = pad_to_multiple(x, self.pad_depth)
        reconstruction = self._restore(padded)
        mask_logits = self.segmenter(torch.cat([padded, reconstruction], dim=1))
        return reconstruction[..., :height, :width], mask_logits[..., :height, :width]

    def _segmentation(self, logits: torch.Tensor) -> torch.Tensor:
        """Mask logits (B, 1, H, W) -> the smoothed anomaly probability (B, 1, H, W)."""
        return mean_filter(torch.sigmoid(logits), self.smoothing_kernel(*logits.shape[-2:]))

    def _rec_error(self, x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """x, reconstruction (B, C, H, W) -> error map (B, 1, H, W); with ``error_stride`` 2
        computed on 2x2 means of both and upsampled bilinearly."""
        if self.cfg.error_stride == 1:
            return error_map(x, reconstruction, self.cfg.error_map, self.data_range)
        halves = [F.avg_pool2d(image, 2, ceil_mode=True) for image in (x, reconstruction)]
        coarse = error_map(*halves, self.cfg.error_map, self.data_range)
        return F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) -> (reconstruction (B, C, H, W), smoothed anomaly probability
        (B, 1, H, W), reconstruction error (B, 1, H, W)), unscaled."""
        reconstruction, logits = self.segment(x)
        return reconstruction, self._segmentation(logits), self._rec_error(x, reconstruction)

    @property
    def map_mode(self) -> str:
        """The anomaly map forward computes (``auto`` reads as the family's first choice)."""
        return ANOMALY_MAPS[0] if self.cfg.anomaly_map == "auto" else self.cfg.anomaly_map

    @property
    def heat_mode(self) -> str | None:
        """The heat map forward computes besides the anomaly map (None: the anomaly map itself;
        ``auto`` reads as ``same`` until the evaluate stage chooses)."""
        heat = self.cfg.heat_map
        return None if heat in ("auto", "same", self.map_mode) else heat

    def forward(self, x: torch.Tensor) -> AnomalyOutput:
        """Computes only what the anomaly and heat maps need: the reconstruction map alone skips
        the segmentation net, the segmentation map alone the reconstruction error."""
        wanted = {self.map_mode, self.heat_mode} - {None}
        if wanted == {"reconstruction"}:
            height, width = x.shape[-2:]
            padded = pad_to_multiple(x, self.pad_depth)
            reconstruction = self._restore(padded)[..., :height, :width]
            maps = {"reconstruction": self._rec_error(x, reconstruction)}
        else:
            reconstruction, logits = self.segment(x)
            maps = {"segmentation": self._segmentation(logits)}
            if wanted != {"segmentation"}:
                maps["reconstruction"] = self._rec_error(x, reconstruction)
                maps["fused"] = (maps["segmentation"] / self.seg_scale
                                 + maps["reconstruction"] / self.rec_scale)
        anomaly = maps[self.map_mode]
        heat = None if self.heat_mode is None else maps[self.heat_mode]
        return AnomalyOutput(reconstruction, anomaly, anomaly.amax(dim=(1, 2, 3)), None, heat)
