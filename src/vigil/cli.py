"""The `vigil` console script: one command, one subcommand per job.

Subcommands are registered by the modules that own them; this file only wires argparse.
"""

from __future__ import annotations

import argparse
import logging
import sys

from vigil import __version__
from vigil.config import ConfigError
from vigil.redact import install_log_redaction, redact


DESCRIPTION = (
    "vigil: unsupervised visual anomaly detection for production lines. The pipeline runs "
    "with `dvc repro` / `dvc exp run`; these commands sweep, promote, deploy (pull, serve, "
    "watch) and retrain."
)


def build_parser() -> argparse.ArgumentParser:
    """The one `vigil` parser: every subcommand, with its description and examples."""
    from vigil.cli_commands import OVERVIEW, REGISTRARS, HelpFormatter, describe

    parser = argparse.ArgumentParser(
        prog="vigil",
        description=DESCRIPTION,
        epilog=OVERVIEW,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vigil {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in REGISTRARS:
        register(sub)
    describe(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    install_log_redaction()  # no credentialed URI (MLFLOW_TRACKING_URI...) reaches the log
    try:
        return int(args.handler(args) or 0)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"vigil {args.command}: error: {redact(str(error))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
