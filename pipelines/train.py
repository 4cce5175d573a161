"""DVC stage `train@<dataset>`: train the chosen model on normal data, log one MLflow run.

    python pipelines/train.py --dataset capsules [--params params.yaml]
        [--best-config models/capsules/best_config.json] [--out models/capsules]
        [--data data/prepared/capsules]

If the best-config file (written by the sweep stage) exists and has a `model` mapping, it
replaces the knobs of the dataset's model family (`model.<family>`). Writes `<out>/model.json`,
`<out>/weights.safetensors` and `<out>/train.json` (run id, objective, epochs), each atomically.
Checkpoints go to `<out>/checkpoints/`; rerunning after an interruption resumes from them.
Exit status 2 with a message for bad params, data or tracking store; 1 if training diverged.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vigil.config import ConfigError, Params, load_params


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="a key of data.datasets in the params file")
    parser.add_argument("--params", default="params.yaml", type=Path)
    parser.add_argument("--best-config", type=Path, help="default models/<dataset>/best_config.json")
    parser.add_argument("--out", type=Path, help="default models/<dataset>")
    parser.add_argument("--data", type=Path, help="prepared dataset (default data/prepared/<dataset>)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, params: Params) -> dict:
    from vigil.training.stage import train_stage

    return train_stage(params, args.dataset, out=args.out, best_config=args.best_config,
                       data=args.data)


def main(argv: list[str] | None = None) -> int:
    from mlflow.exceptions import MlflowException
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

    from vigil.locations import tracking_uri
    from vigil.data.prepared import PreparedDataError
    from vigil.models.lightning import NonFiniteLossError
    from vigil.tracking import TrackingError

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        params = load_params(args.params)
        summary = run(args, params)
    except (ConfigError, PreparedDataError, TrackingError, ValueError) as error:
        print(f"train: error: {error}", file=sys.stderr)
        return 2
    except MisconfigurationException as error:
        print(f"train: error: Lightning rejected the train settings in {args.params}: {error}",
              file=sys.stderr)
        return 2
    except MlflowException as error:
        print(f"train: error: MLflow tracking store {tracking_uri()} failed: {error}",
              file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"train: training diverged: {error}", file=sys.stderr)
        return 1
    print(f"trained {args.dataset}: val_loss {summary['objective']:.5f} after "
          f"{summary['epochs']} epochs in {summary['wall_time_s']} s (run {summary['run_id']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
