"""Dependencies of the routes, as ``Annotated`` aliases, in one place.

Everything is created once by the app (``api.app``) and kept on ``app.state``; these functions
only hand it out, so tests swap any of it by passing their own to ``create_app``. They are
``async def`` because they never block: FastAPI runs a plain ``def`` dependency in its thread
pool, and those hops cost the prediction route ~1 ms of CPU per request (docs/performance.md).
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from abtesting.service import ABTesting
from api.batching import Predictor
from api.drain import Drain
from api.errors import Forbidden, Unauthorized
from api.seams import PredictionRecorder, VariantChooser
from api.settings import Settings
from serving.torchserve import TorchServeClient


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_client(request: Request) -> TorchServeClient:
    client: TorchServeClient = request.app.state.client
    return client


async def get_predictor(request: Request) -> Predictor:
    predictor: Predictor = request.app.state.predictor
    return predictor


async def get_chooser(request: Request) -> VariantChooser:
    chooser: VariantChooser = request.app.state.chooser
    return chooser


async def get_recorder(request: Request) -> PredictionRecorder:
    recorder: PredictionRecorder = request.app.state.recorder
    return recorder


async def get_ab_testing(request: Request) -> ABTesting | None:
    """The A/B subsystem, or None where the gateway runs without a store."""
    ab: ABTesting | None = request.app.state.ab
    return ab


async def get_drain(request: Request) -> Drain:
    drain: Drain = request.app.state.drain
    return drain


async def get_request_id(request: Request) -> str:
    """The id the request middleware gave this request (the client's, if it sent a sane one)."""
    request_id: str = request.state.request_id
    return request_id


SettingsDep = Annotated[Settings, Depends(get_settings)]
ClientDep = Annotated[TorchServeClient, Depends(get_client)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
"""Predictions go through the adaptive batcher (or straight to the client with it off)."""
ChooserDep = Annotated[VariantChooser, Depends(get_chooser)]
RecorderDep = Annotated[PredictionRecorder, Depends(get_recorder)]
DrainDep = Annotated[Drain, Depends(get_drain)]
ABTestingDep = Annotated[ABTesting | None, Depends(get_ab_testing)]
RequestIdDep = Annotated[str, Depends(get_request_id)]

_bearer = HTTPBearer(auto_error=False, description="STARRATING_ADMIN_TOKEN")


async def require_admin(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Admin routes: closed without a configured token, 401 without a token, 403 if wrong."""
    if settings.admin_token is None:
        raise Forbidden("admin routes are closed: no STARRATING_ADMIN_TOKEN is configured")
    if credentials is None:
        raise Unauthorized("admin route: send 'Authorization: Bearer <admin token>'")
    expected = settings.admin_token.get_secret_value().encode()
    if not hmac.compare_digest(credentials.credentials.encode(), expected):
        raise Forbidden("admin token is not valid")


AdminDep = Depends(require_admin)
"""Use as ``dependencies=[AdminDep]`` on admin routes."""
