"""Server limits that keep the scoring service answering under load and against slow clients.

- ``RequestLimits`` (ASGI middleware on the scoring paths ``/score*``):
  * load shedding: at most ``server.max_in_flight`` scoring requests are admitted at once
    (reading, queued for an inference thread, or scoring); one more gets **503** with
    ``Retry-After: server.retry_after_s`` at once, before its body is read, so a burst costs a
    bounded queue (bounded latency for the admitted) instead of an unbounded one;
  * body read deadline: a request whose body has not fully arrived within
    ``server.read_timeout_s`` of its start gets **408** and the connection is closed (a client
    trickling its upload cannot hold a slot for ever).
  Status endpoints (``/health``, ``/ready``, ``/model``, docs) are never shed.
- ``header_timeout_protocol``: uvicorn's h11 protocol with a deadline for the request *head*:
  a connection that does not deliver a complete request line and headers within
  ``server.read_timeout_s`` of opening (or of its previous answer) is closed. uvicorn itself
  only times out idle keep-alive connections (``timeout_keep_alive``), not a client that
  sends half a header and waits.
- ``BodyLimit`` (ASGI middleware, every path): 413 for a body over ``limits.max_request_bytes``,
  counted while read (chunked uploads too).
- ``uvicorn_options(settings)``: the keyword arguments ``vigil serve`` passes to uvicorn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi.responses import JSONResponse

SHED_PATHS = ("/score",)


class BodyReadTimeoutError(Exception):
    """Raised from ``receive`` when the body has not arrived by the read deadline."""


class RequestLimits:
    """ASGI middleware: admission limit with 503 + Retry-After, and a body read deadline."""

    def __init__(
        self,
        app: Any,
        *,
        max_in_flight: int,
        retry_after_s: int,
        read_timeout_s: float,
        paths: tuple[str, ...] = SHED_PATHS,
    ) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.retry_after_s = retry_after_s
        self.read_timeout_s = read_timeout_s
        self.paths = paths
        self.in_flight = 0  # touched only on the event loop: no lock needed

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.paths):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            detail = (
                f"server busy: {self.in_flight} scoring requests in flight (limit "
                f"{self.max_in_flight}); retry after {self.retry_after_s} s"
            )
            headers = {"Retry-After": str(self.retry_after_s), "Connection": "close"}
            await JSONResponse({"detail": detail}, 503, headers=headers)(scope, receive, send)
            return
        self.in_flight += 1
        started = False

        async def tracked_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, self._timed(receive), tracked_send)
        except BodyReadTimeoutError:
            if started:
                raise
            detail = f"request body not received within {self.read_timeout_s:g} s"
            response = JSONResponse({"detail": detail}, 408, headers={"Connection": "close"})
            await response(scope, receive, send)
        finally:
            self.in_flight -= 1

    def _timed(self, receive: Callable) -> Callable:
        """``receive`` that raises BodyReadTimeoutError once the body is late; after the last
        body chunk it is ``receive`` itself (waiting for a disconnect is not reading)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout_s
        body_done = False

        async def timed_receive() -> dict:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except TimeoutError:
                raise BodyReadTimeoutError from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        return timed_receive


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


def header_timeout_protocol(timeout_s: float) -> type:
    """uvicorn's ``H11Protocol`` closing connections whose request head is late (see above)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._in_request():
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request's head has the same deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _in_request(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _expire(self) -> None:
            self._head_timer = None
            if not self._in_request() and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutH11Protocol


def uvicorn_options(server: Any) -> dict[str, Any]:
    """uvicorn keyword arguments from ``ServerSettings``: keep-alive and request-head timeouts."""
    return {
        "timeout_keep_alive": server.keep_alive_s,
        "http": header_timeout_protocol(server.read_timeout_s),
    }
