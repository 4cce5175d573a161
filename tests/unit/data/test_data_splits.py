"""Splits: deterministic, stratified, never empty on either side."""

from __future__ import annotations

from collections import Counter

import pytest

from vigil.data.splits import SplitError, split_labelled, split_normal, stratified_split


def test_split_normal_fraction_and_determinism():
    a = split_normal(100, 0.15, seed=0)
    assert Counter(a) == {"train": 85, "val": 15}
    assert a == split_normal(100, 0.15, seed=0)
    assert a != split_normal(100, 0.15, seed=1)


def test_small_sets_keep_both_sides_non_empty():
    assert Counter(split_normal(2, 0.01, seed=0)) == {"train": 1, "val": 1}
    assert Counter(split_normal(3, 0.99, seed=0)) == {"train": 1, "val": 2}
    with pytest.raises(SplitError, match="at least 2 normal training clips"):
        split_normal(1, 0.2, seed=0, what="clips")


def test_split_labelled_is_stratified_by_defect():
    strata = ["good"] * 20 + ["crack"] * 10 + ["dent"] * 3 + ["fray"] * 1
    out = split_labelled(strata, 0.5, seed=0)
    tune = Counter(s for s, o in zip(strata, out) if o == "tune")
    test = Counter(s for s, o in zip(strata, out) if o == "test")
    assert tune["good"] == 10 and tune["crack"] == 5
    assert tune["dent"] >= 1 and test["dent"] >= 1
    assert test["fray"] == 1 and tune["fray"] == 0  # a lone item goes to test (the gate)


def test_adding_a_stratum_does_not_reshuffle_the_others():
    base = ["good"] * 10 + ["crack"] * 6
    more = base + ["dent"] * 4
    assert split_labelled(base, 0.5, seed=3) == split_labelled(more, 0.5, seed=3)[: len(base)]


def test_split_labelled_needs_two_units_and_fills_tune():
    with pytest.raises(SplitError, match="at least 2 labelled test clips"):
        split_labelled(["anomalous"], 0.5, seed=0, what="clips")
    out = split_labelled(["anomalous", "normal"], 0.5, seed=0)
    assert sorted(out) == ["test", "tune"]


def test_fraction_must_be_open_interval():
    with pytest.raises(ValueError, match="fraction"):
        stratified_split(["a", "b"], 1.0, 0, ("x", "y"))
