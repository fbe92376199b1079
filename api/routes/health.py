"""Liveness and readiness probes.

``/healthz`` says the process answers. ``/readyz`` says TorchServe is reachable and every
version the gateway sends traffic to is ready, and it says so fast: each check gives up after
``readiness_timeout_s`` and counts as not ready. From SIGTERM on (api/drain.py) it answers 503
"draining" while the gateway still serves what it is sent.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from api.deps import ChooserDep, ClientDep, DrainDep, SettingsDep
from api.errors import NotReady
from api.schemas import HealthResponse, ReadinessResponse, error_responses

router = APIRouter(tags=["operations"])

DEFAULT_VERSION_NAME = "default"


@router.get("/healthz", response_model=HealthResponse, summary="Liveness")
async def healthz() -> HealthResponse:
    return HealthResponse(status="ok")


@router.get(
    "/readyz",
    response_model=ReadinessResponse,
    responses=error_responses(503),
    summary="Readiness: TorchServe reachable and the served versions ready",
)
async def readyz(
    settings: SettingsDep, client: ClientDep, chooser: ChooserDep, drain: DrainDep
) -> ReadinessResponse:
    if drain.draining:
        raise NotReady("draining: the gateway is shutting down (SIGTERM)")
    checked: list[str] = []
    try:
        async with asyncio.timeout(settings.readiness_timeout_s):
            for version in chooser.served_versions():
                name = version or DEFAULT_VERSION_NAME
                if not await client.model_ready(version):
                    reachable = await client.ping()
                    raise NotReady(
                        f"model version {name} has no ready worker"
                        if reachable
                        else "the model server is unreachable"
                    )
                checked.append(name)
    except TimeoutError:
        raise NotReady(
            f"the model server did not answer within {settings.readiness_timeout_s}s"
        ) from None
    return ReadinessResponse(status="ready", versions=checked)
