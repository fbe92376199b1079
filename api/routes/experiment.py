"""``/v1/experiment``: read and change the A/B split, and its report.

``PUT`` needs the admin token (``AdminDep``: 401 without it, 403 when wrong or when no token is
configured; 422 for a malformed body). A new config is checked against TorchServe (every
version registered and ready) before it is stored and routed by, 409 otherwise: the body is
well formed, the server's state conflicts with it. It starts a new experiment revision with
status ``running``.
``GET`` shows the split with its ``autopilot`` settings, ``status`` and the autopilot's
``decisions``.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import Field

from abtesting.experiment import ExperimentConfig, ExperimentNotReady
from abtesting.report import DecisionReport, ExperimentReport, build_report
from abtesting.service import ABTesting
from abtesting.store import ExperimentStatus
from api.deps import AdminDep
from api.errors import ApiError, NotReady
from api.schemas import error_responses

router = APIRouter(prefix="/v1", tags=["experiment"])


class NoExperiment(ApiError):
    status = 404
    code = "no_experiment"


class VersionsNotReady(ApiError):
    """A well-formed experiment naming versions TorchServe does not have, or has no ready
    worker for: a conflict with the server's state, not a malformed body."""

    status = 409
    code = "versions_not_ready"


PUT_ERRORS = error_responses(401, 403, 409, 422, 502, 503, 504)
PUT_ERRORS[409]["description"] = "a version it names is not registered in TorchServe, or not ready"


class ExperimentResponse(ExperimentConfig):
    revision: int = Field(description="increases with every change (the autopilot's too)")
    status: ExperimentStatus = Field(
        description="running; promoted or rolled_back once the autopilot ended it"
    )
    decisions: list[DecisionReport] = Field(description="the autopilot's, oldest first")


def get_ab(request: Request) -> ABTesting:
    ab: ABTesting | None = getattr(request.app.state, "ab", None)
    if ab is None:
        raise NotReady("A/B testing is not configured on this gateway (no store)")
    return ab


ABDep = Annotated[ABTesting, Depends(get_ab)]


async def current_experiment(ab: ABTesting) -> tuple[ExperimentConfig, int]:
    """The experiment in force (another replica may have changed it: reload first)."""
    await ab.reload()
    config, revision = ab.router.config, ab.router.revision
    if config is None or revision is None:
        raise NoExperiment("no experiment is configured: PUT /v1/experiment sets one")
    return config, revision


async def _response(ab: ABTesting, config: ExperimentConfig, revision: int) -> ExperimentResponse:
    decisions = [DecisionReport.of(d) for d in await ab.decisions(config.name)]
    status = ab.router.status if ab.router.revision == revision else "running"
    return ExperimentResponse(
        **config.model_dump(), revision=revision, status=status, decisions=decisions
    )


@router.get(
    "/experiment",
    response_model=ExperimentResponse,
    responses=error_responses(404, 503),
    summary="The A/B split in force",
)
async def get_experiment(ab: ABDep) -> ExperimentResponse:
    config, revision = await current_experiment(ab)
    return await _response(ab, config, revision)


@router.put(
    "/experiment",
    response_model=ExperimentResponse,
    responses=PUT_ERRORS,
    dependencies=[AdminDep],
    summary="Change the A/B split (admin)",
)
async def put_experiment(config: ExperimentConfig, ab: ABDep) -> ExperimentResponse:
    try:
        revision = await ab.set_experiment(config)
    except ExperimentNotReady as exc:
        raise VersionsNotReady(str(exc)) from exc
    return await _response(ab, config, revision)


@router.get(
    "/experiment/report",
    response_model=ExperimentReport,
    responses=error_responses(404, 503),
    summary="Per-variant metrics with intervals, tests and a verdict",
)
async def get_report(ab: ABDep) -> ExperimentReport:
    config, revision = await current_experiment(ab)
    status = ab.router.status
    # The autopilot's running assessment: the report and its decisions read the same one.
    return await asyncio.to_thread(build_report, ab.store, config, revision, status, ab.assessment)
