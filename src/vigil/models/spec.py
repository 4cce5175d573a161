"""The model spec (``model.json``) and trained-model files (``weights.safetensors``).

A spec is a JSON-able dict that rebuilds the network exactly: modality, input channels, image
size, the input normalization (which picks the output activation) and the model config. Weights
are stored with safetensors, so loading a model never unpickles code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from torch import nn

from vigil.atomic import atomic_write
from vigil.config import ImageModelConfig, ImagePrep, VideoModelConfig
from vigil.models.autoencoder import ConvAutoencoder, check_size
from vigil.models.predictor import FramePredictor

SPEC_FORMAT = "vigil-model/1"
SPEC_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"


class ModelSpecError(ValueError):
    """A model spec or trained-model folder is missing or invalid; the message names it."""


def model_spec(
    modality: str,
    in_channels: int,
    image_size: tuple[int, int],
    model_cfg: ImageModelConfig | VideoModelConfig,
    *,
    prep: ImagePrep | None = None,
) -> dict[str, Any]:
    """The JSON-able spec stored in ``model.json``.

    ``prep`` (the preprocessing the data went through) is stored whole so serving can apply the
    same preprocessing; its ``normalize`` picks the output activation (``unit`` -> sigmoid,
    ``zscore`` -> identity). Without it, ``unit`` is assumed.
    """
    expected = ImageModelConfig if modality == "image" else VideoModelConfig
    if modality not in ("image", "video"):
        raise ModelSpecError(f"unknown modality {modality!r}; expected 'image' or 'video'")
    if not isinstance(model_cfg, expected):
        raise ModelSpecError(
            f"{modality} model needs a {expected.__name__}, got {type(model_cfg).__name__}"
        )
    return {
        "format": SPEC_FORMAT,
        "modality": modality,
        "in_channels": int(in_channels),
        "image_size": [int(image_size[0]), int(image_size[1])],
        "normalize": prep.normalize if prep is not None else "unit",
        "prep": prep.model_dump(mode="json") if prep is not None else None,
        "model": model_cfg.model_dump(mode="json"),
    }


def model_config(spec: dict[str, Any]) -> ImageModelConfig | VideoModelConfig:
    """The typed model config inside a spec."""
    cls = ImageModelConfig if spec.get("modality") == "image" else VideoModelConfig
    try:
        return cls.model_validate(spec["model"])
    except (KeyError, ValidationError) as error:
        raise ModelSpecError(f"model spec has an invalid 'model' section: {error}") from None


def build_model(spec: dict[str, Any]) -> nn.Module:
    """A fresh (untrained) network for ``spec``; checks the image size against the depth."""
    for key in ("modality", "in_channels", "image_size", "model"):
        if key not in spec:
            raise ModelSpecError(f"model spec lacks {key!r} (has: {', '.join(sorted(spec))})")
    modality = spec["modality"]
    if modality not in ("image", "video"):
        raise ModelSpecError(f"unknown modality {modality!r}; expected 'image' or 'video'")
    cfg = model_config(spec)
    output = "identity" if spec.get("normalize", "unit") == "zscore" else "sigmoid"
    height, width = spec["image_size"]
    if isinstance(cfg, ImageModelConfig):
        check_size(height, width, cfg.depth)
        return ConvAutoencoder(spec["in_channels"], cfg, output=output)
    check_size(height, width, cfg.encoder_depth)
    return FramePredictor(spec["in_channels"], cfg, output=output)


def save_trained(model_dir: Path | str, model: nn.Module, spec: dict[str, Any]) -> Path:
    """Write ``weights.safetensors`` then ``model.json`` into ``model_dir``, each atomically.

    Returns the weights path.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = model_dir / WEIGHTS_FILE
    atomic_write(weights, lambda tmp: save_file(tensors, str(tmp), metadata={"format": SPEC_FORMAT}))
    atomic_write(
        model_dir / SPEC_FILE, lambda tmp: tmp.write_text(json.dumps(spec, indent=1) + "\n")
    )
    return weights


def read_spec(model_dir: Path | str) -> dict[str, Any]:
    path = Path(model_dir) / SPEC_FILE
    if not path.is_file():
        raise ModelSpecError(f"{path}: no model spec (run the train stage first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ModelSpecError(f"{path}: not valid JSON: {error}") from None


def load_trained(model_dir: Path | str, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """(network in eval mode with its trained weights, spec) from a train-stage folder."""
    model_dir = Path(model_dir)
    spec = read_spec(model_dir)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelSpecError(f"{weights}: weights file missing")
    model = build_model(spec)
    try:
        model.load_state_dict(load_file(str(weights), device=device))
    except RuntimeError as error:
        raise ModelSpecError(f"{weights}: weights do not match {model_dir / SPEC_FILE}: {error}")
    return model.to(device).eval(), spec
