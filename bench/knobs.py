"""``family[@N][:key=value...]``: one benchmark run's family, image size and knobs, as the
benchmarks' ``--families`` options take them (e.g. a baseline: ``draem:anomaly_map=fused``)."""

from __future__ import annotations

import sys

import yaml


def split_knobs(entry: str) -> tuple[str, list[str]]:
    """``family[@N][:key=value...]`` -> (``family[@N]``, ["key=value", ...])."""
    spec, *knobs = entry.split(":")
    return spec, knobs


def knob_overrides(family: str, knobs: list[str]) -> dict:
    """["restored_context=false", "evaluate.smoothing_window=1"] -> a per-dataset override: a
    plain key is the family's knob (``model.<family>.<key>``), a dotted one a params path."""
    override: dict = {}
    for knob in knobs:
        key, sep, value = knob.partition("=")
        if not sep:
            sys.exit(f"knob {knob!r}: expected key=value (e.g. restored_context=false)")
        path = key.split(".") if "." in key else ["model", family, key]
        node = override
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = yaml.safe_load(value)
    return override


def family_knobs(knobs: list[str]) -> dict:
    """["anomaly_map=segmentation"] -> {"anomaly_map": "segmentation"}: the family's own knobs
    only (a dotted params path is refused: these benchmarks build the network alone)."""
    if any("." in knob.partition("=")[0] for knob in knobs):
        sys.exit(f"knobs {knobs}: only the family's own knobs apply here (no dotted paths)")
    return knob_overrides("family", knobs).get("model", {}).get("family", {})
