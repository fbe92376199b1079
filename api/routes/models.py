"""``GET /v1/models``: the versions TorchServe knows, whether they answer, and their numerics."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from api.deps import ClientDep, SettingsDep
from api.schemas import ModelsResponse, ModelVersionInfo, ServedNumerics, error_responses
from serving.torchserve import TorchServeClient, TorchServeError

router = APIRouter(prefix="/v1", tags=["models"])


@router.get(
    "/models",
    response_model=ModelsResponse,
    responses=error_responses(502, 503, 504),
    summary="Model versions, their state and numerics",
)
async def list_models(settings: SettingsDep, client: ClientDep) -> ModelsResponse:
    versions = await client.list_versions()
    ready = [v.version for v in versions if v.ready]
    described = await asyncio.gather(
        *(_served_numerics(client, version, settings.readiness_timeout_s) for version in ready)
    )
    numerics = dict(zip(ready, described, strict=True))
    return ModelsResponse(
        model=settings.model_name,
        versions=[
            ModelVersionInfo(
                version=v.version,
                is_default=v.is_default,
                ready=v.ready,
                workers=v.workers,
                ready_workers=v.ready_workers,
                numerics=numerics.get(v.version),
            )
            for v in versions
        ],
    )


async def _served_numerics(
    client: TorchServeClient, version: str, timeout_s: float
) -> ServedNumerics | None:
    """A worker's own description (the handler's describe_handle); None if none answers."""
    try:
        async with asyncio.timeout(timeout_s):
            metadata = (await client.describe(version, customized=True)).metadata
    except (TorchServeError, TimeoutError):
        return None
    if not metadata or not isinstance(metadata.get("precision"), str):
        return None
    record: dict[str, Any] = metadata.get("numerics") or {}
    return ServedNumerics(
        precision=metadata["precision"],
        reason=str(metadata.get("precision_reason", "")),
        validation_accuracy=record.get("accuracy") or {},
    )
