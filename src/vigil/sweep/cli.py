"""``vigil sweep --dataset NAME [--workers N] [--params params.yaml] [--out FILE]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="a name under data.datasets")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="best config file (default models/<dataset>/best_config.json)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the study (PostgreSQL/journal storage)",
    )


def expected_errors() -> tuple[type[BaseException], ...]:
    """Failures a user can fix (params, data, search space, storage URL, tracking store,
    Lightning settings): reported as one line, not a traceback."""
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

    from vigil.tracking import TrackingError
    from vigil.sweep.study import StorageError, SweepError

    return (
        ValueError,  # ConfigError, SearchSpaceError, NoAnomaliesError, PreparedDataError, ...
        FileNotFoundError,
        StorageError,
        SweepError,
        TrackingError,
        MisconfigurationException,
    )


def run(args: argparse.Namespace) -> int:
    """Run the sweep stage from parsed arguments; prints the best config and returns 0, or
    prints one ``sweep: error: ...`` line on stderr and returns 2."""
    from vigil.config import load_params
    from vigil.sweep.study import run_stage

    if args.workers < 1:
        print(f"sweep: error: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    try:
        params = load_params(args.params)
        best = run_stage(params, args.dataset, out=args.out, n_workers=args.workers)
    except expected_errors() as error:
        print(f"sweep: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(best, indent=1))
    return 0


def register(subparsers) -> None:
    """Add the ``sweep`` subcommand to ``vigil``'s subparsers."""
    parser = subparsers.add_parser(
        "sweep",
        help="Optuna sweep over the encoding size (best config for train)",
        description="Run or join the Optuna study for a dataset; several invocations (or "
        "--workers N) share one study through sweep.storage / VIGIL_OPTUNA_STORAGE.",
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)
