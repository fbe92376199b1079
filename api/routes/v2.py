"""The Open Inference Protocol (v2, REST): health, metadata and inference for the stars model.

Clients written for KServe, Triton, MLServer and others work unchanged. An ``infer`` without a
version goes through the A/B router like ``/v1/predictions`` (``api.rating``): same limits,
variant, metrics and recording, and the answer's ``id`` is the request id ``/v1/feedback`` takes.
A version in the path forces that version. Errors are the protocol's ``{"error": "message"}``
(``api.errors``). Not ready answers 503, as KServe's own server does (the clients read any
non-2xx as "not ready").
"""

from __future__ import annotations

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
Version = Annotated[str, Path(pattern=VERSION_PATTERN, description="a model version")]


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


async def _metadata(
    model_name: str, version: str | None, settings: SettingsDep, client: ClientDep
) -> ModelMetadata:
    _check_model(model_name, settings.model_name)
    versions = [v.version for v in await client.list_versions()]
    if not versions:
        raise NotReady(f"model {model_name!r} has no registered version")
    if version is not None and version not in versions:
        raise ModelNotFound(f"model {model_name!r} has no version {version!r}")
    return model_metadata(model_name, versions)


@router.get(
    "/models/{model_name}",
    response_model=ModelMetadata,
    responses=_responses(404, 502, 503, 504),
    summary="OIP model metadata",
)
async def get_model_metadata(
    model_name: ModelName, settings: SettingsDep, client: ClientDep
) -> ModelMetadata:
    return await _metadata(model_name, None, settings, client)


@router.get(
    "/models/{model_name}/versions/{version}",
    response_model=ModelMetadata,
    responses=_responses(404, 502, 503, 504),
    summary="OIP model metadata of one version",
)
async def get_version_metadata(
    model_name: ModelName, version: Version, settings: SettingsDep, client: ClientDep
) -> ModelMetadata:
    return await _metadata(model_name, version, settings, client)


async def _ready(
    model_name: str, version: str | None, settings: SettingsDep, client: ClientDep
) -> ModelReadyResponse:
    _check_model(model_name, settings.model_name)
    # describe, not model_ready: an unknown version is a 404, not "not ready".
    described = await client.describe(version)
    if not described.ready:
        raise NotReady(f"model {model_name!r} version {described.version} has no ready worker")
    return ModelReadyResponse(name=model_name, ready=True)


@router.get(
    "/models/{model_name}/ready",
    response_model=ModelReadyResponse,
    responses=_responses(404, 502, 503, 504),
    summary="OIP model ready (the default version)",
)
async def model_ready(
    model_name: ModelName, settings: SettingsDep, client: ClientDep
) -> ModelReadyResponse:
    return await _ready(model_name, None, settings, client)


@router.get(
    "/models/{model_name}/versions/{version}/ready",
    response_model=ModelReadyResponse,
    responses=_responses(404, 502, 503, 504),
    summary="OIP model ready (one version)",
)
async def version_ready(
    model_name: ModelName, version: Version, settings: SettingsDep, client: ClientDep
) -> ModelReadyResponse:
    return await _ready(model_name, version, settings, client)


INFER_ERRORS = _responses(400, 404, 413, 502, 503, 504)


async def _infer(
    model_name: str,
    version: str | None,
    body: InferenceRequest,
    rating: RatingDep,
    x_user_id: str | None,
) -> InferenceResponse:
    _check_model(model_name, rating.settings.model_name)
    texts = request_texts(body)
    outputs = requested_outputs(body)
    user_id = request_user_id(body, x_user_id)
    if body.id is not None:
        rating.request.state.request_id = body.id
    rated = await rating.rate(texts, user_id=user_id, forced_version=version)
    return infer_response(model_name, rated, outputs)


@inference.post(
    "/models/{model_name}/infer",
    response_model=InferenceResponse,
    responses=INFER_ERRORS,
    summary="OIP inference, routed by the A/B experiment",
)
async def infer(
    model_name: ModelName,
    body: InferenceRequest,
    rating: RatingDep,
    x_user_id: UserIdHeader = None,
) -> InferenceResponse:
    return await _infer(model_name, None, body, rating, x_user_id)


@inference.post(
    "/models/{model_name}/versions/{version}/infer",
    response_model=InferenceResponse,
    responses=INFER_ERRORS,
    summary="OIP inference on one version",
)
async def infer_version(
    model_name: ModelName,
    version: Version,
    body: InferenceRequest,
    rating: RatingDep,
    x_user_id: UserIdHeader = None,
) -> InferenceResponse:
    return await _infer(model_name, version, body, rating, x_user_id)
