"""The MLflow pyfunc model of a vigil package, logged "from code" (no pickle).

MLflow executes this file by path when it loads a package (``mlflow.pyfunc.load_model``,
``mlflow models serve``); the last lines then register the model with ``set_model``. Imported as
``vigil.registry.pyfunc_model`` (the library, tests) nothing runs.

The model decodes each input with ``vigil.data.preprocess.decode_image``, preprocesses it with
``preprocess_frame`` (the prepare stage's code, aligned to the package's ``reference.png`` when
the prep aligns frames, as the prepared data was) and scores it with
``vigil.evaluation.scoring.score_frames`` (images) or ``score_video`` (video: the rows of one
request are one clip in time order), the evaluate stage's code, with the settings and threshold
stored in ``artifacts/model/package.json``. See ``vigil.registry.package`` for the layout.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

_LIBRARY_NAME = "vigil.registry.pyfunc_model"


class VigilAnomalyModel(mlflow.pyfunc.PythonModel):
    """Encoded images in, ``score`` / ``is_anomaly`` / optional ``heatmap`` out."""

    def load_context(self, context) -> None:
        self.load(Path(context.artifacts["model"]))

    def load(self, artifacts_dir: Path) -> VigilAnomalyModel:
        """Load the network (safetensors) and settings from the package's artifacts folder."""
        import torch

        from vigil.config import EvaluateConfig, ImagePrep, VideoPrep
        from vigil.models import load_trained
        from vigil.registry.package import read_package_metadata, read_reference

        meta = read_package_metadata(artifacts_dir)
        self.meta = meta
        self.modality = meta["modality"]
        prep_cls = VideoPrep if self.modality == "video" else ImagePrep
        self.prep = prep_cls.model_validate(meta["prep"])
        self.postprocess = EvaluateConfig.model_validate(meta["postprocess"])
        self.threshold = float(meta["threshold"])
        self.pixel_threshold = meta.get("pixel_threshold")
        # uint8 (h, w, C) prepared reference frame, or None when the prep does not align
        self.reference = read_reference(artifacts_dir, self.prep)
        self.network, _ = load_trained(Path(artifacts_dir))
        self.network.eval()
        self._torch = torch
        return self

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        """DataFrame with an ``image`` column of encoded bytes -> DataFrame of results (N rows)."""
        from vigil.data.preprocess import decode_image
        from vigil.registry.package import INPUT_COLUMN

        params = params or {}
        column = _column(model_input, INPUT_COLUMN)
        images = [decode_image(_as_bytes(value), f"row {i}") for i, value in enumerate(column)]
        return self.score_decoded(images, return_heatmap=bool(params.get("return_heatmap")))

    def score_decoded(self, images: Sequence[np.ndarray], *, return_heatmap: bool = False):
        """Decoded images (gray (H, W) or BGR (H, W, 3), as OpenCV reads them) -> DataFrame.

        Also accepts a uint8 array (N, H, W[, C]). Video models score the images as one clip.
        """
        import pandas as pd

        from vigil.data.preprocess import preprocess_frame

        if len(images) == 0:
            raise ValueError("empty batch: send at least one image")
        frames = np.stack(
            [preprocess_frame(np.asarray(image), self.prep, self.reference) for image in images]
        )
        scores, maps = self.score_frames(frames)
        table = pd.DataFrame(
            {
                "score": scores.astype(np.float64),
                "is_anomaly": scores >= self.threshold,
            }
        )
        if return_heatmap:
            table["heatmap"] = [self._heatmap_png(frames[i], maps[i]) for i in range(len(frames))]
        return table

    def score_frames(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed uint8 (N, h, w, C) -> (scores float (N,), post-processed maps (N, h, w))."""
        from vigil.evaluation import scoring

        score = scoring.score_video if self.modality == "video" else scoring.score_frames
        with self._torch.inference_mode():
            result = score(self.network, frames, self.prep, self.postprocess)
        return np.asarray(result.scores, dtype=np.float64), np.asarray(result.maps)

    def _heatmap_png(self, frame: np.ndarray, error_map: np.ndarray) -> str:
        """Colorized overlay (BGR) of one frame as base64 PNG; colour scale 0..2x pixel threshold."""
        from vigil.evaluation.postprocess import overlay
        from vigil.registry.package import encode_png

        vmax = self.pixel_threshold or float(np.max(error_map)) or 1.0
        image = overlay(frame, np.asarray(error_map), 2.0 * float(vmax))
        return base64.b64encode(encode_png(image)).decode("ascii")


def _column(model_input, name: str) -> list:
    """The ``name`` column of a DataFrame (or a dict/list of encoded images) as a list."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if name not in model_input.columns:
            raise ValueError(f"input has no {name!r} column (columns: {list(model_input.columns)})")
        return list(model_input[name])
    if isinstance(model_input, dict) and name in model_input:
        return list(model_input[name])
    if isinstance(model_input, (list, tuple)):
        return list(model_input)
    raise ValueError(
        f"expected a DataFrame with an {name!r} column, got {type(model_input).__name__}"
    )


def _as_bytes(value) -> bytes:
    """bytes as given; a str is taken as base64 (how JSON carries binary)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return base64.b64decode(value)
    raise ValueError(f"expected encoded image bytes, got {type(value).__name__}")


if __name__ != _LIBRARY_NAME:  # executed by MLflow from the package file, not imported as library
    from mlflow.models import set_model

    set_model(VigilAnomalyModel())
