"""ASGI middleware around every request: request ids, metrics and the access log; body limit.

``RequestObserverMiddleware`` gives each request an id (the client's ``X-Request-Id`` when it
is sane), returns it as a header, and as the answer goes out counts it in metrics and writes
the one JSON access line. Routes add what only they know (version, variant, text lengths) to
``request.state``.

``InFlightLimitMiddleware`` answers 503 at once while ``max_in_flight`` API requests are being
answered, instead of letting more queue for TorchServe's connection pool.

``BodySizeLimitMiddleware`` refuses bodies over the limit with 413 before anything parses
them: at once when ``Content-Length`` says so, and while reading when a chunked body grows too
large.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import metrics
from api.errors import RETRY_AFTER, Overloaded, PayloadTooLarge, error_response

logger = logging.getLogger("api.access")

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{8,64}$"
_SANE_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)
UNMATCHED_ROUTE = "unmatched"
LIMITED_PREFIXES = ("/v1/", "/v2/models/")


def _request_id(headers: Headers) -> str:
    offered = headers.get(REQUEST_ID_HEADER, "")
    return offered if _SANE_REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex


class RequestObserverMiddleware:
    """Request id, in-flight gauge, request metrics and one access log line per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(Headers(scope=scope))
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500  # what the client sees if the app fails before answering
        observed = False
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, observed
            if message["type"] == "http.response.start":
                status = message["status"]
                # From the state: a route may adopt the client's id from the body (OIP "id").
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = state["request_id"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # Counted and logged before the last byte leaves: whoever has the answer can
                # already see it in /metrics and the log (background work is not timed).
                observed = True
                self._observe(scope, state, status, time.perf_counter() - started)
            await send(message)

        metrics.IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            metrics.IN_FLIGHT.dec()
            if not observed:
                self._observe(scope, state, status, time.perf_counter() - started)

    @staticmethod
    def _observe(scope: Scope, state: dict[str, Any], status: int, elapsed: float) -> None:
        route = scope.get("route")
        # Templates, not raw paths: label values must stay few.
        template = getattr(route, "path", UNMATCHED_ROUTE)
        version = state.get("version") or metrics.NO_VERSION
        metrics.REQUESTS.labels(
            route=template, method=scope["method"], status=str(status), version=version
        ).inc()
        metrics.REQUEST_LATENCY.labels(route=template).observe(elapsed)
        lengths: list[int] = state.get("text_lengths", [])
        logger.info(
            "request",
            extra={
                "fields": {
                    "request_id": state["request_id"],
                    "method": scope["method"],
                    "route": template,
                    "status": status,
                    "version": state.get("version"),
                    "variant": state.get("variant"),
                    "latency_ms": round(elapsed * 1000, 2),
                    "text_count": len(lengths),
                    "text_lengths": lengths,
                }
            },
        )


class InFlightLimitMiddleware:
    """503 ``overloaded`` (with ``Retry-After``) for an API request past ``max_in_flight``.

    Behind a slow or stuck TorchServe every request would otherwise wait out its timeout, and
    the waiting requests (and their bodies) would pile up without bound. Only ``/v1/`` routes and
    the Open Inference Protocol's model routes count: probes and /metrics must answer under any
    load.
    """

    def __init__(self, app: ASGIApp, max_in_flight: int) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.in_flight = 0  # one event loop per process: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(LIMITED_PREFIXES):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            error = Overloaded(
                f"{self.max_in_flight} requests are already being answered; retry shortly"
            )
            response = error_response(
                error.status,
                error.code,
                error.message,
                headers=RETRY_AFTER,
                path=scope["path"],
            )
            await response(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class BodySizeLimitMiddleware:
    """Answers 413 for a body over ``max_body_bytes``, declared or chunked, before parsing."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._refuse(scope, receive, send)
            return
        # Read the whole (bounded) body first, then replay it: the app never sees a partial one.
        body = bytearray()
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more_body = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                await self._refuse(scope, receive, send)
                return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = PayloadTooLarge(f"request body is over the limit of {self.max_body_bytes} bytes")
        response = error_response(error.status, error.code, error.message, path=scope["path"])
        await response(scope, receive, send)
