"""Model families: one folder per family under ``vigil.models``, found by name.

A family is a ``Family`` record named ``FAMILY`` in its package's ``__init__.py``; that line is
its registration. ``get_family("conv_ae")`` imports ``vigil.models.conv_ae``; a dotted name
(``my_plugin.family``) imports that module instead, so a family can also live outside vigil.
Everything else (training, sweep, detector, package, serving, streams) works through the record
and the network protocol below, with no per-family branches.

Network protocol (``Family.build`` returns an ``nn.Module``):

- every network: ``encoding_shape(height, width) -> (C, H', W')`` (the sweep's encoding size);
- image families: ``forward(x (B, C, H, W)) -> AnomalyOutput`` whose ``error_map``
  (B, 1, H, W) is the anomaly map;
- video families: ``stream(frame (B, C, H, W), state) -> (AnomalyOutput | None, state)``:
  ``state=None`` starts a stream; the output is None while the family cannot score yet (e.g. a
  predictor's first frame).

The record is light (no torch import): ``network`` and ``training`` are ``"module:attribute"``
references resolved on first use.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel


class UnknownFamilyError(ValueError):
    """No model family of that name; the message lists the known ones."""


@dataclass(frozen=True)
class Family:
    """What a model family declares once.

    ``config``: its strict knobs (``model.<name>`` in params.yaml). ``searchable``: the knobs
    that set the encoding size, which the sweep may search. ``network``: ``"module:callable"``
    with signature ``(in_channels, cfg, output) -> nn.Module``. ``training``:
    ``"module:callable"`` with signature ``(network, data, prep, train_cfg) -> TrainingPlan``.
    ``depth_knob``: the searchable knob that halves the encoding's spatial size per step (the
    sweep's ``encoding_side`` sets it from the image size; None: the family has none).
    ``map_knob``: a knob read only when scoring (the weights do not depend on it) that picks
    which anomaly map the network outputs; its value ``auto`` lets the evaluate stage choose
    among ``map_choices`` on the labelled tune split (``evaluation.map_choice``), and until
    then (sweep, unlabelled tune) the network reads ``auto`` as ``map_choices[0]``.
    ``heat_knob``: a scoring-only knob that picks, of ``map_choices``, the heat map (overlays,
    pixel metrics, pixel threshold) apart from the map the image score reads; ``same`` (and
    ``auto`` until evaluate chooses on the tune split's masks) shows the scored map.
    ``spec_defaults``: ``(knob, value)`` pairs for knobs added after models were saved whose
    default has since changed: a stored spec without the knob was trained with ``value``.
    """

    name: str
    modality: Literal["image", "video"]
    config: type[BaseModel]
    searchable: tuple[str, ...]
    network: str
    training: str
    depth_knob: str | None = None
    map_knob: str | None = None
    map_choices: tuple[str, ...] = ()
    heat_knob: str | None = None
    spec_defaults: tuple[tuple[str, Any], ...] = ()

    def build(self, in_channels: int, cfg: BaseModel, output: str = "sigmoid") -> Any:
        """A fresh network (raises ``ImageTooSmallError`` later, at the first size check)."""
        return _resolve(self.network)(in_channels, cfg, output)

    def plan(self, network: Any, data: Any, prep: Any, train_cfg: Any) -> Any:
        """The family's ``TrainingPlan`` (LightningModule + datasets) for ``network``."""
        return _resolve(self.training)(network, data, prep, train_cfg)

    @property
    def module(self) -> str:
        """The importable module that defines this family (shipped with packages)."""
        return self.network.split(":", 1)[0]


_FAMILIES: dict[str, Family] = {}


def _resolve(reference: str) -> Any:
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


def known_families() -> list[str]:
    """Names of the family folders under ``vigil.models`` plus families loaded so far."""
    here = Path(__file__).parent
    found = {info.name for info in pkgutil.iter_modules([str(here)]) if info.ispkg}
    return sorted(found | set(_FAMILIES))


def get_family(name: str, key: str = "model family") -> Family:
    """The family called ``name``; ``UnknownFamilyError`` names ``key`` and the known ones."""
    if name in _FAMILIES:
        return _FAMILIES[name]
    module_name = name if "." in name else f"{__package__}.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is None or not module_name.startswith(error.name):
            raise
        raise UnknownFamilyError(
            f"{key}: unknown key or model family {name!r} (known families: "
            f"{', '.join(known_families())})"
        ) from None
    family = getattr(module, "FAMILY", None)
    if not isinstance(family, Family) or family.name != name:
        raise UnknownFamilyError(f"{module_name}: defines no FAMILY named {name!r}")
    _FAMILIES[name] = family
    return family
