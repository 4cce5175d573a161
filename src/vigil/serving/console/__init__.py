"""The operator console served by ``vigil serve`` at ``/console``.

Four panels on one page: the served model(s) and why they serve (gate verdict, promotion,
refused versions), scoring a dropped part, the live score stream that ``vigil watch`` writes, and
retraining (history and a "run one cycle now" button). Server-rendered (Jinja2) with local
JavaScript and CSS under ``static/``: it works offline and needs no build step. See
``routes`` for the endpoints and their auth.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from vigil.serving import ServingConfig
from vigil.serving.follow import ModelHolder


def mount_console(
    app: FastAPI, holder: ModelHolder, config: ServingConfig, auth: Any, *, token_set: bool
) -> None:
    """Add ``/console`` (page + API) and ``/console/static`` to ``app``."""
    from vigil.serving.console.routes import HERE, console_router

    app.include_router(console_router(holder, config, auth, token_set=token_set))
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")
