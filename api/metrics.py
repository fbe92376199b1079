"""Prometheus metrics of the gateway, module-level as prometheus-client intends.

Label values are few and bounded: route templates (never raw paths), status codes, model
versions that TorchServe actually answered with, star values 1-5 and upstream error codes.
With several uvicorn workers set ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` merges them.
"""

from __future__ import annotations

import os

from fastapi import APIRouter, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

NO_VERSION = "none"
"""The version label of requests that reached no model (errors, non-prediction routes)."""

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUESTS = Counter(
    "starrating_requests_total",
    "HTTP requests answered by the gateway",
    ["route", "method", "status", "version"],
)
REQUEST_LATENCY = Histogram(
    "starrating_request_duration_seconds",
    "Time from request received to response sent, in the gateway",
    ["route"],
    buckets=_LATENCY_BUCKETS,
)
UPSTREAM_LATENCY = Histogram(
    "starrating_upstream_duration_seconds",
    "Time spent waiting for TorchServe predictions",
    buckets=_LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "starrating_batch_size",
    "Texts per prediction request",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
UPSTREAM_REQUEST_TEXTS = Histogram(
    "starrating_upstream_request_texts",
    "Texts per TorchServe request the adaptive batcher sent (several callers' texts where "
    "concurrent predictions were coalesced)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
PREDICTED_STARS = Counter(
    "starrating_predicted_stars_total",
    "Star ratings predicted, by model version",
    ["version", "stars"],
)
UPSTREAM_ERRORS = Counter(
    "starrating_upstream_errors_total",
    "Failed calls to TorchServe, by kind",
    ["kind"],
)
IN_FLIGHT = Gauge(
    "starrating_requests_in_flight",
    "Requests being answered right now",
    multiprocess_mode="livesum",
)

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
    summary="Prometheus metrics",
)
def read_metrics() -> Response:
    registry = REGISTRY
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
