"""Knobs of the CNN + ConvLSTM frame predictor family (``model.convlstm`` in params.yaml)."""

from __future__ import annotations

from pydantic import Field

from vigil.config import Strict


class ConvLSTMConfig(Strict):
    """CNN encoder + ConvLSTM + decoder predicting frame t+1 from frames <= t; encoding = the
    ConvLSTM state, hidden_channels x (H / 2**encoder_depth) x (W / 2**encoder_depth)."""

    encoder_depth: int = Field(2, ge=1, le=5)
    filters: int = Field(32, ge=1)
    hidden_channels: int = Field(32, ge=1)
    error_head: bool = False
