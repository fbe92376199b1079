"""/metrics, the JSON access log and the OpenAPI description, on the real app."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from api.logging import JsonFormatter, configure_logging
from tests.api.conftest import FakeTorchServe, fake_stars
from tests.api.live import metric_value

DISTINCTIVE = "Zanzibar-quokka-7731 made my blender sing"


def sample(gateway: TestClient, name: str, **labels: str) -> float:
    return metric_value(gateway.get("/metrics").text, name, **labels)


def test_metrics_count_requests_latency_batches_stars_and_errors(
    gateway: TestClient, torchserve: FakeTorchServe
) -> None:
    ok = {"route": "/v1/predictions", "method": "POST", "status": "200", "version": "2.0"}
    not_found = {"route": "/v1/predictions", "method": "POST", "status": "404", "version": "none"}
    texts = ["It's OK.", "Really bad.", "abc"]
    star_counts = {str(s): sum(fake_stars(t) == s for t in texts) for s in range(1, 6)}
    before = {
        "ok": sample(gateway, "starrating_requests_total", **ok),
        "not_found": sample(gateway, "starrating_requests_total", **not_found),
        "latency": sample(
            gateway, "starrating_request_duration_seconds_count", route="/v1/predictions"
        ),
        "upstream": sample(gateway, "starrating_upstream_duration_seconds_count"),
        "batch_sum": sample(gateway, "starrating_batch_size_sum"),
        "unknown": sample(gateway, "starrating_upstream_errors_total", kind="unknown_version"),
        "down": sample(gateway, "starrating_upstream_errors_total", kind="upstream_unavailable"),
        **{
            f"stars{s}": sample(gateway, "starrating_predicted_stars_total", version="2.0", stars=s)
            for s in star_counts
        },
    }

    for _ in range(2):
        response = gateway.post(
            "/v1/predictions", json={"texts": texts}, headers={"X-Model-Version": "2.0"}
        )
        assert response.status_code == 200
    gateway.post("/v1/predictions", json={"text": "x"}, headers={"X-Model-Version": "7.7"})
    torchserve.down = True
    gateway.post("/v1/predictions", json={"text": "x"})

    assert sample(gateway, "starrating_requests_total", **ok) - before["ok"] == 2
    assert sample(gateway, "starrating_requests_total", **not_found) - before["not_found"] == 1
    latency = sample(gateway, "starrating_request_duration_seconds_count", route="/v1/predictions")
    assert latency - before["latency"] == 4
    assert sample(gateway, "starrating_upstream_duration_seconds_count") - before["upstream"] == 4
    assert sample(gateway, "starrating_batch_size_sum") - before["batch_sum"] == 3 + 3 + 1 + 1
    unknown = sample(gateway, "starrating_upstream_errors_total", kind="unknown_version")
    assert unknown - before["unknown"] == 1
    down = sample(gateway, "starrating_upstream_errors_total", kind="upstream_unavailable")
    assert down - before["down"] == 1
    for stars, count in star_counts.items():
        after = sample(gateway, "starrating_predicted_stars_total", version="2.0", stars=stars)
        assert after - before[f"stars{stars}"] == 2 * count
    # Only /metrics itself is being answered while it is read.
    assert sample(gateway, "starrating_requests_in_flight") == 1


def test_unknown_paths_share_one_route_label(gateway: TestClient) -> None:
    gateway.get("/no/such/path/123")
    gateway.get("/another/one")
    names = {
        s.labels.get("route")
        for family in text_string_to_metric_families(gateway.get("/metrics").text)
        for s in family.samples
        if s.name == "starrating_requests_total"
    }
    assert "unmatched" in names
    assert not any(name and name.startswith(("/no/", "/another")) for name in names)


def test_access_line_has_request_fields_and_never_the_text(
    gateway: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    texts = [DISTINCTIVE, "It's OK."]

    response = gateway.post(
        "/v1/predictions", json={"texts": texts}, headers={"X-Request-Id": "trace-me-123456"}
    )
    refused = gateway.post("/v1/predictions", json={"texts": [DISTINCTIVE, "x" * 501]})

    formatter = JsonFormatter()
    lines = [json.loads(formatter.format(r)) for r in caplog.records]
    access = [line for line in lines if line["logger"] == "api.access"]
    assert access[0] == {
        "time": access[0]["time"],
        "level": "INFO",
        "logger": "api.access",
        "message": "request",
        "request_id": "trace-me-123456",
        "method": "POST",
        "route": "/v1/predictions",
        "status": 200,
        "version": "1.0",
        "variant": "default",
        "latency_ms": access[0]["latency_ms"],
        "text_count": 2,
        "text_lengths": [len(DISTINCTIVE), len("It's OK.")],
    }
    assert access[0]["latency_ms"] > 0
    assert access[1]["status"] == refused.status_code == 413
    assert access[1]["request_id"] == refused.headers["X-Request-Id"]
    assert response.status_code == 200
    assert "quokka" not in caplog.text
    assert all("quokka" not in json.dumps(line) for line in lines)


def test_configure_logging_writes_json_for_uvicorn_too(capsys: pytest.CaptureFixture[str]) -> None:
    root, httpx_logger = logging.getLogger(), logging.getLogger("httpx")
    level, handlers, httpx_level = root.level, list(root.handlers), httpx_logger.level
    try:
        configure_logging("INFO")
        configure_logging("INFO")  # a second call replaces, never duplicates
        logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
        logging.getLogger("uvicorn.access").info("duplicate access line")
        httpx_logger.info("HTTP Request: POST http://torchserve/predictions/stars")
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("uvicorn.access").disabled = False
        httpx_logger.setLevel(httpx_level)

    assert [(line["logger"], line["message"]) for line in lines] == [
        ("uvicorn.error", "Started server process [42]")
    ]


def test_openapi_describes_every_route_with_models_and_errors(gateway: TestClient) -> None:
    schema = gateway.get("/openapi.json").json()
    paths = schema["paths"]

    def ref(operation: dict, status: str) -> str:  # type: ignore[type-arg]
        content = operation["responses"][status]["content"]["application/json"]
        return str(content["schema"]["$ref"]).rsplit("/", 1)[-1]

    predict = paths["/v1/predictions"]["post"]
    body = predict["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body.endswith("/PredictionRequest")
    assert ref(predict, "200") == "PredictionResponse"
    for status in ("404", "413", "422", "502", "503", "504"):
        assert ref(predict, status) == "ErrorResponse", status
    headers = {p["name"] for p in predict["parameters"] if p["in"] == "header"}
    assert headers == {"x-model-version", "x-user-id"}

    assert ref(paths["/v1/models"]["get"], "200") == "ModelsResponse"
    assert ref(paths["/v1/models"]["get"], "503") == "ErrorResponse"
    assert ref(paths["/healthz"]["get"], "200") == "HealthResponse"
    assert ref(paths["/readyz"]["get"], "200") == "ReadinessResponse"
    assert ref(paths["/readyz"]["get"], "503") == "ErrorResponse"
    assert CONTENT_TYPE_LATEST in paths["/metrics"]["get"]["responses"]["200"]["content"]

    components = schema["components"]["schemas"]
    assert set(components["PredictionResponse"]["required"]) == {
        "request_id",
        "model",
        "version",
        "variant",
        "predictions",
    }
    assert components["ErrorResponse"]["properties"]["error"]["$ref"].endswith("/ErrorDetail")
    assert "HTTPValidationError" not in components
