"""DVC stage `sweep@<dataset>`: Optuna study over the encoding size -> best_config.json.

python pipelines/sweep.py --dataset NAME [--params params.yaml] [--out models/NAME/best_config.json]
                          [--workers N]
"""

from __future__ import annotations

import argparse
import logging
import sys

from vigil.sweep.cli import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
