"""Deterministic, stratified splits: train/val of normal data, tune/test of labelled data.

Units are whatever must not be divided: an image, or a whole video clip. Each stratum (defect
type for images; anomalous vs normal clip for video) is shuffled with its own seeded generator
(seed + stratum name, so adding a defect type does not reshuffle the others) and cut at
``round(n * fraction)``, clamped so that a stratum of two or more units puts at least one unit on
each side. A stratum of one unit goes to the second side (train, or test: the gate sees it).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np


class SplitError(ValueError):
    """A split would be empty (too few items or clips); the message says which and why."""


def stratified_split(
    strata: Sequence[str], fraction: float, seed: int, names: tuple[str, str]
) -> list[str]:
    """Assign each unit to ``names[0]`` (about ``fraction`` of each stratum) or ``names[1]``.

    ``strata``: the stratum of each unit, in unit order. Returns one name per unit, same order.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    out = [names[1]] * len(strata)
    groups: dict[str, list[int]] = {}
    for position, stratum in enumerate(strata):
        groups.setdefault(str(stratum), []).append(position)
    for stratum, members in sorted(groups.items()):
        rng = np.random.default_rng([seed, zlib.crc32(stratum.encode())])
        order = rng.permutation(len(members))
        n_first = round(len(members) * fraction)
        if len(members) >= 2:
            n_first = min(max(n_first, 1), len(members) - 1)
        else:
            n_first = 0
        for k in order[:n_first]:
            out[members[k]] = names[0]
    return out


def split_normal(n_units: int, val_fraction: float, seed: int, what: str = "items") -> list[str]:
    """``train`` / ``val`` for ``n_units`` normal units; both non-empty (needs >= 2 units)."""
    if n_units < 2:
        raise SplitError(
            f"need at least 2 normal training {what} to fill both train and val, got {n_units}"
        )
    return stratified_split(["normal"] * n_units, val_fraction, seed, ("val", "train"))


def split_labelled(
    strata: Sequence[str], tune_fraction: float, seed: int, what: str = "items"
) -> list[str]:
    """``tune`` / ``test`` for labelled units, stratified; both non-empty (needs >= 2 units)."""
    if len(strata) < 2:
        raise SplitError(
            f"need at least 2 labelled test {what} to fill both tune and test, got {len(strata)}"
        )
    out = stratified_split(strata, tune_fraction, seed, ("tune", "test"))
    if "tune" not in out:  # every stratum has one unit: give tune the first one of them
        rng = np.random.default_rng(seed)
        out[int(rng.integers(len(out)))] = "tune"
    return out
