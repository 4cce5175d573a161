"""The HTTP scoring service: ``create_app(holder, config)`` -> FastAPI app.

Endpoints (OpenAPI at ``/openapi.json``, docs at ``/docs``):

- ``GET /health``: liveness (the process answers).
- ``GET /ready``: 200 ``ready`` or ``degraded`` (a model is loaded but the registry cannot be
  reached; the loaded model keeps serving).
- ``GET /model``: name, version, alias, threshold, modality, input size, metrics.
- ``POST /score``: one image, as the raw body (``image/*`` or ``application/octet-stream``) or as
  multipart field ``file``; ``?heatmap=true`` adds the heat map PNG as base64.
- ``POST /score/heatmap``: the same input, answered with the heat map PNG itself (score in headers).
- ``POST /score/batch``: images as multipart fields ``files`` (scored independently).
- ``POST /score/clip``: frames in time order as multipart fields ``files`` (video models carry
  their state across them; image models score each frame).

Every answer names the model version that produced it. Bad input gets a 4xx with a message: 413
for bodies over ``limits.max_request_bytes`` (counted while read, so chunked uploads without a
Content-Length stop there too) or images over ``limits.max_image_side``, 422 for non-image
bytes, truncated files, unsupported channel counts (the answer names the count and what the model
takes) and empty batches. With ``VIGIL_API_TOKEN`` set, scoring endpoints require
``Authorization: Bearer <token>``.

Score log (opt-in, for the retrain drift trigger): with ``score_log: PATH`` in
configs/serving.yaml or ``vigil serve --score-log PATH``, every scored image or frame appends one
JSON line ``{"time", "model_name", "model_version", "score", "threshold", "is_anomaly"}`` (the
format of ``vigil.serving.scorelog``, read by ``vigil.scheduling.drift``). Lines are appended
whole, on the inference threads, safe under concurrent requests; a failing write is logged and
never fails the request.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hmac
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from vigil import __version__
from vigil.serving.scorelog import ScoreLog
from vigil.redact import redact
from vigil.serving import LimitSettings, ServingConfig
from vigil.serving.docs import mount_offline_docs
from vigil.serving.follow import ModelHolder
from vigil.serving.multi import ModelSet, models_router
from vigil.serving.inputs import InputError
from vigil.serving.inputs import decode_all as _decode_all
from vigil.serving.inputs import many_images as _many_images
from vigil.serving.inputs import one_image_body as _one_image_body
from vigil.serving.limits import BodyLimit, RequestLimits
from vigil.detector import ItemScore
from vigil.serving.loader import ModelInfo, Scorer, encode_png

log = logging.getLogger(__name__)

TOKEN_ENV = "VIGIL_API_TOKEN"

_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
        },
    }
}
_FILES_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                        }
                    },
                    "required": ["files"],
                }
            }
        },
    }
}


def create_app(
    holder: ModelHolder, config: ServingConfig | None = None, *, models: ModelSet | None = None
) -> FastAPI:
    """The service answering with ``holder.current``; ``config`` gives limits, threads and the
    optional score log (opened here, closed when the app shuts down). ``models``: every model of
    the box, on ``/models/{name}/...`` (``vigil.serving.multi``; default: ``holder``'s alone)."""
    config = config or ServingConfig()
    models = models or ModelSet.single(holder)
    torch.set_num_threads(config.server.torch_threads)
    executor = ThreadPoolExecutor(
        max_workers=config.server.max_concurrent_inference, thread_name_prefix="vigil-score"
    )
    score_log = ScoreLog(config.score_log) if config.score_log else None
    run = _runner(executor, config.limits, score_log)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        executor.shutdown(wait=True)
        if score_log is not None:
            score_log.close()

    app = FastAPI(
        docs_url=None,  # /docs is served from local files (mount_offline_docs): no CDN
        title="vigil scoring service",
        version=__version__,
        description="Visual anomaly scores and heat maps from the registry's champion model.",
        lifespan=lifespan,
    )
    app.state.holder = holder
    app.state.config = config
    app.state.score_log = score_log
    limits = config.limits
    auth = _auth_dependency(os.environ.get(TOKEN_ENV))

    app.add_middleware(BodyLimit, limit=limits.max_request_bytes)
    app.add_middleware(  # outermost: sheds load before a body is read
        RequestLimits,
        max_in_flight=config.server.max_in_flight,
        retry_after_s=config.server.retry_after_s,
        read_timeout_s=config.server.read_timeout_s,
    )
    mount_offline_docs(app)

    @app.get("/health", tags=["status"])
    def health() -> dict[str, str]:
        """Liveness: the process is up."""
        return {"status": "ok"}

    @app.get("/ready", tags=["status"])
    def ready() -> dict[str, Any]:
        """Readiness: ``ready``, or ``degraded`` when the registry is unreachable."""
        registry = holder.registry
        scorer = holder.current
        status = "degraded" if registry.reachable is False else "ready"
        return {
            "status": status,
            "model": scorer.info.name,
            "model_version": scorer.info.version,
            "registry_reachable": registry.reachable,
            "registry_error": redact(registry.error) if registry.error else None,
        }

    @app.get("/model", tags=["status"])
    def model_info() -> dict[str, Any]:
        """The model answering now: name, version, threshold, input size, metrics."""
        registry = holder.registry
        return {
            **holder.current.info.as_dict(),
            "refused_versions": registry.refused or {},
            "models": models.describe(),  # every model of the box, serving or refused
        }

    @app.post("/score", tags=["scoring"], dependencies=[auth], openapi_extra=_IMAGE_BODY)
    async def score(request: Request, heatmap: bool = Query(False)) -> dict[str, Any]:
        """Score one image; ``heatmap=true`` adds the overlay PNG (base64)."""
        started = time.perf_counter()
        scorer = holder.current
        data, name = await _one_image_body(request)
        result = (await run(scorer.score_images, [(data, name)], heatmap, scorer.info))[0]
        return _answer(scorer, result, started, heatmap)

    @app.post(
        "/score/heatmap",
        tags=["scoring"],
        dependencies=[auth],
        openapi_extra=_IMAGE_BODY,
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    async def score_heatmap(request: Request) -> Response:
        """Score one image and answer with its heat map PNG; the score is in the headers."""
        started = time.perf_counter()
        scorer = holder.current
        data, name = await _one_image_body(request)
        result = (await run(scorer.score_images, [(data, name)], True, scorer.info))[0]
        answer = _answer(scorer, result, started, False)
        headers = {f"X-Vigil-{k.replace('_', '-')}": str(v) for k, v in answer.items()}
        return Response(encode_png(result.overlay), media_type="image/png", headers=headers)

    @app.post("/score/batch", tags=["scoring"], dependencies=[auth], openapi_extra=_FILES_BODY)
    async def score_batch(request: Request, heatmap: bool = Query(False)) -> dict[str, Any]:
        """Score several images independently (multipart fields ``files``)."""
        started = time.perf_counter()
        scorer = holder.current
        images = await _many_images(request, limits.max_batch, "batch")
        results = await run(scorer.score_images, images, heatmap, scorer.info)
        return _many_answer(scorer, results, started, heatmap)

    @app.post("/score/clip", tags=["scoring"], dependencies=[auth], openapi_extra=_FILES_BODY)
    async def score_clip(request: Request, heatmap: bool = Query(False)) -> dict[str, Any]:
        """Score frames in time order (multipart fields ``files``); video models carry state."""
        started = time.perf_counter()
        scorer = holder.current
        images = await _many_images(request, limits.max_clip_frames, "clip")
        if scorer.is_video and len(images) < 2:
            raise InputError(422, "a clip for a video model needs at least 2 frames")
        results = await run(scorer.score_clip, images, heatmap, scorer.info)
        return _many_answer(scorer, results, started, heatmap)

    if config.console.enabled:  # the operator console at /console (same token)
        from vigil.serving.console import mount_console

        mount_console(app, holder, config, auth, token_set=bool(os.environ.get(TOKEN_ENV)))
    from vigil.serving.webhook import webhook_router  # POST /webhooks/mlflow: push following

    app.include_router(webhook_router())
    app.state.models = models
    app.include_router(models_router(models, run, auth, limits))  # /models/{name}/...
    return app


def _auth_dependency(token: str | None) -> Any:
    """A dependency checking ``Authorization: Bearer <token>``; a no-op without a token."""
    bearer = HTTPBearer(auto_error=False)

    def check(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if token is None:
            return
        if credentials is None or not hmac.compare_digest(
            credentials.credentials.encode(), token.encode()
        ):
            raise HTTPException(
                status_code=401,
                detail="missing or wrong bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return Depends(check)


# --- answers -------------------------------------------------------------------------------------


def _runner(
    executor: ThreadPoolExecutor, limits: LimitSettings, score_log: ScoreLog | None
) -> Callable:
    """``await run(method, blobs, heatmap, info)``: decode, score and log on the inference threads.

    The executor's queue is first in, first out, so under load requests are answered in arrival
    order (bounded tail latency) and the event loop never decodes, computes or writes the log.
    """

    def decode_and_score(
        method: Callable, blobs: list, heatmap: bool, info: ModelInfo
    ) -> list[ItemScore]:
        images = _decode_all(blobs, limits, info.channels)
        try:
            results = method(images, heatmap=heatmap)
        except ValueError as error:  # model-side input errors (e.g. a video model, one image)
            raise InputError(422, str(error)) from None
        if score_log is not None:
            _log_scores(score_log, info, results)
        return results

    async def run(
        method: Callable, blobs: list, heatmap: bool, info: ModelInfo
    ) -> list[ItemScore]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            executor, functools.partial(decode_and_score, method, blobs, heatmap, info)
        )

    return run


def _log_scores(score_log: ScoreLog, info: ModelInfo, results: list[ItemScore]) -> None:
    """Append the scores to the log; a failed write is logged, the answer still goes out."""
    try:
        score_log.write(
            info.name, info.version, [(r.score, r.is_anomaly) for r in results], info.threshold
        )
    except OSError as error:
        log.warning("score log %s: write failed: %s", score_log.path, error)


def _result(scorer: Scorer, result: ItemScore, heatmap: bool) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "score": result.score if math.isfinite(result.score) else None,  # None: no score yet
        "is_anomaly": result.is_anomaly,
        "threshold": scorer.info.threshold,
    }
    if heatmap and result.overlay is not None:
        answer["heatmap_png"] = base64.b64encode(encode_png(result.overlay)).decode("ascii")
    return answer


def _answer(scorer: Scorer, result: ItemScore, started: float, heatmap: bool) -> dict[str, Any]:
    return {
        **_result(scorer, result, heatmap),
        "model_name": scorer.info.name,
        "model_version": scorer.info.version,
        "latency_ms": round(1000 * (time.perf_counter() - started), 3),
    }


def _many_answer(
    scorer: Scorer, results: list[ItemScore], started: float, heatmap: bool
) -> dict[str, Any]:
    return {
        "results": [_result(scorer, r, heatmap) for r in results],
        "threshold": scorer.info.threshold,
        "model_name": scorer.info.name,
        "model_version": scorer.info.version,
        "latency_ms": round(1000 * (time.perf_counter() - started), 3),
    }
