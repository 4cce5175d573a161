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
format of ``vigil.scheduling.scorelog``, read by ``vigil.scheduling.drift``). Lines are appended
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

import numpy as np
import torch
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from vigil import __version__
from vigil.scheduling.scorelog import ScoreLog
from vigil.redact import redact
from vigil.serving import LimitSettings, ServingConfig
from vigil.serving.docs import mount_offline_docs
from vigil.serving.follow import ModelHolder
from vigil.serving.limits import RequestLimits
from vigil.serving.loader import FrameScore, ModelInfo, Scorer, encode_png

log = logging.getLogger(__name__)

TOKEN_ENV = "VIGIL_API_TOKEN"
RAW_TYPES = ("image/", "application/octet-stream")

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


class InputError(HTTPException):
    """A request whose input cannot be scored; ``status`` 413 or 422 with a specific message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status_code=status, detail=message)


class BodyTooLargeError(Exception):
    """Raised from ``receive`` once a request body grows past the limit (see ``BodyLimit``)."""


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit`` bytes, for every endpoint.

    A declared Content-Length over the limit is refused before reading; any other body (chunked
    uploads have no length) is counted while the app reads it, and reading stops with a 413 as
    soon as the count passes the limit, so no request holds more than ``limit`` bytes.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            detail = f"request body of {int(length)} bytes exceeds the limit of {self.limit} bytes"
            await self._refuse(detail, scope, receive, send)
            return
        started = False

        async def tracked_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, self._counting(receive), tracked_send)
        except BodyTooLargeError:
            if started:  # cannot happen with our endpoints: they read before answering
                raise
            detail = f"request body exceeds the limit of {self.limit} bytes"
            await self._refuse(detail, scope, receive, send)

    def _counting(self, receive: Callable) -> Callable:
        """``receive`` that raises BodyTooLargeError once the body read so far passes the limit."""
        received = 0

        async def counting_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLargeError
            return message

        return counting_receive

    @staticmethod
    async def _refuse(detail: str, scope: dict, receive: Callable, send: Callable) -> None:
        """Answer 413 and close: the rest of the body is never read."""
        response = JSONResponse({"detail": detail}, status_code=413)
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


def create_app(holder: ModelHolder, config: ServingConfig | None = None) -> FastAPI:
    """The service answering with ``holder.current``; ``config`` gives limits, threads and the
    optional score log (opened here, closed when the app shuts down)."""
    config = config or ServingConfig()
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
        return Response(encode_png(result.heatmap), media_type="image/png", headers=headers)

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
    return app


# --- request parsing ---------------------------------------------------------------------------
# Bodies are read whole here: ``BodyLimit`` stops any read past max_request_bytes with a 413.


async def _one_image_body(request: Request) -> tuple[bytes, str]:
    """(bytes, name) of the single image in a raw or multipart body."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InputError(422, "multipart body has no file field 'file'")
        return await upload.read(), upload.filename or "file"
    if content_type and not content_type.startswith(RAW_TYPES):
        raise InputError(
            415,
            f"unsupported content type {content_type!r}: send image bytes (image/*, "
            "application/octet-stream) or multipart/form-data with a 'file' field",
        )
    return await request.body(), "body"


