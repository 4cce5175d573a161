"""The console's routes: the page, its static files and the JSON/SSE it reads.

``/console`` is the page (server-rendered shell; the panels fill themselves from the API below
with a few lines of JavaScript, no build step, nothing loaded from the internet). Scoring goes to
the service's own ``/score`` endpoints. With ``VIGIL_API_TOKEN`` set, the page asks for the token
once, keeps it in the tab's ``sessionStorage`` and sends it as ``Authorization: Bearer`` on every
call, the same check as the API:

- public, like ``/model``: the page, ``/console/api/session``, ``/console/api/models``,
  ``/console/api/retrain`` (cycle history and the runner's state);
- token: ``/console/api/session/check``, the live stream and latest frame, and
  ``POST /console/api/retrain/run``, which is refused (403) when no token is configured at all:
  starting a retraining cycle from a browser needs a person who holds the token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates

from vigil import __version__
from vigil.serving.scorelog import LATEST_FILES, latest_dir
from vigil.serving import ServingConfig
from vigil.serving.console.cycles import (
    CycleBusyError,
    CycleRunner,
    RetrainUnavailableError,
    read_cycles,
)
from vigil.serving.console.live import event_stream
from vigil.serving.console.models import RegistryView, model_entries
from vigil.serving.follow import ModelHolder

HERE = Path(__file__).resolve().parent
NO_STORE = {"Cache-Control": "no-store"}


def console_router(
    holder: ModelHolder, config: ServingConfig, auth: Any, *, token_set: bool
) -> APIRouter:
    """The ``/console`` routes; ``auth`` is the API's bearer-token dependency."""
    settings = config.console
    root = Path(settings.root).resolve()
    runner = CycleRunner(root, root / settings.retrain_config)
    registry = RegistryView()
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    score_log = Path(config.score_log).resolve() if config.score_log else None
    router = APIRouter(prefix="/console", tags=["console"])

    @router.get("", response_class=HTMLResponse, include_in_schema=False)
    def page(request: Request) -> Response:
        """The console page."""
        return templates.TemplateResponse(
            request,
            "console.html",
            {"version": __version__, "model": holder.current.info.name},
        )

    @router.get("/api/session")
    def session() -> dict[str, Any]:
        """What the page needs to know before it asks for anything else."""
        return {
            "token_required": token_set,
            "retrain_enabled": token_set,
            "score_log": str(score_log) if score_log else None,
            "alert_frames": config.watch.alert_run(holder.current.detector),
            "max_batch": config.limits.max_batch,
            "max_clip_frames": config.limits.max_clip_frames,
        }

    @router.post("/api/session/check", dependencies=[auth], status_code=204)
    def check_token() -> Response:
        """204 when the bearer token is right (the page's login check); 401 otherwise."""
        return Response(status_code=204)

    @router.get("/api/models")
    def models(request: Request) -> dict[str, Any]:
        """Each served model: version, alias, gate verdict and reasons, operating point,
        promotion, refused versions."""
        status = holder.registry
        served = getattr(request.app.state, "models", None)  # several per box: vigil.serving.multi
        holders = [m.holder for m in served.models.values() if m.holder] if served else None
        return {
            "models": model_entries(holder, registry, holders),
            "registry_reachable": status.reachable,
            "registry_error": status.error,
        }

    @router.get("/api/live/stream", dependencies=[auth])
    async def live_stream(request: Request, offset: int | None = Query(None, ge=0)) -> Response:
        """Server-Sent Events: new score-log points and the latest frame (see ``live``)."""
        if score_log is None:
            raise HTTPException(
                404,
                "no score log: start `vigil serve --score-log PATH` with the file that "
                "`vigil watch --score-log PATH` writes",
            )
        stream = event_stream(
            score_log,
            offset=offset,
            initial=settings.live_points,
            is_disconnected=request.is_disconnected,
        )
        headers = {**NO_STORE, "X-Accel-Buffering": "no"}
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)

    @router.get("/api/live/latest/{name}", dependencies=[auth])
    def live_latest(name: str) -> Response:
        """The latest scored frame (``frame.png``) or its heat map (``overlay.png``)."""
        if name not in LATEST_FILES[:2] or score_log is None:
            raise HTTPException(404, f"no such live file: {name}")
        path = latest_dir(score_log) / name
        if not path.is_file():
            raise HTTPException(404, f"{path}: no frame yet")
        return FileResponse(path, media_type="image/png", headers=NO_STORE)

    @router.get("/api/retrain")
    def retrain_history() -> dict[str, Any]:
        """The last cycles from the records folder and the state of a console-started cycle."""
        try:
            cfg = runner.config()
        except RetrainUnavailableError as error:
            return {"available": False, "error": str(error), "cycles": [], **runner.status()}
        folder = root / cfg.records
        return {
            "available": True,
            "error": None,
            "records": str(folder),
            "cycles": read_cycles(folder, settings.history_cycles),
            **runner.status(),
        }

    @router.post("/api/retrain/run", dependencies=[auth], status_code=202)
    def retrain_run() -> dict[str, Any]:
        """Start one cycle in the background (same lock and gate as `vigil retrain`)."""
        if not token_set:
            raise HTTPException(
                403, "running a cycle from the console needs VIGIL_API_TOKEN set on the server"
            )
        try:
            started = runner.start()
        except CycleBusyError as error:
            raise HTTPException(409, str(error)) from None
        except RetrainUnavailableError as error:
            raise HTTPException(503, str(error)) from None
        return {"started": True, "started_at": started}

    return router
