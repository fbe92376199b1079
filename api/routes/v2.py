"""The Open Inference Protocol (v2, REST): health, metadata and inference for the stars model.

Clients written for KServe, Triton, MLServer and others work unchanged. An ``infer`` without a
version goes through the A/B router like ``/v1/predictions`` (``api.rating``): same limits,
variant, metrics and recording, and the answer's ``id`` is the request id ``/v1/feedback`` takes.
A version in the path forces that version. Errors are the protocol's ``{"error": "message"}``
(``api.errors``). Not ready answers 503, as KServe's own server does (the clients read any
non-2xx as "not ready").
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.routing import APIRoute

from api.deps import ClientDep, SettingsDep
from api.errors import ApiError, InvalidInput, NotReady
from api.oip import (
    BINARY_HEADER,
    BINARY_REFUSAL,
    PROTOCOL_PREFIX,
    InferenceRequest,
    InferenceResponse,
    LiveResponse,
    ModelMetadata,
    ModelReadyResponse,
    OipError,
    ReadyResponse,
    ServerMetadata,
    infer_response,
    model_metadata,
    request_texts,
    request_user_id,
    requested_outputs,
)
from api.rating import RatingDep, UserIdHeader
from api.routes import health
from api.schemas import ReadinessResponse
from starrating import __version__
from starrating.service import VERSION_PATTERN

SERVER_NAME = "starrating"
JSON = "application/json"


class ModelNotFound(ApiError):
    status = 404
    code = "model_not_found"


class _InferenceRoute(APIRoute):
    """Reads every inference body as JSON, and refuses Triton's binary data extension first.

    The protocol's body is JSON whatever the request says: tritonclient sends it without a
    Content-Type, which FastAPI would otherwise hand to the model as bytes.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def as_json(request: Request) -> Response:
            if BINARY_HEADER in request.headers:
                raise InvalidInput(BINARY_REFUSAL)
            if request.headers.get("content-type", "").split(";")[0].strip() != JSON:
                headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
                headers.append((b"content-type", JSON.encode()))
                request = Request({**request.scope, "headers": headers}, request.receive)
            return await handler(request)

        return as_json


def _responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    descriptions = {
        400: "invalid request, or Triton's binary data extension",
        404: "unknown model or version",
        413: "body, batch or text over the configured limit",
        502: "TorchServe answered something unexpected",
        503: "not ready: TorchServe down or no worker ready",
        504: "TorchServe did not answer in time",
    }
    # "default" also keeps FastAPI from announcing a 422 these routes never answer (it is 400).
    responses: dict[int | str, dict[str, object]] = {
        status: {"model": OipError, "description": descriptions[status]} for status in statuses
    }
    responses["default"] = {"model": OipError, "description": "any other error"}
    return responses


router = APIRouter(prefix=PROTOCOL_PREFIX, tags=["open inference protocol"])
inference = APIRouter(
    prefix=PROTOCOL_PREFIX, tags=["open inference protocol"], route_class=_InferenceRoute
)

ModelName = Annotated[str, Path(description='the model\'s name, "stars"')]
# {version} in the path, model_version in the endpoints (as KServe names it).
ModelVersion = Annotated[
    str,
    Path(alias="version", pattern=VERSION_PATTERN, description="a model version"),
]


def _endpoint_for(endpoint: Callable[..., Any], *, versioned: bool) -> Callable[..., Any]:
    """``endpoint`` as FastAPI should read it on one of its two paths.

    Unversioned, it is read without ``model_version`` and called with the default, None (read
    as is, the parameter would become a query parameter); versioned, ``model_version`` is the
    required path parameter ``{version}``.
    """
    signature = inspect.signature(endpoint, eval_str=True)
    parameters = [p for p in signature.parameters.values() if p.name != "model_version"]
    if versioned:
        kind = inspect.Parameter.KEYWORD_ONLY
        parameters.append(inspect.Parameter("model_version", kind, annotation=ModelVersion))
    read_as = functools.update_wrapper(functools.partial(endpoint), endpoint)  # its name, its doc
    read_as.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return read_as