async def _many_images(request: Request, max_items: int, what: str) -> list[tuple[bytes, str]]:
    """(bytes, name) of the multipart ``files`` fields of a batch or clip request, in order."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise InputError(422, f"a {what} is multipart/form-data with one 'files' field per image")
    form = await request.form(max_files=max_items + 1)
    uploads = [item for item in form.getlist("files") if not isinstance(item, str)]
    if not uploads:
        raise InputError(422, f"empty {what}: send at least one image as multipart field 'files'")
    if len(uploads) > max_items:
        raise InputError(413, f"{what} of {len(uploads)} images exceeds the limit of {max_items}")
    return [
        (await upload.read(), f"files[{i}] ({upload.filename or 'unnamed'})")
        for i, upload in enumerate(uploads)
    ]


def _decode_all(
    blobs: list[tuple[bytes, str]], limits: LimitSettings, model_channels: int
) -> list[np.ndarray]:
    """Decode a request's images, with 413/422 answers naming the problem.

    Every header is read first (no pixel decoded yet): an image over ``max_image_side`` or
    ``max_image_pixels``, or a request whose images sum to more than ``max_request_pixels``,
    gets 413 before any decoding (decompression bombs cost their header only).
    """
    sizes = [_header_size(data, name, limits) for data, name in blobs]
    total = sum(width * height for width, height in sizes)
    if total > limits.max_request_pixels:
        raise InputError(
            413,
            f"request of {len(blobs)} image(s) with {total:,} pixels in all exceeds the limit of "
            f"{limits.max_request_pixels:,} decoded pixels per request",
        )
    return [_decode(data, name, limits, model_channels) for data, name in blobs]


def _decode(data: bytes, name: str, limits: LimitSettings, model_channels: int) -> np.ndarray:
    """Image bytes -> decoded array, with 413/422 answers naming the problem.

    ``model_channels``: what the model takes (1 gray, 3 RGB), named when the channel count of
    the image is one the service cannot convert to it.
    """
    from vigil.data.preprocess import ImageDecodeError, ImageTooLargeError, decode_image

    try:
        image = decode_image(data, name, limits.max_image_pixels)
    except ImageTooLargeError as error:
        raise InputError(413, str(error)) from None
    except ImageDecodeError as error:
        message = str(error)
        if "channel count" in message:  # a count decode_image refuses: say what to send
            message = f"{message}; {_model_takes(model_channels)}"
        raise InputError(422, message) from None
    _check_side(image.shape[1], image.shape[0], name, limits.max_image_side)
    return image


def _model_takes(model_channels: int) -> str:
    """What the model expects, and which images the service converts to it."""
    kind = "gray" if model_channels == 1 else "RGB"
    return (
        f"the model takes {model_channels}-channel ({kind}) images: send 1 (gray), 2 (gray + "
        "alpha), 3 (color) or 4 (color + alpha) channels; alpha is dropped"
    )


def _header_size(data: bytes, name: str, limits: LimitSettings) -> tuple[int, int]:
    """(width, height) from the header, refused with 413 over the per-image limits and with
    422 when no image format is recognized (decompression bombs are never decoded)."""
    from vigil.data.preprocess import (
        ImageDecodeError,
        ImageTooLargeError,
        check_pixel_budget,
        image_header_size,
    )

    if not data:
        raise InputError(422, f"{name}: empty image (0 bytes)")
    try:
        width, height = image_header_size(data, name)
        check_pixel_budget(width, height, limits.max_image_pixels, name)
    except ImageDecodeError as error:  # ImageTooLargeError included
        raise InputError(413 if isinstance(error, ImageTooLargeError) else 422, str(error)) from None
    _check_side(width, height, name, limits.max_image_side)
    return width, height


def _check_side(width: int, height: int, name: str, max_side: int) -> None:
    if max(width, height) > max_side:
        raise InputError(
            413,
            f"{name}: image of {width}x{height} exceeds the limit of {max_side} pixels per side",
        )


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
    ) -> list[FrameScore]:
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
    ) -> list[FrameScore]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            executor, functools.partial(decode_and_score, method, blobs, heatmap, info)
        )

    return run


def _log_scores(score_log: ScoreLog, info: ModelInfo, results: list[FrameScore]) -> None:
    """Append the scores to the log; a failed write is logged, the answer still goes out."""
    try:
        score_log.write(
            info.name, info.version, [(r.score, r.is_anomaly) for r in results], info.threshold
        )
    except OSError as error:
        log.warning("score log %s: write failed: %s", score_log.path, error)


def _result(scorer: Scorer, result: FrameScore, heatmap: bool) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "score": result.score if math.isfinite(result.score) else None,  # None: no score yet
        "is_anomaly": result.is_anomaly,
        "threshold": scorer.info.threshold,
    }
    if heatmap and result.heatmap is not None:
        answer["heatmap_png"] = base64.b64encode(encode_png(result.heatmap)).decode("ascii")
    return answer


def _answer(scorer: Scorer, result: FrameScore, started: float, heatmap: bool) -> dict[str, Any]:
    return {
        **_result(scorer, result, heatmap),
        "model_name": scorer.info.name,
        "model_version": scorer.info.version,
        "latency_ms": round(1000 * (time.perf_counter() - started), 3),
    }


def _many_answer(
    scorer: Scorer, results: list[FrameScore], started: float, heatmap: bool
) -> dict[str, Any]:
    return {
        "results": [_result(scorer, r, heatmap) for r in results],
        "threshold": scorer.info.threshold,
        "model_name": scorer.info.name,
        "model_version": scorer.info.version,
        "latency_ms": round(1000 * (time.perf_counter() - started), 3),
    }
