"""The building blocks of every vigil settings file: strict models, the error type that names
the file and key, shared field types (ROI, frame size), and reading + validating a YAML mapping.
``vigil.config`` (params.yaml), serving and retraining configs are built from these."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A params file or a field in it is wrong; the message names the file and the key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


M = TypeVar("M", bound=BaseModel)


def _check_roi(value: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
    """A region of interest (x, y, w, h): origin not negative, width and height positive."""
    if value is None:
        return None
    x, y, w, h = value
    if x < 0 or y < 0:
        raise ValueError(f"roi origin (x={x}, y={y}) must not be negative")
    if w <= 0 or h <= 0:
        raise ValueError(f"roi size (w={w}, h={h}) must be positive")
    return value


#: Optional region of interest ``(x, y, w, h)`` in pixels; the same rules wherever one is set.
Roi = Annotated[tuple[int, int, int, int] | None, AfterValidator(_check_roi)]

MIN_FRAME_SIDE, MAX_FRAME_SIDE = 4, 8192


def _check_frame_size(value: tuple[int, int]) -> tuple[int, int]:
    """A resize target (height, width): both sides in [MIN_FRAME_SIDE, MAX_FRAME_SIDE]."""
    if not all(MIN_FRAME_SIDE <= side <= MAX_FRAME_SIDE for side in value):
        raise ValueError(
            f"size (height, width): each side must be between {MIN_FRAME_SIDE} "
            f"and {MAX_FRAME_SIDE} pixels"
        )
    return value


#: A frame size ``(height, width)`` after resize, range-checked.
FrameSize = Annotated[tuple[int, int], AfterValidator(_check_frame_size)]


def _format_validation_error(path: Path, error: ValidationError, what: str = "parameters") -> str:
    lines = [f"{path}: invalid {what}"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (typo?)")
        elif not key:  # a check across sections names its keys in the message
            lines.append(f"  {item['msg']}")
        else:
            lines.append(f"  {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def read_yaml_mapping(path: Path | str, what: str = "params file") -> dict:
    """The top-level mapping of a YAML file; ConfigError names the file for any problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return raw


def validate_config(model: type[M], raw: dict, path: Path | str, what: str) -> M:
    """``model.model_validate(raw)``; ConfigError naming the file and every bad key."""
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(Path(path), error, what)) from None


