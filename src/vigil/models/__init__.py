"""vigil.models: pure nn.Modules returning ``AnomalyOutput``, their spec, and one LightningModule.

``AnomalyModule`` lives in ``vigil.models.lightning`` and is imported lazily here, so serving
code that only needs ``load_trained`` does not import Lightning.
"""

from vigil.models.autoencoder import ConvAutoencoder, ImageTooSmallError
from vigil.models.outputs import AnomalyOutput
from vigil.models.predictor import ConvLSTMCell, FramePredictor
from vigil.models.spec import (
    ModelSpecError,
    build_model,
    load_trained,
    model_spec,
    save_trained,
)

__all__ = [
    "AnomalyModule",
    "AnomalyOutput",
    "ConvAutoencoder",
    "ConvLSTMCell",
    "FramePredictor",
    "ImageTooSmallError",
    "ModelSpecError",
    "build_model",
    "load_trained",
    "model_spec",
    "save_trained",
]


def __getattr__(name: str):
    if name == "AnomalyModule":
        from vigil.models.lightning import AnomalyModule

        return AnomalyModule
    raise AttributeError(f"module 'vigil.models' has no attribute {name!r}")
