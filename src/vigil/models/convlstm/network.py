"""Video frame predictor: CNN encoder + ConvLSTM + decoder predicting frame t+1 from frames <= t.

Training runs on clips (``forward``: encoder and decoder batched over time, the ConvLSTM
unrolled); streaming runs frame by frame with a carried state (``stream`` returns the typed
``AnomalyOutput`` of each frame; ``step`` the raw next-frame prediction). Both share one code
path per frame, so a streamed video scores exactly as its clips do.
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
from vigil.models.convlstm.config import ConvLSTMConfig
from vigil.models.outputs import AnomalyOutput, anomaly_output

State = tuple[torch.Tensor, torch.Tensor]  # (hidden, cell), each (B, hidden_channels, h, w)


class ConvLSTMCell(nn.Module):
    """One ConvLSTM step (Shi et al. 2015): gates from a 3x3 conv over [input, hidden]."""

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.gates = nn.Conv2d(
            in_channels + hidden_channels, 4 * hidden_channels, kernel_size, padding=kernel_size // 2
        )

    def init_state(self, batch: int, height: int, width: int, like: torch.Tensor) -> State:
        """Zero (hidden, cell), each (batch, hidden_channels, height, width), on ``like``'s device."""
        zeros = like.new_zeros(batch, self.hidden_channels, height, width)
        return zeros, zeros.clone()

    def forward(self, x: torch.Tensor, state: State) -> State:
        """x (B, in_channels, h, w), state -> new (hidden, cell)."""
        hidden, cell = state
        i, f, o, g = self.gates(torch.cat([x, hidden], dim=1)).chunk(4, dim=1)
        cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
        hidden = torch.sigmoid(o) * torch.tanh(cell)
        return hidden, cell


class FramePredictor(nn.Module):
    """Clip (B, T, C, H, W) -> AnomalyOutput over frames 1..T-1; ``stream`` (typed result per
    frame) or ``step`` (next-frame prediction) for streaming."""

    def __init__(
        self, in_channels: int, cfg: ConvLSTMConfig, output: OutputActivation = "sigmoid"
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.cfg = cfg
        self.depth = cfg.encoder_depth
        filters = block_filters(cfg.filters, cfg.encoder_depth)
        chans = [in_channels, *filters]
        self.encoder = nn.Sequential(
            *(down_block(c, o, False) for c, o in zip(chans[:-1], chans[1:], strict=True))
        )
        self.lstm = ConvLSTMCell(filters[-1], cfg.hidden_channels)
        self.decoder = ConvDecoder(cfg.hidden_channels, filters, in_channels, False, False)
        self.output = activation(output)
        self.error_head = ErrorHead(filters[0]) if cfg.error_head else None

    def encoding_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(C, H', W') of the ConvLSTM state (the encoding) for frames of ``height`` x ``width``."""
        check_size(height, width, self.depth)
        ph, pw = padded_size(height, width, self.depth)
        return self.cfg.hidden_channels, ph // 2**self.depth, pw // 2**self.depth

    def init_state(self, batch: int, height: int, width: int) -> State:
        """Zero state for frames of ``height`` x ``width`` (image size, not feature size)."""
        ph, pw = padded_size(height, width, self.depth)
        like = next(self.parameters())
        return self.lstm.init_state(batch, ph // 2**self.depth, pw // 2**self.depth, like)

    def _encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> features (N, F, H', W')."""
        return self.encoder(pad_to_multiple(frames, self.depth))

    def _decode(
        self, hidden: torch.Tensor, height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, hidden, H', W') -> predicted frames (N, C, H, W) and predicted error or None."""
        logits, features = self.decoder(hidden)
        prediction = self.output(logits)[..., :height, :width]
        predicted = None
        if self.error_head is not None:
            predicted = self.error_head(features)[..., :height, :width]
        return prediction, predicted

    def step_full(
        self, frame: torch.Tensor, state: State | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, State]:
        """frame t (B, C, H, W) -> (prediction of frame t+1, predicted error or None, state)."""
        height, width = frame.shape[-2:]
        if state is None:
            state = self.init_state(frame.shape[0], height, width)
        state = self.lstm(self._encode(frame), state)
        prediction, predicted = self._decode(state[0], height, width)
        return prediction, predicted, state

    def stream(
        self, frame: torch.Tensor, state: State | None = None
    ) -> tuple[AnomalyOutput | None, State]:
        """Streaming with the typed result: frame t (B, C, H, W) and the state carried from frames
        < t -> (AnomalyOutput of frame t, state after frame t).

        The output compares frame t with its prediction from the frames before it:
        ``reconstruction`` (B, C, H, W), ``error_map`` (B, 1, H, W), ``score`` (B,),
        ``predicted_error`` (B, 1, H, W) or None; it equals ``forward(clip)`` at index t-1 along
        the time axis. ``state=None`` starts a stream: its first frame has nothing to be
        predicted from, so the output is None (as clip mode has no output for frame 0).
        """
        height, width = frame.shape[-2:]
        output = None
        if state is None:
            state = self.init_state(frame.shape[0], height, width)
        else:
            prediction, predicted = self._decode(state[0], height, width)
            output = anomaly_output(frame, prediction, predicted, channel_dim=1)
        state = self.lstm(self._encode(frame), state)
        return output, state

    def step(self, frame: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Streaming: frame t (B, C, H, W) and the carried state -> (frame t+1 prediction, state).

        ``state=None`` starts a new stream (same as ``init_state``).
        """
        prediction, _, state = self.step_full(frame, state)
        return prediction, state

    def forward(self, clip: torch.Tensor) -> AnomalyOutput:
        """clip (B, T, C, H, W), T >= 2 -> AnomalyOutput with tensors (B, T-1, ...) for frames
        1..T-1, each predicted from the frames before it (fresh state at the clip start)."""
        if clip.ndim != 5 or clip.shape[1] < 2:
            raise ValueError(f"expected a clip (B, T>=2, C, H, W), got {tuple(clip.shape)}")
        batch, steps, channels, height, width = clip.shape
        inputs = clip[:, :-1].reshape(batch * (steps - 1), channels, height, width)
        features = self._encode(inputs).unflatten(0, (batch, steps - 1))
        state = self.init_state(batch, height, width)
        hiddens = []
        for t in range(steps - 1):
            state = self.lstm(features[:, t], state)
            hiddens.append(state[0])
        hidden = torch.stack(hiddens, dim=1).flatten(0, 1)
        prediction, predicted = self._decode(hidden, height, width)
        prediction = prediction.unflatten(0, (batch, steps - 1))
        if predicted is not None:
            predicted = predicted.unflatten(0, (batch, steps - 1))
        return anomaly_output(clip[:, 1:], prediction, predicted, channel_dim=2)
