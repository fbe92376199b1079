"""The gateway application: ``create_app()`` assembles settings, middleware and routers.

Served by uvicorn as a factory: ``uvicorn api.app:create_app --factory``. The lifespan creates
the one pooled TorchServe client and closes it at shutdown; tests pass their own client,
chooser or recorder instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from httpx_aiohttp import AiohttpTransport

from abtesting.service import ABTesting
from api import metrics
from api.batching import AdaptiveBatcher, Predictor
from api.drain import Drain
from api.errors import install_error_handlers
from api.logging import configure_logging
from api.middleware import (
    REQUEST_ID_HEADER,
    BodySizeLimitMiddleware,
    InFlightLimitMiddleware,
    RequestObserverMiddleware,
)
from api.routes import (
    dashboard,
    experiment,
    explanations,
    feedback,
    health,
    models,
    predictions,
    v2,
)
from api.seams import DefaultChooser, NoRecorder, PredictionRecorder, VariantChooser
from api.settings import Settings
from serving.torchserve import TorchServeClient
from starrating import __version__


def _torchserve_client(settings: Settings) -> TorchServeClient:
    # httpx's API on aiohttp's connection pool: httpx's own pool spent ~1 ms of gateway CPU per
    # request at 16 concurrent requests, aiohttp's ~0.25 ms (docs/performance.md).
    pool = httpx.Limits(max_connections=settings.upstream_max_connections)
    return TorchServeClient(
        settings.torchserve_url,
        settings.torchserve_management_url,
        model_name=settings.model_name,
        key_file=settings.torchserve_key_file,
        timeout=settings.upstream_timeout_s,
        connect_timeout=settings.upstream_connect_timeout_s,
        connect_retries=settings.upstream_connect_retries,
        transport=AiohttpTransport(limits=pool),
    )


def _predictor(settings: Settings, client: TorchServeClient) -> Predictor:
    if not settings.coalesce:
        return client
    return AdaptiveBatcher(
        client,
        max_texts=settings.coalesce_max_texts,
        max_wait_s=settings.coalesce_max_wait_ms / 1000,
        max_in_flight=settings.coalesce_max_in_flight,
        timeout_s=settings.upstream_timeout_s,
    )


def create_app(
    settings: Settings | None = None,
    *,
    client: TorchServeClient | None = None,
    chooser: VariantChooser | None = None,
    recorder: PredictionRecorder | None = None,
    ab_testing: bool | None = None,
) -> FastAPI:
    """The gateway. Without arguments everything comes from ``STARRATING_*`` variables.

    ``ab_testing`` opens the A/B store at ``settings.database_url`` and routes and records by
    its experiment (a chooser or recorder passed in still wins). None: only when the app makes
    its own TorchServe client, so tests that inject one opt in explicitly.
    """
    settings = settings if settings is not None else Settings()
    if settings.json_logs:
        configure_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = client is None
        app.state.client = _torchserve_client(settings) if owned else client
        app.state.predictor = _predictor(settings, app.state.client)
        if owned if ab_testing is None else ab_testing:
            assert settings.database_url is not None  # Settings fills in the SQLite default
            app.state.ab = await asyncio.to_thread(
                ABTesting.open,
                settings.database_url,
                app.state.client,
                autopilot_interval_s=settings.autopilot_interval_s,
            )
            app.state.chooser = chooser if chooser is not None else app.state.ab.router
            app.state.recorder = recorder if recorder is not None else app.state.ab.recorder
            await app.state.ab.warn_if_stale(settings.readiness_timeout_s)
            app.state.ab.start()
        app.state.drain.install(asyncio.get_running_loop())
        try:
            yield
        finally:
            app.state.drain.uninstall()
            if isinstance(app.state.predictor, AdaptiveBatcher):
                await app.state.predictor.aclose()
            if app.state.ab is not None:
                await app.state.ab.aclose()
            if owned:
                await app.state.client.aclose()

    app = FastAPI(
        title="starrating gateway",
        version=__version__,
        description="Star ratings (1-5) for customer reviews, served by TorchServe versions.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.chooser = chooser if chooser is not None else DefaultChooser()
    app.state.recorder = recorder if recorder is not None else NoRecorder()
    app.state.ab = None
    app.state.explain_slots = explanations.ExplanationSlots(settings.explain_max_in_flight)
    app.state.drain = Drain(settings.drain_delay_s)

    install_error_handlers(app)
    # Added innermost first: the observer sees every answer, 413s included.
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT"],
            allow_headers=["Authorization", "Content-Type", "X-Model-Version", "X-User-Id"],
            expose_headers=[REQUEST_ID_HEADER],
        )
    app.add_middleware(InFlightLimitMiddleware, max_in_flight=settings.max_in_flight)
    app.add_middleware(RequestObserverMiddleware)

    app.include_router(predictions.router)
    app.include_router(explanations.router)
    app.include_router(feedback.router)
    app.include_router(experiment.router)
    app.include_router(dashboard.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(v2.router)
    app.include_router(v2.inference)
    app.include_router(metrics.router)
    return app
