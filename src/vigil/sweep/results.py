"""What a sweep found: one row per trial (``sweep.json``'s data), the pruning summary and the
chosen trial (the best feasible one among the first ``sweep.n_trials``)."""

from __future__ import annotations

import logging
import math
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from vigil.sweep.identity import SweepError

log = logging.getLogger(__name__)


def trial_rows(trials: list[FrozenTrial]) -> list[dict[str, Any]]:
    """One row per trial: number, state, params, value, duration, epochs and its attributes."""
    rows = []
    for t in trials:
        a = t.user_attrs
        duration = t.duration.total_seconds() if t.duration else None
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "params": dict(t.params),
                "value": t.value,
                "duration_s": duration,
                "epochs_run": a.get("epochs", len(t.intermediate_values)),
                **{
                    k: a.get(k)
                    for k in (
                        "encoding_size",
                        "encoding_shape",
                        "total_error",
                        "anomaly_error",
                        "normal_error",
                        "ratio",
                        "feasible",
                        "objective",
                        "evidence",
                        "run_id",
                        "worker",
                        "epoch_budget",
                        "model",
                    )
                },
            }
        )
    return rows


def pruning_summary(rows: list[dict[str, Any]], epochs_per_trial: int) -> dict[str, Any]:
    """Epochs and (estimated) seconds that pruning saved: for each pruned trial, the unrun
    epochs of its budget times its measured seconds per epoch."""
    pruned = [r for r in rows if r["state"] == "PRUNED"]
    run_epochs = sum(max(1, r["epochs_run"] or 1) for r in pruned)
    saved_epochs, saved_s, spent_s = 0, 0.0, 0.0
    for r in pruned:
        ran = max(1, r["epochs_run"] or 1)
        seconds = r["duration_s"] or 0.0
        spent_s += seconds
        saved_epochs += max(0, epochs_per_trial - ran)
        saved_s += max(0, epochs_per_trial - ran) * seconds / ran
    total_s = sum(r["duration_s"] or 0.0 for r in rows)
    return {
        "sweep_ran": True,
        "n_trials": len(rows),
        "n_pruned": len(pruned),
        "pruned_epochs_run": run_epochs,
        "epochs_saved": saved_epochs,
        "time_saved_s_est": round(saved_s, 2),
        "pruned_time_s": round(spent_s, 2),
        "sweep_trial_time_s": round(total_s, 2),
        "fraction_saved_est": round(saved_s / (total_s + saved_s), 4) if saved_s else 0.0,
    }

def choose_best(trials: list[FrozenTrial], study: str) -> tuple[FrozenTrial, bool]:
    """(the chosen trial, whether it is feasible) among ``trials`` (the first n_trials): the
    highest objective among feasible completed trials (lowest trial number on a tie), else the
    lowest normal error. SweepError when none completed."""
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if not done:
        states: dict[str, int] = {}
        for t in trials:
            states[t.state.name] = states.get(t.state.name, 0) + 1
        raise SweepError(
            f"study {study} has no completed trial among its first {len(trials)} (states: "
            f"{states}); raise sweep.n_trials or turn sweep.pruning off"
        )
    feasible = [t for t in done if t.user_attrs.get("feasible")]
    if feasible:
        return max(feasible, key=lambda t: (t.value, -t.number)), True
    log.warning("no trial met sweep.max_normal_error; choosing the lowest normal error")
    return min(done, key=lambda t: (t.user_attrs.get("normal_error", math.inf), t.number)), False
