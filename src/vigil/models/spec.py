"""The model spec (``model.json``) and trained-model files (``weights.safetensors``).

A spec is a JSON-able dict that rebuilds the network exactly: its family, modality, input
channels, image size, the preprocessing the data went through (whose ``normalize`` picks the
output activation) and the family's knobs. Weights are stored with safetensors, so loading a
model never unpickles code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ValidationError
from safetensors.torch import load_file, save_file
from torch import nn

from vigil.atomic import atomic_write
from vigil.config import ImagePrep
from vigil.models.registry import Family, UnknownFamilyError, get_family

SPEC_FORMAT = "vigil-model/2"
SPEC_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"


class ModelSpecError(ValueError):
    """A model spec or trained-model folder is missing or invalid; the message names it."""


def model_spec(
    family: str,
    in_channels: int,
    image_size: tuple[int, int],
    model_cfg: BaseModel,
    *,
    prep: ImagePrep,
) -> dict[str, Any]:
    """The JSON-able spec stored in ``model.json`` (and inside the detector's JSON). Knobs that
    depend on the image size (a config's ``at_size``, e.g. draem's ``seg_stride: auto``) are
    stored resolved, so the spec alone rebuilds the same network."""
    fam = _family(family)
    if not isinstance(model_cfg, fam.config):
        raise ModelSpecError(
            f"family {family!r} needs a {fam.config.__name__}, got {type(model_cfg).__name__}"
        )
    if hasattr(model_cfg, "at_size"):
        model_cfg = model_cfg.at_size(int(image_size[0]), int(image_size[1]))
    return {
        "format": SPEC_FORMAT,
        "family": family,
        "modality": fam.modality,
        "in_channels": int(in_channels),
        "image_size": [int(image_size[0]), int(image_size[1])],
        "prep": prep.model_dump(mode="json"),
        "model": model_cfg.model_dump(mode="json"),
    }


def _family(name: str) -> Family:
    try:
        return get_family(name)
    except UnknownFamilyError as error:
        raise ModelSpecError(str(error)) from None


def spec_family(spec: dict[str, Any]) -> Family:
    """The family of a spec; specs written before families existed are refused by name."""
    if "family" not in spec:
        raise ModelSpecError(
            f"model spec of format {spec.get('format', '?')!r} has no 'family': written by an "
            "older vigil; retrain it (`dvc repro -f train@<dataset>`)"
        )
    return _family(spec["family"])


def model_config(spec: dict[str, Any]) -> BaseModel:
    """The typed family config inside a spec."""
    family = spec_family(spec)
    try:
        return family.config.model_validate(dict(family.spec_defaults) | spec["model"])
    except (KeyError, TypeError, ValidationError) as error:
        raise ModelSpecError(f"model spec has an invalid 'model' section: {error}") from None


def build_model(spec: dict[str, Any]) -> nn.Module:
    """A fresh (untrained) network for ``spec``; checks the image size against the network."""
    family = spec_family(spec)  # first: a spec of an older vigil is refused with its remedy
    for key in ("in_channels", "image_size", "model", "prep"):
        if key not in spec:
            raise ModelSpecError(f"model spec lacks {key!r} (has: {', '.join(sorted(spec))})")
    output = "identity" if spec["prep"].get("normalize", "unit") == "zscore" else "sigmoid"
    network = family.build(spec["in_channels"], model_config(spec), output)
    network.encoding_shape(*spec["image_size"])  # raises ImageTooSmallError naming the sizes
    # channels-last convolutions run 1.3-2x faster on CPU (oneDNN's native layout: no reorder
    # per layer; bench/model.py, README) and suit GPUs; weights files stay plain NCHW
    return network.to(memory_format=torch.channels_last)


def save_trained(model_dir: Path | str, model: nn.Module, spec: dict[str, Any]) -> Path:
    """Write ``weights.safetensors`` then ``model.json`` into ``model_dir``, each atomically.

    Returns the weights path.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    weights = model_dir / WEIGHTS_FILE
    save_weights(weights, model)
    atomic_write(
        model_dir / SPEC_FILE, lambda tmp: tmp.write_text(json.dumps(spec, indent=1) + "\n")
    )
    return weights


def save_weights(path: Path, model: nn.Module, extra: dict | None = None) -> Path:
    """The network's state dict (plus ``extra`` tensors) as safetensors, atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update(extra or {})
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": SPEC_FORMAT}))
    return path


def read_spec(model_dir: Path | str) -> dict[str, Any]:
    path = Path(model_dir) / SPEC_FILE
    if not path.is_file():
        raise ModelSpecError(f"{path}: no model spec (run the train stage first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ModelSpecError(f"{path}: not valid JSON: {error}") from None


def load_network(spec: dict[str, Any], weights: Path, device: str = "cpu") -> tuple[nn.Module, dict]:
    """(network in eval mode with the weights in ``weights``, the file's other tensors)."""
    if not weights.is_file():
        raise ModelSpecError(f"{weights}: weights file missing")
    model = build_model(spec)
    tensors = load_file(str(weights), device=device)
    own = set(model.state_dict())
    extra = {k: v for k, v in tensors.items() if k not in own}
    try:
        model.load_state_dict({k: v for k, v in tensors.items() if k in own})
    except RuntimeError as error:
        raise ModelSpecError(f"{weights}: weights do not match the model spec: {error}") from None
    return model.to(device).eval(), extra


def load_trained(model_dir: Path | str, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """(network in eval mode with its trained weights, spec) from a train-stage folder."""
    model_dir = Path(model_dir)
    spec = read_spec(model_dir)
    model, _ = load_network(spec, model_dir / WEIGHTS_FILE, device)
    return model, spec
