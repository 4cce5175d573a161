"""The subcommands of `vigil`: who registers each (``REGISTRARS``: the owner modules add their
arguments and handler with ``register(subparsers)``), and what a user reads in
``vigil COMMAND --help``: one plain description and a few examples per subcommand (``HELP``),
kept here in one place and put on the parsers by ``describe``."""

from __future__ import annotations

import argparse

from vigil.registry.cli import register_promote
from vigil.scheduling.cli import register as register_scheduling
from vigil.serving.cli import register as register_serving
from vigil.sweep.cli import register as register_sweep

REGISTRARS: list = [register_sweep, register_promote, register_serving, register_scheduling]

#: command -> (description, examples); the examples are shell lines, shown as written.
HELP: dict[str, tuple[str, str]] = {
    "sweep": (
        "Run (or join) the Optuna study over the encoding size of one dataset and write its "
        "best configuration (models/<dataset>/best_config.json) and the sweep report "
        "(reports/<dataset>/sweep.*). The DVC stage sweep@<dataset> runs the same. The same "
        "params reuse the same study: more trials run only the missing ones. Several "
        "invocations, or --workers N, share one study through sweep.storage or "
        "VIGIL_OPTUNA_STORAGE (PostgreSQL or a journal file for parallel workers).",
        "vigil sweep --dataset capsules\n"
        "VIGIL_OPTUNA_STORAGE=postgresql://vigil@db/optuna vigil sweep --dataset capsules "
        "--workers 2",
    ),
    "promote": (
        "Make a registered version champion although the gate did not pass it: a person "
        "decides, on the record. The version must be registered, READY and intact (its files "
        "match the recorded checksum). Who and why become version tags and a decision file "
        "under reports/promotions/.",
        'vigil promote --model vigil-print-video --force 1 --reason "stall frames reviewed '
        'by QA"',
    ),
    "pull": (
        "Download a registered model package (the version an alias points at, or an explicit "
        "one), verify its recorded sha256 and install it as <dest>/versions/<v>/ with "
        "<dest>/current pointing at it. The registry is MLFLOW_TRACKING_URI (or the project's "
        "mlflow.db when run in the project). Pulling the installed version again is a no-op; "
        "a tampered package is refused and nothing is replaced.",
        "export MLFLOW_TRACKING_URI=http://mlflow:5000\n"
        "vigil pull --model vigil-capsules-image --alias champion --dest deploy/capsules\n"
        "vigil pull --model vigil-capsules-image --version 3 --dest deploy/capsules --json",
    ),
    "serve": (
        "Serve a model over HTTP: POST /score, /score/heatmap, /score/batch, /score/clip; "
        "GET /health, /ready, /model; API docs at /docs. Loads a pulled folder (--model-dir) "
        "or a registry URI (--model-uri, default models:/$VIGIL_MODEL_NAME@champion) and "
        "follows the alias: a new champion is pulled, verified and swapped in.",
        "vigil serve --model-dir deploy/capsules --port 8000\n"
        "vigil serve --model-uri models:/vigil-capsules-image@champion --score-log scores.jsonl\n"
        "curl -s --data-binary @part.png -H 'content-type: image/png' localhost:8000/score",
    ),
    "watch": (
        "Score a video file, a frame folder, a camera or a stream frame by frame (video "
        "models), with the moving average evaluation used; print a JSON event when the "
        "smoothed score stays above the threshold for --alert-frames frames (and POST it to "
        "--webhook). --output writes the input, prediction and heat map beside a score "
        "timeline.",
        "vigil watch line.avi --model-uri models:/vigil-print-video@champion --output side.mp4\n"
        "vigil watch rtsp://camera/stream --model-dir deploy/print --webhook "
        "http://alerts.local/hook",
    ),
    "ingest": (
        "Validate the inboxes of configs/retrain.yaml (decodable, the dataset's size and "
        "channels, not a duplicate): valid normal items move to data/extra/<dataset>/ and are "
        "versioned with dvc add; rejected ones move to quarantine/<dataset>/ with a reason.",
        "vigil ingest\nvigil ingest --dataset capsules --wait 600",
    ),
    "retrain": (
        "One retraining cycle: ingest, then `dvc repro` when the data changed, the champion is "
        "too old, drift fired or --force; the gate decides whether the champion moves. "
        "Writes reports/retrain/<cycle>.json and an MLflow run.",
        "vigil retrain\nvigil retrain --dataset capsules --force --json",
    ),
    "schedule": (
        "Run retraining cycles on schedule.cron or schedule.interval_minutes of "
        "configs/retrain.yaml, one at a time; a failing cycle is recorded and the schedule "
        "goes on.",
        "vigil schedule\nvigil schedule --max-cycles 1",
    ),
}

OVERVIEW = """examples:
  .venv/bin/dvc repro                     the pipeline (generate, prepare, sweep, train,
                                          evaluate, register); stages are not vigil commands
  vigil pull --model vigil-capsules-image --dest deploy/capsules
  vigil serve --model-dir deploy/capsules
  vigil retrain

`vigil COMMAND --help` describes each command, with examples."""


def describe(subparsers: argparse._SubParsersAction) -> None:
    """Put each registered command's description and examples (``HELP``) on its parser,
    shown as written (no re-wrapping of the example lines)."""
    for name, parser in subparsers.choices.items():
        description, examples = HELP.get(name, (parser.description, ""))
        parser.description = description
        if examples:
            lines = "\n".join(f"  {line}" for line in examples.splitlines())
            parser.epilog = f"examples:\n{lines}"
        parser.formatter_class = HelpFormatter


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Wraps the description, keeps the examples' lines as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:\n"):
            return super()._fill_text(text, width, indent)  # raw: as written
        return argparse.HelpFormatter._fill_text(self, text, width, indent)
