"""The search space over the encoding size (``configs/search_space.yaml``), strictly validated.

The file maps a model family to its knobs: ``conv_ae: {depth: {choices: [2, 3]}, ...}``. Each knob
is ``{choices: [...]}`` or an integer range ``{low, high, log, step}``. Only the knobs a family
declares ``searchable`` (those that set the encoding size) may be searched; knobs left out keep
their ``model.<family>`` value from params.yaml.

``encoding_side`` is the knob that follows the input size: the spatial side (pixels, of the
shorter image side) of the encoding; each trial turns it into the family's ``depth_knob`` for
the prepared image size (``depth = round(log2(min(H, W) / side))``, at least 1). With
``depth: {choices: [2, 3, 4]}`` the same configuration gave a 16x larger code at 256x256 than at
64x64 (and reconstructed anomalies); ``encoding_side: {choices: [4, 8, 16]}`` keeps the code's
spatial size, and so what it can copy through, the same at every input size.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import optuna
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from vigil.config import ConfigError, ModelConfig
from vigil.models.registry import Family, UnknownFamilyError, get_family

ENCODING_SIDE = "encoding_side"


class SearchSpaceError(ConfigError):
    """The search space file is missing, empty or invalid; the message names the file and key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Choices(_Strict):
    choices: tuple[int, ...]

    @model_validator(mode="after")
    def _not_empty(self) -> Choices:
        if not self.choices:
            raise ValueError("choices must list at least one value")
        if len(set(self.choices)) != len(self.choices):
            raise ValueError(f"choices has duplicates: {list(self.choices)}")
        return self

    def values(self) -> list[int]:
        return list(self.choices)


class IntRange(_Strict):
    low: int
    high: int
    log: bool = False
    step: int = 1

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low < 1:
            raise ValueError(f"low must be >= 1, got {self.low}")
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        if self.step < 1 or (self.log and self.step != 1):
            raise ValueError("step must be >= 1, and 1 when log is true")
        return self

    def values(self) -> list[int]:
        """Every value of the range (grid sampler); log ranges take powers of two and the ends."""
        if not self.log:
            return list(range(self.low, self.high + 1, self.step))
        powers = {2**k for k in range(self.high.bit_length() + 1) if self.low <= 2**k <= self.high}
        return sorted(powers | {self.low, self.high})


Knob = Choices | IntRange


class SearchSpace(_Strict):
    """Knobs per model family (keys: family names)."""

    families: dict[str, dict[str, Knob]] = {}

    @model_validator(mode="after")
    def _known_knobs(self) -> SearchSpace:
        for name, knobs in self.families.items():
            try:
                family = get_family(name)
            except UnknownFamilyError as error:
                raise ValueError(str(error)) from None
            allowed = _searchable(family)
            unknown = sorted(set(knobs) - set(allowed))
            if unknown:
                raise ValueError(
                    f"{name}: cannot search {', '.join(unknown)} (searchable: "
                    f"{', '.join(allowed)})"
                )
            side = knobs.get(ENCODING_SIDE)
            if side is not None and min(side.values()) < 1:
                raise ValueError(
                    f"{name}.{ENCODING_SIDE}: a side in pixels must be >= 1, got "
                    f"{min(side.values())}"
                )
            if ENCODING_SIDE in knobs and family.depth_knob in knobs:
                raise ValueError(
                    f"{name}: search {ENCODING_SIDE} or {family.depth_knob}, not both "
                    f"({ENCODING_SIDE} sets {family.depth_knob} from the image size)"
                )
        return self

    def knobs(self, family: str) -> dict[str, Knob]:
        knobs = self.families.get(family)
        if not knobs:
            example = get_family(family).searchable[0]
            raise SearchSpaceError(
                f"search space has no knobs for the {family!r} model family (key {family!r} is "
                f"missing or empty); add e.g. {example}: {{choices: [2, 3]}}"
            )
        return knobs


def _searchable(family: Family) -> tuple[str, ...]:
    """Knobs the family may search: its own plus ``encoding_side`` when it has a depth knob."""
    return family.searchable + ((ENCODING_SIDE,) if family.depth_knob else ())


def depth_for_side(side: int, height: int, width: int) -> int:
    """Downsampling steps that bring the shorter of ``height`` x ``width`` closest to ``side``
    pixels (at least 1): 64 px and side 8 -> 3, 256 px and side 8 -> 5."""
    return max(1, round(math.log2(min(height, width) / side)))


def _format(path: Path, error: ValidationError) -> str:
    lines = [f"{path}: invalid search space"]
    for item in error.errors():
        key = ".".join(
            str(p) for p in item["loc"]
            if not str(p).startswith(("Choices", "IntRange")) and p != "families"
        )
        lines.append(f"  {key or '(top level)'}: {item['msg']}")
    return "\n".join(lines)


def parse_space(raw: Any, path: Path | str = "configs/search_space.yaml") -> SearchSpace:
    path = Path(path)
    if not raw:
        raise SearchSpaceError(
            f"{path}: search space is empty; define knobs per model family (e.g. 'conv_ae')"
        )
    if not isinstance(raw, dict):
        raise SearchSpaceError(f"{path}: expected a mapping, got {type(raw).__name__}")
    try:
        return SearchSpace.model_validate({"families": raw})
    except ValidationError as error:
        raise SearchSpaceError(_format(path, error)) from None


def load_space(path: Path | str) -> SearchSpace:
    """Read and validate the search space file (raises SearchSpaceError naming file and key)."""
    path = Path(path)
    if not path.is_file():
        raise SearchSpaceError(f"{path}: search space file not found (params sweep.space)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SearchSpaceError(f"{path}: not valid YAML: {error}") from None
    return parse_space(raw, path)


def suggest(trial: optuna.Trial, knobs: dict[str, Knob]) -> dict[str, int]:
    """One value per knob, drawn by the trial's sampler."""
    values: dict[str, int] = {}
    for name, knob in knobs.items():
        if isinstance(knob, Choices):
            values[name] = int(trial.suggest_categorical(name, knob.values()))
        else:
            values[name] = trial.suggest_int(
                name, knob.low, knob.high, step=knob.step, log=knob.log
            )
    return values


def grid(knobs: dict[str, Knob]) -> dict[str, list[int]]:
    """The full grid for ``optuna.samplers.GridSampler``."""
    return {name: knob.values() for name, knob in knobs.items()}


def grid_size(knobs: dict[str, Knob]) -> int:
    return len(list(itertools.product(*grid(knobs).values())))


def model_config(
    base: ModelConfig, family: str, values: dict[str, int], size: tuple[int, int] | None = None
):
    """The family's params.yaml knobs (``model.<family>``) with the searched ones replaced;
    ``encoding_side`` becomes the family's depth knob for images of ``size`` (H, W)."""
    current = base.family_config(family)
    values = dict(values)
    if ENCODING_SIDE in values:
        if size is None:
            raise ValueError(f"{ENCODING_SIDE} needs the image size")
        knob = get_family(family).depth_knob
        values[knob] = depth_for_side(values.pop(ENCODING_SIDE), *size)
    try:
        return type(current).model_validate({**current.model_dump(), **values})
    except ValidationError as error:
        raise SearchSpaceError(f"search space gives an invalid {family} model: {error}") from None
