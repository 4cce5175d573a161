"""`vigil ingest`, `vigil retrain`, `vigil schedule`: registered by ``register(subparsers)``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vigil.scheduling import DEFAULT_CONFIG, load_retrain_config


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="retrain config (%(default)s)")
    parser.add_argument("--root", default=".", help="project root (default: current folder)")
    if parser.prog.endswith("schedule"):
        return
    parser.add_argument(
        "--wait",
        type=float,
        default=None,
        metavar="SECONDS",
        help="wait this long for a running cycle's lock (default: lock.timeout_s)",
    )


def _load(args: argparse.Namespace):
    root = Path(args.root).resolve()
    config = Path(args.config)
    return root, load_retrain_config(config if config.is_absolute() else root / config)


def _ingest(args: argparse.Namespace) -> int:
    from vigil.config import load_params
    from vigil.scheduling.inbox import IngestError, ingest_all
    from vigil.scheduling.lock import LockBusyError, RetrainLock
    from vigil.scheduling.retrain import ensure_baseline

    root, cfg = _load(args)
    params = load_params(root / cfg.params)
    wait = cfg.lock.timeout_s if args.wait is None else args.wait
    try:
        with RetrainLock(
            root / cfg.lock.path, timeout_s=wait, stale_after_s=cfg.lock.stale_after_s
        ):
            ensure_baseline(root, cfg, params, args.dataset or list(cfg.datasets))
            reports = ingest_all(root, cfg, params, args.dataset or None)
    except (LockBusyError, IngestError) as error:
        print(f"vigil ingest: {error}", file=sys.stderr)
        return 1
    for name, report in reports.items():
        print(
            f"{name}: ingested {len(report.ingested)}, quarantined {len(report.quarantined)}, "
            f"data version {report.version_before} -> {report.version_after}"
        )
        for item, reason in report.quarantined.items():
            print(f"  quarantined {item}: {reason}")
        for item in report.waiting:
            print(f"  waiting {item}: still being written, left for the next cycle")
    return 0


def _retrain(args: argparse.Namespace) -> int:
    from vigil.scheduling.lock import LockBusyError, RetrainLock
    from vigil.scheduling.retrain import run_cycle

    root, cfg = _load(args)
    wait = cfg.lock.timeout_s if args.wait is None else args.wait
    try:
        with RetrainLock(
            root / cfg.lock.path, timeout_s=wait, stale_after_s=cfg.lock.stale_after_s
        ):
            record = run_cycle(root, cfg, force=args.force, datasets=args.dataset or None)
    except LockBusyError as error:
        print(f"vigil retrain: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(record, indent=1, default=str))
    return 1 if record["status"] == "failed" else 0


def _schedule(args: argparse.Namespace) -> int:
    from vigil.scheduling.schedule import run_schedule

    root, cfg = _load(args)
    outcomes = run_schedule(root, cfg, max_cycles=args.max_cycles)
    print(f"vigil schedule: {len(outcomes)} cycle(s): {', '.join(outcomes) or 'none'}")
    return 0


def register(subparsers) -> None:
    """Add the `ingest`, `retrain` and `schedule` subcommands to the `vigil` parser."""
    p = subparsers.add_parser("ingest", help="validate inboxes, version new normal data (DVC)")
    _common(p)
    p.add_argument("--dataset", action="append", help="only this dataset (repeatable)")
    p.set_defaults(handler=_ingest)

    p = subparsers.add_parser(
        "retrain", help="one retraining cycle: ingest, repro if needed, record"
    )
    _common(p)
    p.add_argument("--dataset", action="append", help="only this dataset (repeatable)")
    p.add_argument("--force", action="store_true", help="retrain even without new data")
    p.add_argument("--json", action="store_true", help="print the cycle record as JSON")
    p.set_defaults(handler=_retrain)

    p = subparsers.add_parser("schedule", help="run retraining cycles on the configured schedule")
    _common(p)
    p.add_argument("--max-cycles", type=int, default=None, help="stop after N cycles")
    p.set_defaults(handler=_schedule)
