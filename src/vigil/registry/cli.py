"""``vigil promote``: a person overrides the gate and makes a version champion, on the record.

    vigil promote --model vigil-capsules-image --force 3 --reason "TEXT" [--who USER]

The version must be registered, READY and intact (its files match the recorded checksum); the
gate verdict is not consulted. The decision file under ``reports/promotions/`` is written first
(if it cannot be written, nothing moves); then who and why become version tags
(``vigil.forced_by``, ``vigil.force_reason``, ``vigil.forced_at``) and the alias moves.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path


def register_promote(subparsers: argparse._SubParsersAction) -> None:
    """Add ``promote`` to the ``vigil`` command."""
    parser = subparsers.add_parser(
        "promote",
        help="force a registered version to champion (overrides the gate; recorded)",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--model", required=True, help="registered model name")
    parser.add_argument("--force", required=True, metavar="VERSION", help="version to promote")
    parser.add_argument("--reason", required=True, help="why the gate is overridden")
    parser.add_argument("--who", default=None, help="who decides (default: $USER)")
    parser.add_argument(
        "--decision-dir",
        type=Path,
        default=Path("reports/promotions"),
        help="where the decision file is written (default: reports/promotions)",
    )
    parser.set_defaults(handler=run_promote)


def default_who() -> str:
    return os.environ.get("USER") or os.environ.get("USERNAME") or getpass.getuser()


def run_promote(args: argparse.Namespace) -> int:
    from vigil.registry.promotion import PromotionError, force_promote
    from vigil.tracking import TrackingError

    if not str(args.force).isdigit():
        raise ValueError(f"--force expects a version number, got {args.force!r}")
    try:
        decision = force_promote(
            args.model,
            str(args.force),
            args.who or default_who(),
            args.reason,
            decision_dir=args.decision_dir,
        )
    except PromotionError as error:
        print(f"vigil promote: refused: {error}")
        return 1
    except TrackingError as error:  # no store, or one that does not answer
        print(f"vigil promote: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # the record is written before the alias moves
        print(f"vigil promote: refused: cannot write the decision record ({error}); "
              "champion unchanged")
        return 1
    print(decision.summary())
    print(
        json.dumps(
            {
                "model": decision.model_name,
                "version": decision.version,
                "champion_before": decision.champion_before,
                "who": decision.who,
            }
        )
    )
    return 0
