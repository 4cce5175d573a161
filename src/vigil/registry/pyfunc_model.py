"""The MLflow pyfunc model of a vigil package, logged "from code" (no pickle).

MLflow executes this file by path when it loads a package (``mlflow.pyfunc.load_model``,
``mlflow models serve``); the last lines then register the model with ``set_model``. Imported as
``vigil.registry.pyfunc_model`` (the library, tests) nothing runs.

The model is the package's ``Detector`` (``artifacts/model/``, see ``vigil.registry.package``):
each input is decoded with ``vigil.data.preprocess.decode_image`` and scored by
``Detector.score`` (images independently; for video models the rows of one request are one clip
in time order), exactly as the evaluate stage scored.
"""

from __future__ import annotations

import sys

# Under `mlflow models serve` the bundled code/ is on sys.path: importing it must not write
# bytecode into the package, whose every file is checksummed (vigil.registry.integrity).
sys.dont_write_bytecode = True

import vigil  # noqa: E402, F401  (before numpy/torch: it sets the OpenMP defaults)

import base64  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import mlflow.pyfunc  # noqa: E402
import numpy as np  # noqa: E402

_LIBRARY_NAME = "vigil.registry.pyfunc_model"
# The input schema is the package's explicit signature (binary `image` column); MLflow's advice
# to add type hints instead would otherwise print on every load.
warnings.filterwarnings("ignore", message="Add type hints to the `predict` method")


class VigilAnomalyModel(mlflow.pyfunc.PythonModel):
    """Encoded images in, ``score`` / ``is_anomaly`` / optional ``heatmap`` out."""

    def load_context(self, context) -> None:
        artifacts = Path(context.artifacts["model"])
        verify_loaded_package(artifacts.parents[1])
        self.load(artifacts)

    def load(self, artifacts_dir: Path) -> VigilAnomalyModel:
        """Load the package's detector (safetensors weights + detector.json)."""
        from vigil.registry.package import load_detector

        self.detector = load_detector(artifacts_dir)
        self.threshold = self.detector.threshold
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

        Video models score the images as one clip. Heat maps are overlays at each input's
        resolution (base64 PNG, BGR as OpenCV writes it).
        """
        import pandas as pd

        from vigil.registry.package import encode_png

        items = self.detector.score([np.asarray(image) for image in images], overlay=return_heatmap)
        table = pd.DataFrame(
            {
                "score": np.array([item.score for item in items], dtype=np.float64),
                "is_anomaly": [item.is_anomaly for item in items],
            }
        )
        if return_heatmap:
            table["heatmap"] = [
                base64.b64encode(encode_png(item.overlay)).decode("ascii") for item in items
            ]
        return table


def verify_loaded_package(package_root: Path) -> None:
    """A package installed by ``vigil pull`` (``versions/<v>/{manifest.json,package/}``) is checked
    against its manifest (files, promotion basis, signature); any other package only loads while
    no signing key is configured (``vigil.registry.integrity``). MLflow has already executed this
    file by then: verify with ``vigil pull`` before handing a package to ``mlflow models serve``."""
    import json

    from vigil.registry.integrity import KEY_ENV, Release, signing_key, verify_release

    manifest = package_root.parent / "manifest.json"
    if manifest.is_file():
        verify_release(package_root, Release.from_manifest(json.loads(manifest.read_text())))
    elif signing_key() is not None:
        raise ValueError(
            f"{package_root}: not installed by `vigil pull` (no manifest.json beside it), and "
            f"{KEY_ENV} is set: pull the version with `vigil pull` and serve that folder"
        )


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
