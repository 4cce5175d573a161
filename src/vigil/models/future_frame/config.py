"""Knobs of the future-frame prediction family (``model.future_frame`` in params.yaml)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vigil.config import Strict

# the frame maps a trained predictor can output; the first is what ``auto`` reads as until the
# evaluate stage chooses one on the labelled tune split (``vigil.evaluation.map_choice``)
FRAME_MAPS = ("fused", "prediction", "appearance")
FrameMap = Literal["auto", "fused", "prediction", "appearance"]


class FutureFrameConfig(Strict):
    """U-Net predictor of frame t from frames t-k..t-1, plus an appearance autoencoder of frame t.

    Encoding = bottleneck_channels x (H / 2**depth) x (W / 2**depth) (the sweep's knob).
    """

    context: int = Field(4, ge=1, le=16)  # k: frames the predictor sees
    depth: int = Field(3, ge=1, le=5)
    filters: int = Field(16, ge=1)  # first block; doubled per block, capped at 256
    bottleneck_channels: int = Field(32, ge=1)
    appearance: bool = True  # fuse a per-frame reconstruction error (persistent anomalies)
    gradient_loss_weight: float = Field(1.0, ge=0)  # Liu et al. 2018: intensity + gradient loss
    # the prediction error counts only where predicting from the context's appearance
    # reconstructions fails too: frames right after an anomaly, whose context still shows it,
    # are not blamed for it (needs ``appearance``). Off by default: on real footage (UCSD Ped2,
    # 64x64) the appearance autoencoder also paints out small movers, which cost recall
    restored_context: bool = False
    # the frame's anomaly map: fused (both terms, each / its normal mean), prediction (the
    # predictor's error alone, as Liu et al. score frames), appearance (the autoencoder's alone)
    # or auto: the one with the best frame AUROC on the labelled tune split, chosen at evaluate.
    # Which wins is a property of the footage: on UCSD Ped2 clip 01 (tune) the appearance error
    # inverts (crowded normal frames score highest), on the built-in print it carries the stalls
    frame_map: FrameMap = "auto"

    @model_validator(mode="after")
    def _appearance_terms_need_appearance(self) -> FutureFrameConfig:
        if self.restored_context and not self.appearance:
            raise ValueError(
                "restored_context needs appearance: true (the context is restored by the "
                "appearance autoencoder); set restored_context: false or appearance: true"
            )
        if self.frame_map == "appearance" and not self.appearance:
            raise ValueError(
                "frame_map: appearance needs appearance: true (the appearance autoencoder); "
                "set frame_map to auto, fused or prediction, or appearance: true"
            )
        return self
