"""Sweep benchmark: wall time of the sweep with and without pruning, and 2 workers vs 1.

    .venv/bin/python bench/sweep.py [--dataset capsules] [--params params.yaml]
                                    [--trials N] [--epochs E] [--skip-workers]
                                    [--skip-no-pruning] [--storage postgresql://...]
                                    [--data DIR]

Runs the real sweep (real ``fit`` per trial) on ``data/prepared/<dataset>`` (run
``dvc repro prepare@<dataset>`` first) with the sweep settings of ``params.yaml``, unless
``--trials``/``--epochs`` shrink them. Each configuration gets its own Optuna journal file (or,
with ``--storage URL``, e.g. a PostgreSQL database as team mode shares, a study of its own there,
deleted afterwards) and MLflow SQLite store in a temp folder, so nothing touches the project's
stores:

1. pruning on, 1 worker      2. pruning off, 1 worker      3. pruning on, 2 workers

On 2 cores a second worker cannot double throughput: one worker already runs torch on both
cores (intra-op threads), two workers get one thread each, and each spawned worker pays its own
start-up (imports, loading the dataset); the speed-up is bounded by how poorly one small model
uses two threads (small convolutions, Python/Lightning overhead per batch), not by the study.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
import vigil  # noqa: E402,F401  (first: OpenMP defaults before torch loads, see vigil.threads)


def _one(
    params, dataset_dir: Path, workers: int, pruning: bool, label: str, storage: str | None
) -> dict:
    import optuna

    from vigil.sweep.study import run_sweep

    params = params.model_copy(
        update={"sweep": params.sweep.model_copy(update={"pruning": pruning})}
    )
    with tempfile.TemporaryDirectory(prefix="vigil-bench-sweep-") as tmp:
        tmp = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        name = f"bench-{label}-{os.getpid()}-{time.time_ns()}"  # a new study each run
        started = time.perf_counter()
        result = run_sweep(
            params,
            dataset_dir,
            tmp / "reports",
            n_workers=workers,
            storage=storage or f"journal:{tmp / 'optuna.journal'}",
            name=name,
        )
        wall = time.perf_counter() - started
        if storage:
            optuna.delete_study(study_name=name, storage=storage)
    states = [r["state"] for r in result.rows]
    return {
        "config": label,
        "workers": workers,
        "pruning": pruning,
        "wall_s": round(wall, 1),
        "trials": len(states),
        "pruned": states.count("PRUNED"),
        "trial_time_s": result.pruning["sweep_trial_time_s"],
        "pruning_saved_s_est": result.pruning["time_saved_s_est"],
        "best_trial": result.trial,
        "best_ratio": result.objective,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="capsules")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--skip-workers", action="store_true", help="skip the 2-worker run")
    parser.add_argument(
        "--skip-no-pruning", action="store_true", help="skip the 1-worker run without pruning"
    )
    parser.add_argument(
        "--storage", help="Optuna storage URL for the studies (default: a temp journal file)"
    )
    parser.add_argument("--data", type=Path, help="prepared dataset (default data/prepared/D)")
    args = parser.parse_args(argv)

    from vigil.config import load_params
    from vigil.redact import redact

    os.chdir(ROOT)  # sweep.space is relative to the project root
    params = load_params(args.params)
    update = {
        k: v
        for k, v in {"n_trials": args.trials, "epochs_per_trial": args.epochs}.items()
        if v is not None
    }
    params = params.model_copy(update={"sweep": params.sweep.model_copy(update=update)})
    dataset_dir = args.data or ROOT / "data" / "prepared" / args.dataset
    print(
        f"dataset {args.dataset}: {params.sweep.n_trials} trials x "
        f"{params.sweep.epochs_per_trial} epochs, sampler {params.sweep.sampler}, "
        f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}, "
        f"storage {redact(args.storage) if args.storage else 'journal file'}",
        flush=True,
    )
    configs = [(1, True, "pruning-1w")]
    if not args.skip_no_pruning:
        configs.append((1, False, "no-pruning-1w"))
    if not args.skip_workers:
        configs.append((2, True, "pruning-2w"))
    results = []
    for workers, pruning, label in configs:
        results.append(_one(params, dataset_dir, workers, pruning, label, args.storage))
        print(json.dumps(results[-1]), flush=True)
    by = {r["config"]: r for r in results}
    summary = {}
    if "no-pruning-1w" in by:
        summary["pruning_speedup"] = round(
            by["no-pruning-1w"]["wall_s"] / by["pruning-1w"]["wall_s"], 2
        )
    if "pruning-2w" in by:
        summary["workers_2_vs_1_speedup"] = round(
            by["pruning-1w"]["wall_s"] / by["pruning-2w"]["wall_s"], 2
        )
    summary["load_after"] = round(os.getloadavg()[0], 1)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
