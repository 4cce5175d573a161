"""DRAEM-style family (Zavrtanik et al., ICCV 2021), trained from scratch: an autoencoder
learns to restore normal images into which synthetic anomalies were pasted, and a small U-Net
reading [input, reconstruction] segments the anomaly. The anomaly map is the predicted mask
(mean-filtered); the encoding size of the autoencoder stays the sweep's knob."""

from vigil.models.draem.config import ANOMALY_MAPS, DraemConfig
from vigil.models.registry import Family

FAMILY = Family(
    name="draem",
    modality="image",
    config=DraemConfig,
    searchable=("depth", "filters", "latent_channels"),
    network="vigil.models.draem.network:DraemNetwork",
    training="vigil.models.draem.training:draem_plan",
    depth_knob="depth",
    map_knob="anomaly_map",
    map_choices=ANOMALY_MAPS,
    heat_knob="heat_map",
    # the defaults before the additive decoder, the separate heat map and error_stride
    spec_defaults=(("seg_decoder", "concat"), ("heat_map", "same"), ("error_stride", 1)),
)
