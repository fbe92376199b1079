"""``GET /v1/models``: the versions TorchServe knows and whether they can answer."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import ClientDep, SettingsDep
from api.schemas import ModelsResponse, ModelVersionInfo, error_responses

router = APIRouter(prefix="/v1", tags=["models"])


@router.get(
    "/models",
    response_model=ModelsResponse,
    responses=error_responses(502, 503, 504),
    summary="Model versions and their state",
)
async def list_models(settings: SettingsDep, client: ClientDep) -> ModelsResponse:
    versions = await client.list_versions()
    return ModelsResponse(
        model=settings.model_name,
        versions=[
            ModelVersionInfo(
                version=v.version,
                is_default=v.is_default,
                ready=v.ready,
                workers=v.workers,
                ready_workers=v.ready_workers,
            )
            for v in versions
        ],
    )
