"""A training run (one per sweep trial) adds no library deprecation lines to the stage log."""

from __future__ import annotations

import warnings

from conftest import tiny_params

from vigil.training import fit


def test_fit_emits_no_deprecation_warnings(mlflow_store, image_dataset, tmp_path):
    """Lightning 2.6 builds a torch ``LeafSpec`` per data loader, deprecated in torch 2.13 (a
    FutureWarning in every trial's log); fit filters exactly that message."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fit(tiny_params(), image_dataset, tmp_path / "models" / "tiny")
    assert result.epochs == 1
    noisy = [
        f"{w.category.__name__}: {w.message}"
        for w in caught
        if issubclass(w.category, DeprecationWarning | FutureWarning) or "LeafSpec" in str(w.message)
    ]
    assert noisy == []
