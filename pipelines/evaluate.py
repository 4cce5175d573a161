"""DVC stage `evaluate@<dataset>`: score tune/test, calibrate the threshold, metrics, plots, report.

    python pipelines/evaluate.py --dataset capsules [--params params.yaml]
        [--data-dir data/prepared/capsules] [--model-dir models/capsules] [--out reports/capsules]

Writes <out>/metrics.json, <out>/plots/*.csv, <out>/evaluation/report.html (+ PNGs) and
<model-dir>/detector/ (detector.json + weights), and logs `test_*` metrics and the report to the training MLflow run
(<model-dir>/train.json). Exit status 2 with a message naming the file or split for bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import vigil  # noqa: F401  (first: OpenMP defaults before torch loads, see vigil.threads)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="a key of data.datasets in the params file")
    parser.add_argument("--params", default="params.yaml", type=Path)
    parser.add_argument("--data-dir", type=Path, help="prepared data (default data/prepared/<dataset>)")
    parser.add_argument("--model-dir", type=Path, help="trained model (default models/<dataset>)")
    parser.add_argument("--out", type=Path, help="report folder (default reports/<dataset>)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to the training run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from vigil.config import ConfigError, load_params
    from vigil.data.prepared import PreparedDataError
    from vigil.detector import DetectorError
    from vigil.evaluation.evaluate import EvaluationError, evaluate, summary_lines
    from vigil.evaluation.metrics import MetricsInputError
    from vigil.models.spec import ModelSpecError
    from vigil.tracking import TrackingError

    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    try:
        params = load_params(args.params)
        params.dataset(args.dataset)
        result = evaluate(
            params,
            args.dataset,
            args.data_dir or Path("data/prepared") / args.dataset,
            args.model_dir or Path("models") / args.dataset,
            args.out or Path("reports") / args.dataset,
            log_mlflow=not args.no_mlflow,
            base_dir=args.params.resolve().parent,
        )
    except (ConfigError, PreparedDataError, ModelSpecError, DetectorError, EvaluationError,
            MetricsInputError, TrackingError, ValueError) as error:
        print(f"evaluate: error: {error}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(args.dataset, result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
