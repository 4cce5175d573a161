"""Future-frame prediction (Liu et al., CVPR 2018, without the optical-flow loss): a U-Net
predicts frame t from the last k frames; its error is fused with an appearance autoencoder's
reconstruction error of frame t, so an anomaly that persists (a stall, a stuck blob) keeps
scoring after its onset."""

from vigil.models.future_frame.config import FRAME_MAPS, FutureFrameConfig
from vigil.models.registry import Family

FAMILY = Family(
    name="future_frame",
    modality="video",
    config=FutureFrameConfig,
    searchable=("depth", "filters", "bottleneck_channels"),
    network="vigil.models.future_frame.network:FutureFramePredictor",
    training="vigil.models.future_frame.training:plan",
    depth_knob="depth",
    map_knob="frame_map",
    map_choices=FRAME_MAPS,
)
