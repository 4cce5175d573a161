"""``vigil pull``, ``vigil serve`` and ``vigil watch``: ``register(subparsers)`` adds all three.

``vigil serve`` with neither ``--model-dir`` nor ``--model-uri`` serves
``models:/$VIGIL_MODEL_NAME@<follow.alias>`` from ``$MLFLOW_TRACKING_URI``: the Docker image's
default command. A model that cannot be pulled or loaded is a start-up error (exit 1).

``--score-log PATH`` (serve and watch; default: ``score_log`` in configs/serving.yaml, off when
unset) appends one JSON line per scored image or frame for the retrain drift trigger: see
``vigil.serving.scorelog``. A path that cannot be opened is a start-up error (exit 1).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
from pathlib import Path

from vigil.redact import redact

log = logging.getLogger(__name__)

MODEL_NAME_ENV = "VIGIL_MODEL_NAME"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``pull``, ``serve`` and ``watch`` to the ``vigil`` command."""
    _add_pull(subparsers)
    _add_serve(subparsers)
    _add_watch(subparsers)


def _add_model_source(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--model-dir", type=Path, help="a folder written by `vigil pull`")
    group.add_argument(
        "--model-uri",
        help=f"models:/NAME@alias or models:/NAME/VERSION (default: models:/${MODEL_NAME_ENV}"
        "@<follow.alias>)",
    )
    parser.add_argument("--config", default="configs/serving.yaml", help="serving settings")
    parser.add_argument(
        "--score-log",
        type=Path,
        help="append one JSON line per scored image/frame to this file, for the retrain drift "
        "trigger (default: score_log in the config; off when unset)",
    )


def _add_pull(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("pull", help="download and verify a registered model package")
    parser.add_argument("--model", required=True, help="registered model name")
    parser.add_argument("--alias", default="champion", help="registry alias (default: champion)")
    parser.add_argument("--version", help="an explicit version instead of the alias")
    parser.add_argument("--dest", type=Path, required=True, help="folder to install into")
    parser.add_argument(
        "--json", action="store_true", help="print the whole manifest (JSON), not one line"
    )
    parser.set_defaults(handler=run_pull)


def _add_serve(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="HTTP scoring service (FastAPI + uvicorn)")
    _add_model_source(parser)
    parser.add_argument("--host", help="bind address (default: server.host in the config)")
    parser.add_argument("--port", type=int, help="port (default: server.port in the config)")
    parser.add_argument("--no-follow", action="store_true", help="do not follow the alias")
    parser.add_argument("--poll-interval", type=float, help="seconds between alias checks")
    parser.add_argument(
        "--model",
        action="append",
        metavar="NAME[@ALIAS]",
        help="serve this registered model too, on /models/NAME/... (repeatable; default: models "
        "in the config); the plain routes serve the first one unless --model-dir/--model-uri",
    )
    parser.set_defaults(handler=run_serve)


def _add_watch(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("watch", help="score a video, frame folder or camera stream")
    parser.add_argument("source", help="video file, frame folder, camera index or RTSP/HTTP URL")
    _add_model_source(parser)
    parser.add_argument("--output", type=Path, help="side-by-side video (.mp4 or .avi)")
    parser.add_argument("--webhook", help="POST each alert event (JSON) to this URL")
    parser.add_argument(
        "--fps", help="score at this rate: 'model' (default), a number, 'source'", default="model"
    )
    parser.add_argument("--source-fps", type=float, help="rate of a frame folder without fps.txt")
    parser.add_argument("--max-frames", type=int, help="stop after this many source frames")
    parser.add_argument("--alert-frames", type=int, help="frames in a row above the threshold that raise an alert "
                             "(default: the model's own, chosen at evaluate)")
    parser.set_defaults(handler=run_watch)


# --- handlers ----------------------------------------------------------------------------------


def run_pull(args: argparse.Namespace) -> int:
    from vigil.tracking import TrackingError
    from vigil.serving.pull import PullError, pull

    try:
        manifest = pull(args.model, args.alias, args.dest, version=args.version)
    except (PullError, TrackingError) as error:
        print(f"vigil pull: error: {redact(str(error))}", file=sys.stderr)
        return 1
    print(json.dumps(manifest, indent=2) if args.json else _pulled_line(manifest, args.dest))
    return 0


def _pulled_line(manifest: dict, dest: Path) -> str:
    """One line per pulled version: what, from which alias, where, at which threshold."""
    alias = f" @{manifest['alias']}" if manifest.get("alias") else ""
    return (
        f"{manifest['name']} version {manifest['version']}{alias} -> {dest} "
        f"(threshold {manifest['threshold']:.6g}, sha256 {str(manifest.get('checksum'))[:12]}; "
        "--json for the manifest)"
    )


def _model_source(args: argparse.Namespace, alias: str) -> str:
    """What to load: the current version folder of ``--model-dir`` (resolved once, so a pull
    swapping versions meanwhile cannot mix two), ``--model-uri``, or the env's default URI."""
    from vigil.serving.install import resolve_model_dir

    if args.model_dir is not None:
        return str(resolve_model_dir(args.model_dir))
    if args.model_uri:
        return args.model_uri
    name = os.environ.get(MODEL_NAME_ENV)
    if not name:
        raise ValueError(f"no model: pass --model-dir or --model-uri, or set {MODEL_NAME_ENV}")
    return f"models:/{name}@{alias}"


def _with_score_log(args: argparse.Namespace, config):
    """The config with ``--score-log`` (when given) in place of its ``score_log``."""
    if args.score_log is None:
        return config
    return config.model_copy(update={"score_log": str(args.score_log)})


def _load(args: argparse.Namespace, config, command: str):
    """(scorer, source) or a printed start-up error and None."""
    from vigil.tracking import TrackingError
    from vigil.serving.loader import ModelLoadError, load_scorer
    from vigil.serving.pull import PullError

    source = _model_source(args, config.follow.alias)
    load = functools.partial(load_scorer, max_concurrent=config.server.max_concurrent_inference)
    try:
        try:
            scorer = load(source)
        except (ModelLoadError, OSError):
            # A pull may have swapped --model-dir's version (deleting the one we had resolved)
            # while it loaded: load the version that is current now.
            latest = _model_source(args, config.follow.alias)
            if latest == source:
                raise
            source = latest
            scorer = load(source)
    except (PullError, ModelLoadError, TrackingError) as error:
        print(
            f"vigil {command}: error: cannot load model {redact(source)}: {redact(str(error))}",
            file=sys.stderr,
        )
        return None, source
    log.info(
        "loaded %s version %s (threshold %.6g) from %s",
        scorer.info.name,
        scorer.info.version,
        scorer.info.threshold,
        source,
    )
    return scorer, source


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from vigil.serving import load_serving_config
    from vigil.serving.app import create_app
    from vigil.serving.follow import ModelHolder
    from vigil.serving.limits import uvicorn_options
    from vigil.serving.multi import ModelSet, ServedModel, load_model, parse_model_refs
    from vigil.serving.pull import parse_model_uri

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm in logs
    config = _with_score_log(args, load_serving_config(args.config))
    try:  # several models on one box: vigil.serving.multi
        refs = parse_model_refs(
            args.model or config.models,
            config.follow.alias,
            "--model" if args.model else f"{args.config}: models",
        )
    except ValueError as error:
        print(f"vigil serve: error: {error}", file=sys.stderr)
        return 1
    served = []
    if not refs or args.model_dir is not None or args.model_uri:
        scorer, source = _load(args, config, "serve")
        if scorer is None:
            return 1
        alias = scorer.info.alias or config.follow.alias
        if source.startswith("models:/"):
            _, uri_alias, _ = parse_model_uri(source)
            alias = uri_alias or alias
        served.append(
            ServedModel(scorer.info.name, alias, ModelHolder(scorer), model_dir=args.model_dir)
        )
    max_concurrent = config.server.max_concurrent_inference
    served += [load_model(ref, max_concurrent=max_concurrent) for ref in refs]
    try:
        models = ModelSet(served)
        app = create_app(models.default.holder, config, models=models)
    except (ValueError, OSError) as error:  # nothing loaded; the score log cannot be opened
        print(f"vigil serve: error: {redact(str(error))}", file=sys.stderr)
        return 1
    if config.score_log:
        log.info("appending scores to %s", config.score_log)
    if config.follow.enabled and not args.no_follow:
        # one follower thread per model; registry webhooks wake the one named (vigil.serving.webhook)
        app.state.followers = models.start_following(
            interval_s=args.poll_interval or config.follow.poll_interval_s,
            max_concurrent=max_concurrent,
        )
        app.state.follower = models.default.follower
    try:
        uvicorn.run(
            app,
            host=args.host or config.server.host,
            port=args.port if args.port is not None else config.server.port,
            log_level="info",
            **uvicorn_options(config.server),  # keep-alive and request-head timeouts
        )
    finally:
        models.stop_following()
    return 0


def run_watch(args: argparse.Namespace) -> int:
    from vigil.serving import load_serving_config
    from vigil.serving.watch import SourceError, watch

    config = _with_score_log(args, load_serving_config(args.config))
    updates = {
        key: value
        for key, value in (
            ("alert_frames", args.alert_frames),
        )
        if value is not None
    }
    settings = type(config.watch).model_validate({**config.watch.model_dump(), **updates})
    scorer, _ = _load(args, config, "watch")
    if scorer is None:
        return 1
    target = None if args.fps == "source" else ("model" if args.fps == "model" else float(args.fps))
    try:
        watch(
            scorer,
            args.source,
            settings,
            source_fps=args.source_fps,
            target_fps=target,
            output=args.output,
            webhook=args.webhook,
            max_frames=args.max_frames,
            score_log=config.score_log,
        )
    except (SourceError, OSError) as error:
        print(f"vigil watch: error: {error}", file=sys.stderr)
        return 1
    return 0