def _add_routes(
    router: APIRouter,
    suffix: str,
    endpoint: Callable[..., Any],
    *,
    names: tuple[str, str],
    summaries: tuple[str, str],
    **route: Any,
) -> None:
    """Registers ``endpoint`` at ``/models/{model_name}{suffix}`` and at its versioned twin.

    As KServe's ``register_v2_endpoints``: one endpoint with an optional ``model_version``, added
    for both paths. Unlike KServe, the twin stays in the OpenAPI document, and each route keeps
    its own name (the operation id) and summary.
    """
    unversioned = _endpoint_for(endpoint, versioned=False)
    versioned = _endpoint_for(endpoint, versioned=True)
    path = f"/models/{{model_name}}{suffix}"
    router.add_api_route(path, unversioned, name=names[0], summary=summaries[0], **route)
    path = f"/models/{{model_name}}/versions/{{version}}{suffix}"
    router.add_api_route(path, versioned, name=names[1], summary=summaries[1], **route)


def _check_model(model_name: str, settings_model: str) -> None:
    if model_name != settings_model:
        raise ModelNotFound(
            f"model {model_name!r} is not served here; the model is {settings_model!r}"
        )


@router.get("/health/live", response_model=LiveResponse, summary="OIP server live")
async def server_live() -> LiveResponse:
    return LiveResponse(live=True)


@router.get(
    "/health/ready",
    response_model=ReadyResponse,
    responses=_responses(503),
    summary="OIP server ready: TorchServe up and the served versions ready",
)
async def server_ready(
    readiness: Annotated[ReadinessResponse, Depends(health.readyz)],
) -> ReadyResponse:
    # /readyz itself, as a dependency: the same checks (and its 503 when they fail).
    return ReadyResponse(ready=True)


@router.get("", response_model=ServerMetadata, summary="OIP server metadata")
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name=SERVER_NAME, version=__version__, extensions=[])


async def get_model_metadata(
    model_name: ModelName,
    settings: SettingsDep,
    client: ClientDep,
    *,
    model_version: str | None = None,
) -> ModelMetadata:
    _check_model(model_name, settings.model_name)
    versions = [v.version for v in await client.list_versions()]
    if not versions:
        raise NotReady(f"model {model_name!r} has no registered version")
    if model_version is not None and model_version not in versions:
        raise ModelNotFound(f"model {model_name!r} has no version {model_version!r}")
    return model_metadata(model_name, versions)


_add_routes(
    router,
    "",
    get_model_metadata,
    names=("get_model_metadata", "get_version_metadata"),
    summaries=("OIP model metadata", "OIP model metadata of one version"),
    methods=["GET"],
    response_model=ModelMetadata,
    responses=_responses(404, 502, 503, 504),
)


async def model_ready(
    model_name: ModelName,
    settings: SettingsDep,
    client: ClientDep,
    *,
    model_version: str | None = None,
) -> ModelReadyResponse:
    _check_model(model_name, settings.model_name)
    # describe, not model_ready: an unknown version is a 404, not "not ready".
    described = await client.describe(model_version)
    if not described.ready:
        raise NotReady(f"model {model_name!r} version {described.version} has no ready worker")
    return ModelReadyResponse(name=model_name, ready=True)


_add_routes(
    router,
    "/ready",
    model_ready,
    names=("model_ready", "version_ready"),
    summaries=("OIP model ready (the default version)", "OIP model ready (one version)"),
    methods=["GET"],
    response_model=ModelReadyResponse,
    responses=_responses(404, 502, 503, 504),
)


async def infer(
    model_name: ModelName,
    body: InferenceRequest,
    rating: RatingDep,
    x_user_id: UserIdHeader = None,
    *,
    model_version: str | None = None,
) -> InferenceResponse:
    _check_model(model_name, rating.settings.model_name)
    texts = request_texts(body)
    outputs = requested_outputs(body)
    user_id = request_user_id(body, x_user_id)
    if body.id is not None:
        rating.request.state.request_id = body.id
    rated = await rating.rate(texts, user_id=user_id, forced_version=model_version)
    return infer_response(model_name, rated, outputs)


_add_routes(
    inference,
    "/infer",
    infer,
    names=("infer", "infer_version"),
    summaries=("OIP inference, routed by the A/B experiment", "OIP inference on one version"),
    methods=["POST"],
    response_model=InferenceResponse,
    responses=_responses(400, 404, 413, 502, 503, 504),
)
