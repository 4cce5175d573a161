"""The detector's one JSON (``detector.json``): everything but the weights, stored once.

A detector folder holds exactly two files:

- ``detector.json``: the model spec (family, knobs, input size and the preprocessing the data
  went through, from the prepared manifest), the post-processing settings, the calibrated image
  and pixel thresholds with their calibration record, and the hashes of the data they were
  measured on;
- ``weights.safetensors``: the network's weights and, when the preprocessing aligns frames, the
  prepared alignment reference frame (tensor ``vigil.reference``, uint8 (h, w, C)).

The evaluate stage writes it once (``models/<dataset>/detector/``); the package, serving and
streams read it. Nothing here is pickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from vigil.atomic import atomic_write_text
from vigil.config import EvaluateConfig, ImagePrep, VideoPrep

DETECTOR_FORMAT = "vigil-detector/1"
DETECTOR_FILE = "detector.json"
WEIGHTS_FILE = "weights.safetensors"
REFERENCE_TENSOR = "vigil.reference"


class DetectorError(ValueError):
    """A detector folder is missing, invalid or from an older vigil; the message names it."""


class DetectorRecord(BaseModel):
    """``detector.json``. ``threshold`` is None until the evaluate stage calibrates it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str = DETECTOR_FORMAT
    spec: dict[str, Any]
    postprocess: EvaluateConfig
    threshold: float | None = None  # image/frame score: anomalous when score >= threshold
    pixel_threshold: float | None = None  # heat-map masks; its double is the colour scale's top
    calibration: dict[str, Any] = {}
    dataset: str | None = None
    data_hash: str | None = None
    test_split_hash: str | None = None

    @property
    def modality(self) -> str:
        return self.spec["modality"]

    @property
    def family(self) -> str:
        return self.spec["family"]

    @property
    def prep(self) -> ImagePrep:
        cls = VideoPrep if self.modality == "video" else ImagePrep
        return cls.model_validate(self.spec["prep"])


def write_record(folder: Path, record: DetectorRecord) -> Path:
    text = json.dumps(record.model_dump(mode="json"), indent=1, allow_nan=False) + "\n"
    return atomic_write_text(folder / DETECTOR_FILE, text)


def read_record(folder: Path | str) -> DetectorRecord:
    folder = Path(folder)
    path = folder / DETECTOR_FILE
    if not path.is_file():
        if (folder / "package.json").is_file():
            raise DetectorError(
                f"{folder}: a package from an older vigil (package.json, no {DETECTOR_FILE}); "
                "re-register it with `dvc repro -f evaluate@<dataset> register@<dataset>`"
            )
        raise DetectorError(f"{path}: missing (the evaluate stage writes the detector)")
    try:
        raw = json.loads(path.read_text())
        record = DetectorRecord.model_validate(raw)
    except (json.JSONDecodeError, ValidationError) as error:
        raise DetectorError(f"{path}: invalid detector record: {error}") from None
    if record.format != DETECTOR_FORMAT:
        raise DetectorError(
            f"{path}: format {record.format!r}, this vigil reads {DETECTOR_FORMAT!r}"
        )
    return record
