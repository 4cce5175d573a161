"""DVC stage `register@<dataset>`: package the evaluated model, register it, gate it.

    python pipelines/register.py --dataset capsules [--params params.yaml]
        [--model-dir models/capsules] [--reports reports/capsules] [--data-dir data/prepared/capsules]

Logs the MLflow pyfunc package into the training run (run id in <model-dir>/train.json),
registers it as a new version of `<register.model_name_prefix>-<dataset>-<modality>` tagged with
the gate verdict, metrics, git commit, data hash, test-split hash and package checksum, aliases it
`challenger`, and moves `champion` only when the gate passes. Writes <reports>/decision.json
atomically and prints the verdict. A rejected model is a result: exit 0. Exit 1 with
"registry failure, champion unchanged: <reason>" when the registry or its artifact store fails
mid-way (any MLflow or connection error; the champion alias is moved last, so it is untouched),
2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


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


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing ({what})")
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise TypeError(f"{path}: expected a JSON object")
    return value


def example_images(data_dir: Path) -> list[bytes] | None:
    """One prepared test frame as PNG (the package's input example), or None without data."""
    from vigil.data.prepared import PreparedDataError, PreparedDataset
    from vigil.registry.package import frames_to_png

    try:
        data = PreparedDataset.load(data_dir)
    except PreparedDataError:
        return None
    rows = data.indices("test")
    return frames_to_png(data.frames[rows[:1]]) if len(rows) else None


def alignment_reference(data_dir: Path, align: str):
    """The prepared frame every frame was aligned to (manifest ``reference_index``), uint8
    (h, w, C), or None when prep does not align. The package ships it so serving aligns the same."""
    if align == "none":
        return None
    from vigil.data.prepared import PreparedDataset

    data = PreparedDataset.load(data_dir)
    index = data.manifest.get("reference_index")
    if index is None:
        raise ValueError(
            f"{data_dir / 'manifest.json'}: reference_index is null but prep.align is {align!r}: "
            "rerun the prepare stage"
        )
    return data.frames[int(index)].copy()


def lineage(run_id: str, dataset: str, modality: str, data_dir: Path) -> dict[str, str | None]:
    """git commit and data hash from the training run's tags (fallback: git, the manifest)."""
    import mlflow

    tags = mlflow.MlflowClient().get_run(run_id).data.tags
    commit, data_hash = tags.get("vigil.git_commit"), tags.get("vigil.data_hash")
    if not commit:
        from vigil.training.tracking import git_commit

        commit = git_commit()
    if not data_hash and (data_dir / "manifest.json").is_file():
        data_hash = json.loads((data_dir / "manifest.json").read_text()).get("content_hash")
    return {"git_commit": commit, "data_hash": data_hash, "dataset": dataset, "modality": modality}


def run(args: argparse.Namespace) -> int:
    from vigil.config import EvaluateConfig, load_params
    from vigil.evaluation.evaluate import model_prep
    from vigil.registry.package import log_package
    from vigil.registry.promotion import (
        model_name,
        register_candidate,
        registry_errors,
        write_decision,
    )
    from vigil.registry.tracking import connect

    params = load_params(args.params)
    spec = params.dataset(args.dataset)
    model_dir = args.model_dir or Path("models") / args.dataset
    reports = args.reports or Path("reports") / args.dataset
    data_dir = args.data_dir or Path("data/prepared") / args.dataset
    run_id = read_json(model_dir / "train.json", "written by the train stage").get("run_id")
    if not run_id:
        raise ValueError(f"{model_dir / 'train.json'}: no run_id")
    metrics = read_json(reports / "metrics.json", "written by the evaluate stage")
    calibration = read_json(model_dir / "threshold.json", "written by the evaluate stage")
    model = read_json(model_dir / "model.json", "written by the train stage")
    prep = model_prep(model, params, spec.modality)
    postprocess = (
        EvaluateConfig.model_validate(calibration["postprocess"])
        if calibration.get("postprocess")
        else params.evaluate
    )
    client = connect()
    examples = example_images(data_dir)
    reference = alignment_reference(data_dir, prep.align)
    with registry_errors(f"logging the model package to training run {run_id}"):
        package = log_package(
            model_dir,
            prep=prep,
            postprocess=postprocess,
            dataset=args.dataset,
            example_images=examples,
            run_id=run_id,
            reference=reference,
        )
        origin = lineage(run_id, args.dataset, spec.modality, data_dir)
    origin["test_split_hash"] = metrics.get("test_split_hash") or calibration.get(
        "test_split_hash"
    )
    name = model_name(params.register.model_name_prefix, args.dataset, spec.modality)
    decision = register_candidate(client, name, package, metrics, params.gate, origin)
    write_decision(decision, reports / "decision.json")
    print(decision.summary())
    for reason in decision.reasons:
        print(f"  - {reason}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The package is downloaded back to verify its checksum: a per-file progress bar of a few
    # small files only buries the verdict in the stage log.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from vigil.config import ConfigError
    from vigil.registry.package import PackageError
    from vigil.registry.promotion import PromotionError
    from vigil.registry.tracking import TrackingError

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
