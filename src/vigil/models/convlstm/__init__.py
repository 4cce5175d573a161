"""CNN + ConvLSTM next-frame predictor (the seeds' video model): prediction error is the
anomaly map."""

from vigil.models.convlstm.config import ConvLSTMConfig
from vigil.models.registry import Family

FAMILY = Family(
    name="convlstm",
    modality="video",
    config=ConvLSTMConfig,
    searchable=("encoder_depth", "filters", "hidden_channels"),
    network="vigil.models.convlstm.network:FramePredictor",
    training="vigil.models.reconstruction:clip_plan",
    depth_knob="encoder_depth",
)
