"""The plain convolutional autoencoder (the seeds' image model): reconstruction error is the
anomaly map."""

from vigil.models.conv_ae.config import ConvAEConfig
from vigil.models.registry import Family

FAMILY = Family(
    name="conv_ae",
    modality="image",
    config=ConvAEConfig,
    searchable=("depth", "filters", "latent_channels"),
    network="vigil.models.conv_ae.network:ConvAutoencoder",
    training="vigil.models.reconstruction:image_plan",
    depth_knob="depth",
)
