"""DVC stage `register@<dataset>`: package the evaluated model, register it, gate it.

    python pipelines/register.py --dataset capsules [--params params.yaml]
        [--model-dir models/capsules] [--reports reports/capsules] [--data-dir data/prepared/capsules]

A thin entry: arguments -> `vigil.registry.stage.register_stage` -> the verdict printed. It logs
the MLflow pyfunc package into the training run, registers a new version of
`<register.model_name_prefix>-<dataset>-<modality>`, aliases it `challenger`, writes
<reports>/decision.json before any alias moves, and moves `champion` only when the gate passes
and the promotion policy (`register.promote`) allows it: a DVC experiment or an uncommitted tree
only sets `challenger`. A rejected model is a result: exit 0. Exit 1 with
"registry failure, champion unchanged: <reason>" when the registry or its artifact store fails
mid-way (any MLflow or connection error; the champion alias is moved last, so it is untouched),
2 for bad input.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import vigil  # noqa: F401  (first: OpenMP defaults before torch loads, see vigil.threads)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset", required=True, help="a key of data.datasets in the params file"
    )
    parser.add_argument("--params", default="params.yaml", type=Path)
    parser.add_argument("--model-dir", type=Path, help="trained model (default models/<dataset>)")
    parser.add_argument("--reports", type=Path, help="report folder (default reports/<dataset>)")
    parser.add_argument(
        "--data-dir", type=Path, help="prepared data (default data/prepared/<dataset>)"
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    from vigil.registry.stage import register_stage

    decision = register_stage(
        args.params, args.dataset, args.model_dir, args.reports, args.data_dir
    )
    print(decision.summary())
    for reason in decision.reasons:
        print(f"  - {reason}")
    for note in decision.notes:
        print(f"  note: {note}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The package is downloaded back to verify its checksum: a per-file progress bar of a few
    # small files only buries the verdict in the stage log.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from vigil.config import ConfigError
    from vigil.registry.package import PackageError
    from vigil.registry.promotion import PromotionError
    from vigil.tracking import TrackingError

    try:
        return run(args)
    except (ConfigError, PackageError, FileNotFoundError, ValueError, TypeError) as error:
        print(f"register@{args.dataset}: error: {error}", file=sys.stderr)
        return 2
    except (PromotionError, TrackingError) as error:
        print(
            f"register@{args.dataset}: registry failure, champion unchanged: {error}",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
