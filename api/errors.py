"""Every error the gateway answers, mapped to an HTTP status in one place.

Clients always get ``{"error": {"code", "message"}}``: domain errors raised anywhere (the
gateway's own and the TorchServe client's), request validation errors, unknown routes and
unexpected failures alike. Under ``/v2`` (the Open Inference Protocol) the same errors take that
protocol's form, ``{"error": "message"}``, and invalid input is its 400 instead of 422. Nothing
of a stack trace or of the submitted input is echoed back.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import metrics
from api.seams import STALE_EXPERIMENT
from serving import torchserve

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """A failure the client should hear about, with its status and a stable code."""

    status: int = HTTPStatus.INTERNAL_SERVER_ERROR
    code: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ApiError):
    status = HTTPStatus.UNPROCESSABLE_ENTITY
    code = "invalid_request"


class PayloadTooLarge(ApiError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    code = "too_large"


class NotReady(ApiError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "not_ready"


class StaleExperiment(NotReady):
    """The experiment routes to a version TorchServe does not have: it will not fix itself."""

    code = STALE_EXPERIMENT


class Overloaded(ApiError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "overloaded"


class Unauthorized(ApiError):
    status = HTTPStatus.UNAUTHORIZED
    code = "unauthorized"


class Forbidden(ApiError):
    status = HTTPStatus.FORBIDDEN
    code = "forbidden"


# The TorchServe client's errors, most specific first: status, code (also the "kind" label of
# the upstream error metric) and what the client is told. The exception's own message, with
# TorchServe's addresses in it, goes to the log only.
UPSTREAM_ERRORS: tuple[tuple[type[torchserve.TorchServeError], HTTPStatus, str, str], ...] = (
    (torchserve.UnknownVersion, HTTPStatus.NOT_FOUND, "unknown_version", ""),
    (
        torchserve.ModelNotReady,
        HTTPStatus.SERVICE_UNAVAILABLE,
        "model_not_ready",
        "no worker of the model is ready to answer; try again shortly",
    ),
    (
        torchserve.UpstreamUnavailable,
        HTTPStatus.SERVICE_UNAVAILABLE,
        "upstream_unavailable",
        "the model server is unavailable; try again shortly",
    ),
    (
        torchserve.UpstreamTimeout,
        HTTPStatus.GATEWAY_TIMEOUT,
        "upstream_timeout",
        "the model server did not answer in time",
    ),
    (torchserve.ManagementRefused, HTTPStatus.CONFLICT, "refused", ""),
    (
        torchserve.TorchServeError,
        HTTPStatus.BAD_GATEWAY,
        "bad_upstream_response",
        "the model server answered something unexpected",
    ),
)


OIP_PREFIX = "/v2"
"""The Open Inference Protocol's routes, whose errors are ``{"error": "message"}``."""


RETRY_AFTER = {"Retry-After": "1"}
"""On a 503 from TorchServe being unreachable or without a ready worker: worth a retry soon."""


def error_response(
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    *,
    path: str = "",
) -> JSONResponse:
    """The one error body every failure is answered with, in the form of ``path``'s protocol."""
    if path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/"):
        if status == HTTPStatus.UNPROCESSABLE_ENTITY:
            status = HTTPStatus.BAD_REQUEST
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    return error_response(exc.status, exc.code, exc.message, headers, path=request.url.path)


async def _upstream_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, torchserve.InvalidInput):
        # The handler refused the content: the client's fault, not TorchServe's.
        status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE if exc.code == "too_large" else 422
        return error_response(status, exc.code, exc.message, path=request.url.path)
    if isinstance(exc, torchserve.UpstreamTimeout):
        # A live model that is slow stays 504; TorchServe gone mid-request or restarting (the
        # version without a ready worker while it loads) is unavailability: 503, retry soon.
        settings = request.app.state.settings
        exc = await request.app.state.client.timeout_cause(
            exc, within_s=settings.readiness_timeout_s, waited_s=settings.upstream_timeout_s
        )
    status, code, message = next(
        (s, c, m) for kind, s, c, m in UPSTREAM_ERRORS if isinstance(exc, kind)
    )
    if isinstance(exc, torchserve.UnknownVersion):
        message = f"model version {exc.version!r} is not registered"
    metrics.UPSTREAM_ERRORS.labels(kind=code).inc()
    logger.warning(
        "upstream error %s on %s: %s",
        code,
        request.url.path,
        exc,
        extra={"fields": {"request_id": getattr(request.state, "request_id", None)}},
    )
    headers = RETRY_AFTER if status == HTTPStatus.SERVICE_UNAVAILABLE else None
    return error_response(status, code, message or str(exc), headers, path=request.url.path)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Locations and reasons only: pydantic's "input" would echo the review text back.
    problems = [
        f"{'.'.join(str(part) for part in error.get('loc', ()))}: {error.get('msg', 'invalid')}"
        for error in exc.errors()
    ]
    return error_response(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        "invalid_request",
        "; ".join(problems),
        path=request.url.path,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == HTTPStatus.BAD_REQUEST:
        # FastAPI's answer to a body it cannot decode (invalid UTF-8, nesting too deep): to the
        # client that is an invalid body like any other.
        return error_response(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            "invalid_request",
            "the body is not valid JSON (UTF-8, reasonably nested)",
            path=request.url.path,
        )
    status = HTTPStatus(exc.status_code)
    code = status.phrase.lower().replace(" ", "_").replace("-", "_")
    message = exc.detail if isinstance(exc.detail, str) else status.phrase
    headers = exc.headers
    if status == HTTPStatus.METHOD_NOT_ALLOWED:
        headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
    return error_response(exc.status_code, code, message, headers, path=request.url.path)


def _allowed_methods(request: Request) -> list[str]:
    # Starlette's 405 names only the methods of the first route whose path matched (GET
    # /v1/experiment, not its PUT): every operation the OpenAPI document has for the path counts.
    methods: set[str] = set()
    for template, operations in request.app.openapi()["paths"].items():
        parts = re.split(r"(\{[^}]+\})", template)
        pattern = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
        if re.fullmatch(pattern, request.url.path):
            methods |= {method.upper() for method in operations}
    if "GET" in methods:
        methods.add("HEAD")  # Starlette answers HEAD wherever it answers GET
    return sorted(methods)


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    # Disk full, read-only, locked or unreachable database: nothing was written (the transaction
    # rolled back), so the client may simply try again.
    logger.error(
        "store unavailable on %s %s: %s",
        request.method,
        request.url.path,
        exc,
        extra={"fields": {"request_id": getattr(request.state, "request_id", None)}},
    )
    return error_response(
        HTTPStatus.SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the A/B store cannot be written right now; nothing was saved, try again shortly",
        path=request.url.path,
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error(
        "unhandled error on %s %s",
        request.method,
        request.url.path,
        exc_info=exc,
        extra={"fields": {"request_id": getattr(request.state, "request_id", None)}},
    )
    return error_response(
        HTTPStatus.INTERNAL_SERVER_ERROR,
        "internal_error",
        "the gateway failed to answer this request; it has been logged",
        path=request.url.path,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the mapping on an app."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(torchserve.TorchServeError, _upstream_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(OperationalError, _store_error)
    app.add_exception_handler(Exception, _unexpected_error)
