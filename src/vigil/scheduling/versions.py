"""What a retrain cycle looks at: the data versions DVC recorded for a dataset, the version the
last successful cycle trained on (``<state_dir>/state.json``), and the registry's champions."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from vigil.config import Params
from vigil.scheduling import RetrainConfig
from vigil.scheduling.dvc_tools import tracked_version, write_json_atomic
from vigil.scheduling.inbox_items import dataset_folders

STATE_FILE = "state.json"
CHAMPION = "champion"


# --- data versions ---------------------------------------------------------------------------


def _lock_out_md5(root: Path, rel: str) -> str | None:
    """md5 of ``rel`` as an output in dvc.lock (e.g. data/raw/capsules from `generate`)."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return None
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    target = Path(rel).as_posix().rstrip("/")
    for stage in stages.values():
        for out in stage.get("outs", []):
            if Path(out.get("path", "")).as_posix().rstrip("/") == target:
                return out.get("md5")
    return None


def data_version(root: Path, params: Params, dataset: str) -> dict[str, Any]:
    """What DVC has recorded for the dataset's data: source and ingested extra folder.

    ``{"version": short hash of both, "source": md5 | None, "extra": md5 | None}``. The source's
    md5 comes from ``<source>.dvc`` (a user folder under ``dvc add``) or from dvc.lock (a stage
    output such as the generated built-in data).
    """
    folders = dataset_folders(root, params, dataset)
    source_rel = params.dataset(dataset).source
    source = tracked_version(root / source_rel) or _lock_out_md5(root, source_rel)
    extra = tracked_version(folders.extra)
    digest = hashlib.sha256(json.dumps([source, extra]).encode()).hexdigest()[:12]
    return {"version": digest, "source": source, "extra": extra}


def load_state(root: Path, cfg: RetrainConfig) -> dict[str, Any]:
    path = root / cfg.state_dir / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {"last_trained": {}}


def save_state(root: Path, cfg: RetrainConfig, state: dict[str, Any]) -> None:
    write_json_atomic(root / cfg.state_dir / STATE_FILE, state)


def ensure_baseline(
    root: Path,
    cfg: RetrainConfig,
    params: Params,
    names: Iterable[str],
    versions: dict[str, dict] | None = None,
) -> dict[str, Any]:
    """The state, with a trained-on version for every dataset seen for the first time.

    At first sight the pipeline is taken as trained on the data as it is now; call this before
    any ingest (``vigil ingest`` does) so that data ingested later counts as new.
    """
    state = load_state(root, cfg)
    missing = [d for d in names if d not in state["last_trained"]]
    for d in missing:
        state["last_trained"][d] = (versions or {}).get(d, data_version(root, params, d))["version"]
    if missing:
        save_state(root, cfg, state)
    return state


# --- registry --------------------------------------------------------------------------------


def model_name(params: Params, dataset: str) -> str:
    return f"{params.register.model_name_prefix}-{dataset}-{params.dataset(dataset).modality}"


def champions(params: Params, datasets: Iterable[str]) -> dict[str, dict | None]:
    """The champion version of each dataset's registered model (None when there is none)."""
    from mlflow.exceptions import MlflowException

    from vigil.tracking import connect

    client = connect()
    found: dict[str, dict | None] = {}
    for dataset in datasets:
        name = model_name(params, dataset)
        try:
            version = client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException as error:
            if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                found[dataset] = None
                continue
            raise
        found[dataset] = {
            "model": name,
            "version": str(version.version),
            "created": version.creation_timestamp / 1000.0,
            "run_id": version.run_id,
        }
    return found
