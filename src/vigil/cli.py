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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vigil", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"vigil {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in _subcommand_registrars():
        register(sub)
    return parser


def _subcommand_registrars():
    """Each returns a function ``register(subparsers)``; import lazily to keep --help fast."""
    from vigil.cli_commands import REGISTRARS

    return REGISTRARS


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
