"""Future-frame predictor: a U-Net over the last k frames, fused with an appearance autoencoder.

- ``predict(history (B, k, C, H, W)) -> (B, C, H, W)``: frame t from frames t-k..t-1 stacked on
  the channel axis, through a U-Net (stride-2 conv blocks down to a ``bottleneck_channels``
  encoding, transposed convs up, skip connections: prediction may copy what does not change).
- ``appearance(frame)``: a plain conv autoencoder (no skips) of frame t itself. Its error stays
  high while something abnormal stays in view, where the prediction error rises only at the
  onset (a torch that stops is soon predicted perfectly).
- ``restored_context``: the prediction error is the pixelwise minimum of two errors, predicting
  from the frames t-k..t-1 and from their appearance reconstructions (the same predictor, a
  context with anything abnormal painted out). After an anomaly ends, the context still shows it
  and the plain prediction repeats it (a false alarm on the first normal frames); the restored
  prediction does not. While it lasts, both predictions miss it. On the built-in ``print`` tune
  clips this removed the 1-2 false frames after each event (frame AUROC 0.987 -> 0.992; test
  false alarms 3 -> 1 of 81); on UCSD Ped2 it cost recall (0.826 against 1.000 at the threshold:
  the appearance autoencoder paints out small movers too), so it is off by default and on for
  ``print``.
- The anomaly map of frame t (``cfg.frame_map``) is ``fused``: ``pred_err / pred_scale +
  app_err / app_scale``, each squared error (averaged over channels) divided by its mean on the
  normal val split (``finish`` of the training plan sets the scales), so both terms weigh the
  same on normal data; or one of the two terms alone (``prediction``, ``appearance``); ``auto``
  reads as ``fused`` until the evaluate stage chooses on the labelled tune split. ``stream``
  skips the appearance autoencoder when nothing it computes needs it.
- ``stream`` carries a ring buffer of the last k frames (B, <=k, C, H, W), with their
  appearance reconstructions stacked on the channel axis (2C) under ``restored_context``; the
  first k frames of a stream have nothing to be predicted from (output None). ``forward(clip)``
  gives the maps of frames k..T-1.
"""

from __future__ import annotations

import torch
from torch import nn

from vigil.models.blocks import (
    OutputActivation,
    activation,
    block_filters,
    check_size,
    down_block,
    pad_to_multiple,
    padded_size,
    up_block,
)
from vigil.models.conv_ae.config import ConvAEConfig
from vigil.models.conv_ae.network import ConvAutoencoder
from vigil.models.future_frame.config import FRAME_MAPS, FutureFrameConfig
from vigil.models.outputs import AnomalyOutput


