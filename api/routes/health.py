"""Liveness and readiness probes.

``/healthz`` says the process answers. ``/readyz`` says TorchServe is reachable and every
version the gateway sends traffic to is ready, and it says so fast: each check gives up after
``readiness_timeout_s`` and counts as not ready. From SIGTERM on (api/drain.py) it answers 503
"draining" while the gateway still serves what it is sent.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from abtesting.service import ABTesting
from api.deps import ABTestingDep, ChooserDep, ClientDep, DrainDep, SettingsDep
from api.errors import NotReady, StaleExperiment
from api.schemas import HealthResponse, ReadinessResponse, error_responses
from serving.torchserve import TorchServeClient

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
    settings: SettingsDep,
    client: ClientDep,
    chooser: ChooserDep,
    drain: DrainDep,
    ab: ABTestingDep,
) -> ReadinessResponse:
    if drain.draining:
        raise NotReady("draining: the gateway is shutting down (SIGTERM)")
    checked: list[str] = []
    try:
        async with asyncio.timeout(settings.readiness_timeout_s):
            for version in chooser.served_versions():
                name = version or DEFAULT_VERSION_NAME
                if not await client.model_ready(version):
                    raise await _not_ready(client, version, ab)
                checked.append(name)
    except TimeoutError:
        raise NotReady(
            f"the model server did not answer within {settings.readiness_timeout_s}s"
        ) from None
    return ReadinessResponse(status="ready", versions=checked)


async def _not_ready(
    client: TorchServeClient, version: str | None, ab: ABTesting | None
) -> NotReady:
    """Why ``version`` cannot answer: TorchServe down, the experiment stale, or no worker yet."""
    if not await client.ping():
        return NotReady("the model server is unreachable")
    if ab is not None and version is not None:
        reason = await ab.stale_reason(among=[version])
        if reason is not None:
            return StaleExperiment(reason)
    return NotReady(f"model version {version or DEFAULT_VERSION_NAME} has no ready worker")
