"""The ``train`` stage for one dataset: the sweep's chosen knobs (``best_config.json``) or the
params' own, one ``fit``, and ``train.json`` (run id, objective, epochs) beside the weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from vigil.atomic import atomic_write_json
from vigil.config import ConfigError, Params
from vigil.models.registry import get_family
from vigil.training.fit import fit

TRAIN_RUN_FILE = "train.json"


def best_model_config(path: Path, family: str) -> BaseModel | None:
    """The sweep's chosen knobs for ``family``, or None when the file or its ``model`` key is
    absent; a file written for another family is an error naming both."""
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON: {error}") from None
    model = raw.get("model") if isinstance(raw, dict) else None
    if model is None:
        return None
    chosen = raw.get("family", family)
    if chosen != family:
        raise ConfigError(
            f"{path}: the sweep chose knobs for model family {chosen!r}, but the params use "
            f"{family!r}; rerun the sweep (`dvc repro sweep@<dataset>`)"
        )
    try:
        return get_family(family).config.model_validate(model)
    except ValidationError as error:
        raise ConfigError(f"{path}: invalid 'model' for family {family!r}: {error}") from None


def train_stage(
    params: Params,
    dataset: str,
    *,
    out: Path | None = None,
    best_config: Path | None = None,
    data: Path | None = None,
) -> dict[str, Any]:
    """Train ``dataset``'s model; writes ``<out>/model.json``, weights and ``train.json``."""
    modality = params.dataset(dataset).modality
    family = params.for_dataset(dataset).model.family_name(modality)
    out = out or Path("models") / dataset
    best = best_model_config(best_config or out / "best_config.json", family)
    result = fit(params, data or Path("data/prepared") / dataset, out, model_cfg=best,
                 run_name=f"train-{dataset}")
    summary = {
        "dataset": dataset,
        "family": family,
        "run_id": result.run_id,
        "objective": result.objective,
        "epochs": result.epochs,
        "wall_time_s": round(result.wall_time_s, 2),
        "model_from": "best_config" if best is not None else "params",
    }
    atomic_write_json(out / TRAIN_RUN_FILE, summary)
    return summary