class UNetPredictor(nn.Module):
    """(B, k*C, H, W) stacked history -> (B, C, H, W) next frame (H, W divisible by 2**depth)."""

    def __init__(self, in_channels: int, out_channels: int, cfg: FutureFrameConfig,
                 output: OutputActivation) -> None:
        super().__init__()
        filters = block_filters(cfg.filters, cfg.depth)
        chans = [in_channels, *filters]
        self.downs = nn.ModuleList(
            down_block(c, o, False) for c, o in zip(chans[:-1], chans[1:], strict=True)
        )
        self.bottleneck = nn.Sequential(
            nn.Conv2d(filters[-1], cfg.bottleneck_channels, 3, padding=1), nn.LeakyReLU(0.1),
            nn.Conv2d(cfg.bottleneck_channels, filters[-1], 3, padding=1), nn.LeakyReLU(0.1),
        )
        outs = [*filters[:-1][::-1], filters[0]]
        ins = [filters[-1], *(2 * c for c in outs[:-1])]
        self.ups = nn.ModuleList(up_block(c, o, False) for c, o in zip(ins, outs, strict=True))
        self.head = nn.Conv2d(filters[0] + in_channels, out_channels, 3, padding=1)
        self.output = activation(output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [x]
        h = x
        for down in self.downs:
            h = down(h)
            skips.append(h)
        h = self.bottleneck(h)
        skips.pop()  # the deepest block output is the bottleneck's input
        for up in self.ups:
            h = up(h)
            skip = skips.pop()
            h = torch.cat([h, skip], dim=1)
        return self.output(self.head(h))


class FutureFramePredictor(nn.Module):
    """Frames -> prediction and appearance anomaly maps (see the module docstring)."""

    def __init__(
        self, in_channels: int, cfg: FutureFrameConfig, output: OutputActivation = "sigmoid"
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.cfg = cfg
        self.context = cfg.context
        self.predictor = UNetPredictor(in_channels * cfg.context, in_channels, cfg, output)
        self.appearance_ae = None
        if cfg.appearance:
            ae_cfg = ConvAEConfig(
                depth=cfg.depth, filters=cfg.filters,
                latent_channels=max(1, cfg.bottleneck_channels // 4),
            )
            self.appearance_ae = ConvAutoencoder(in_channels, ae_cfg, output=output)
        self.register_buffer("pred_scale", torch.ones(()))
        self.register_buffer("app_scale", torch.ones(()))

    def encoding_shape(self, height: int, width: int) -> tuple[int, int, int]:
        check_size(height, width, self.cfg.depth)
        ph, pw = padded_size(height, width, self.cfg.depth)
        step = 2**self.cfg.depth
        return self.cfg.bottleneck_channels, ph // step, pw // step

    def predict(self, history: torch.Tensor) -> torch.Tensor:
        """history (B, k, C, H, W) -> predicted next frame (B, C, H, W)."""
        batch, k, channels, height, width = history.shape
        stacked = pad_to_multiple(history.reshape(batch, k * channels, height, width), self.cfg.depth)
        return self.predictor(stacked)[..., :height, :width]

    def appearance(self, frames: torch.Tensor) -> torch.Tensor | None:
        """frames (N, C, H, W) -> their appearance reconstruction, or None without the term."""
        if self.appearance_ae is None:
            return None
        return self.appearance_ae(frames).reconstruction

    def error_maps(
        self, frames: torch.Tensor, prediction: torch.Tensor, reconstruction: torch.Tensor | None,
        restored_prediction: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """frames, prediction, appearance reconstruction or None, prediction from the restored
        context or None, each (N, C, H, W) -> (prediction error, appearance error or None), each
        (N, 1, H, W), unscaled. The prediction error is the smaller of the two predictions'."""
        pred_err = (prediction - frames).pow(2).mean(dim=1, keepdim=True)
        if restored_prediction is not None:
            restored_err = (restored_prediction - frames).pow(2).mean(dim=1, keepdim=True)
            pred_err = torch.minimum(pred_err, restored_err)
        app_err = None
        if reconstruction is not None:
            app_err = (reconstruction - frames).pow(2).mean(dim=1, keepdim=True)
        return pred_err, app_err

    def clip_terms(
        self, clip: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """clip (B, T, C, H, W) -> for frames k..T-1, flattened to N = B*(T-k): (prediction
        (N, C, H, W), prediction error (N, 1, H, W), appearance error (N, 1, H, W) or None)."""
        histories, targets = self.windows(clip)
        prediction = self.predict(histories)
        restored = None
        if self.cfg.restored_context:  # the context frames need their reconstructions too
            frames = self.appearance(clip.flatten(0, 1)).unflatten(0, clip.shape[:2])
            restored = self.predict(self.windows(frames)[0])
            reconstructions = frames[:, self.context :].flatten(0, 1)
        else:
            reconstructions = self.appearance(targets)
        return prediction, *self.error_maps(targets, prediction, reconstructions, restored)

    @property
    def map_mode(self) -> str:
        """The frame map forward and stream compute (``auto`` reads as the family's first)."""
        return FRAME_MAPS[0] if self.cfg.frame_map == "auto" else self.cfg.frame_map

    @property
    def _streams_appearance(self) -> bool:
        """A stream step needs the appearance reconstruction of its frame."""
        return self.appearance_ae is not None and (
            self.cfg.restored_context or self.map_mode != "prediction"
        )

    def _output(
        self, prediction: torch.Tensor, pred_err: torch.Tensor, app_err: torch.Tensor | None
    ) -> AnomalyOutput:
        """prediction (N, C, H, W), unscaled errors (N, 1, H, W) -> AnomalyOutput of the map of
        ``map_mode`` (without an appearance term: the prediction error)."""
        mode = self.map_mode
        if app_err is None or mode == "prediction":
            anomaly = pred_err / self.pred_scale
        elif mode == "appearance":
            anomaly = app_err / self.app_scale
        else:
            anomaly = pred_err / self.pred_scale + app_err / self.app_scale
        return AnomalyOutput(prediction, anomaly, anomaly.flatten(1).mean(dim=1), None)

    def stream(
        self, frame: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[AnomalyOutput | None, torch.Tensor]:
        """frame t (B, C, H, W) and the last frames (B, <=k, C, H, W) -> (output of frame t or
        None while fewer than k frames came before it, the updated ring buffer)."""
        reconstruction = self.appearance(frame) if self._streams_appearance else None
        entry = frame
        if self.cfg.restored_context:
            entry = torch.cat([frame, reconstruction], dim=1)
        history = entry[:, None][:, :0] if state is None else state
        output = None
        if history.shape[1] == self.context:
            channels = frame.shape[1]
            prediction = self.predict(history[:, :, :channels])
            restored = None
            if self.cfg.restored_context:
                restored = self.predict(history[:, :, channels:])
            output = self._output(
                prediction, *self.error_maps(frame, prediction, reconstruction, restored)
            )
        history = torch.cat([history, entry[:, None]], dim=1)[:, -self.context :]
        return output, history

    def windows(self, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """clip (B, T, C, H, W), T > k -> (histories (B*(T-k), k, C, H, W), targets (B*(T-k), C, H, W))."""
        k = self.context
        if clip.ndim != 5 or clip.shape[1] <= k:
            raise ValueError(f"expected a clip (B, T>{k}, C, H, W), got {tuple(clip.shape)}")
        histories = clip.unfold(1, k, 1)[:, :-1]  # (B, T-k, C, H, W, k)
        histories = histories.permute(0, 1, 5, 2, 3, 4).flatten(0, 1)
        return histories, clip[:, k:].flatten(0, 1)

    def forward(self, clip: torch.Tensor) -> AnomalyOutput:
        """clip (B, T, C, H, W) -> AnomalyOutput with tensors (B, T-k, ...) for frames k..T-1."""
        out = self._output(*self.clip_terms(clip))
        return AnomalyOutput(*(t.unflatten(0, (clip.shape[0], -1)) for t in out[:3]), None)
