"""Resuming an interrupted training run: its checkpoints, the state file that says which
settings and run wrote them, and the rules for when they may be resumed.

A run resumes from ``<out_dir>/checkpoints/last.ckpt`` only when the data, model and training
settings are the same (``fingerprint``), the run that wrote it did not complete, and the
checkpoint did not train past the new ``max_epochs``; otherwise the checkpoints are cleared with a
log line saying why, and training starts fresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from vigil.atomic import atomic_write_json
from vigil.config import Params
from vigil.data.prepared import PreparedDataset

log = logging.getLogger("vigil.training.fit")

STATE_FILE = "resume.json"
# Settings that may change between an interrupted run and its resumption.
RESUMABLE_KEYS = {
    "max_epochs", "max_minutes", "patience", "log_images_every_n_epochs", "num_workers",
    "accelerator",
}


def fingerprint(spec: dict, params: Params, data: PreparedDataset) -> str:
    train = {k: v for k, v in params.train.model_dump(mode="json").items() if k not in RESUMABLE_KEYS}
    blob = json.dumps({"spec": spec, "train": train, "data": data.content_hash}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _read_state(state_file: Path) -> dict[str, Any]:
    """The resume state (``fingerprint``, ``run_id``, ``completed``), or {} when unreadable."""
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _checkpoint_epoch(path: Path) -> int | None:
    """The 0-based index of the last epoch ``path`` finished (Lightning's ``epoch``), or None
    when the checkpoint cannot be read."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(ckpt["epoch"])
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is simply not resumed
        return None


def _resume_refusal(
    last: Path, state: dict[str, Any], fingerprint: str, max_epochs: int
) -> str | None:
    """Why ``last`` must not be resumed, or None when it may."""
    if state.get("fingerprint") != fingerprint:
        return "different data, model or training settings"
    if state.get("completed"):
        return f"the run that wrote it ({state.get('run_id')}) completed"
    epoch = _checkpoint_epoch(last)
    if epoch is None:
        return "it cannot be read"
    if epoch >= max_epochs:
        return f"it finished epoch {epoch + 1}, beyond max_epochs={max_epochs}"
    return None


def resume_checkpoint(
    ckpt_dir: Path, fingerprint: str, resume: bool, max_epochs: int
) -> tuple[Path | None, str | None]:
    """(last.ckpt, run id that wrote it) when an interrupted run with the same fingerprint can
    go on; otherwise clears the checkpoints (with a log line saying why) and returns (None, None).
    """
    state_file = ckpt_dir / STATE_FILE
    last = ckpt_dir / "last.ckpt"
    reason = "resume=False"
    if resume and last.is_file() and state_file.is_file():
        state = _read_state(state_file)
        reason = _resume_refusal(last, state, fingerprint, max_epochs)
        if reason is None:
            return last, state.get("run_id")
    elif resume:
        reason = "no resumable checkpoint"
    if ckpt_dir.exists():
        log.info("starting fresh: discarding checkpoints in %s (%s)", ckpt_dir, reason)
        shutil.rmtree(ckpt_dir)
    return None, None


def write_state(ckpt_dir: Path, fingerprint: str, run_id: str, completed: bool) -> None:
    """The resume state file: which settings and run wrote the checkpoints, and whether that
    run completed (a completed run is never resumed)."""
    state = {"fingerprint": fingerprint, "run_id": run_id, "completed": completed}
    atomic_write_json(ckpt_dir / STATE_FILE, state)
