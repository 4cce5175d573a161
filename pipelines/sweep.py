"""DVC stage `sweep@<dataset>`: Optuna study over the encoding size -> best_config.json.

python pipelines/sweep.py --dataset NAME [--params params.yaml] [--out models/NAME/best_config.json]
                          [--workers N]

Writes best_config.json and reports/NAME/{sweep.json,sweep.csv,sweep.png,pruning.json}, each
atomically. Exit status 2 with one ``sweep: error:`` line on stderr (no traceback) for bad params,
data or search space, a storage URL or tracking store that cannot be reached, Lightning settings
it rejects, or a study with no completed trial.
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
