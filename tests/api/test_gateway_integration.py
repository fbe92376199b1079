"""The gateway in front of a real TorchServe serving two tiny-model versions.

One stack per module, started the way ``starrating serve`` starts it (``serving.launcher``):
TorchServe with token authorization on, then ``uvicorn api.app:create_app --factory`` as its own
process. Every route and every error status is exercised over real HTTP; the last test stops
TorchServe under the running gateway and starts it again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from serving.archives import discover_archives
from serving.torchserve_process import register_versions, start_torchserve, stop_torchserve
from tests.api.live import LiveGateway, running_gateway

pytestmark = [pytest.mark.slow, pytest.mark.integration]

DISTINCTIVE = "Wombat-saxophone-4417 review: the kettle hums jazz"
LIMITS = {
    "STARRATING_MAX_BATCH_SIZE": "8",
    "STARRATING_MAX_TEXT_CHARS": "500",
    "STARRATING_MAX_BODY_BYTES": "8192",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    with running_gateway(tmp_path_factory.mktemp("gateway-stack"), LIMITS) as live:
        yield live


def test_predictions_match_torchserve_for_each_version(stack: LiveGateway) -> None:
    texts = ["I loved it! I will recommend this to everyone.", "It's OK.", "Really bad."]
    with stack.torchserve.sync_client() as direct:
        expected = {version: direct.predict(texts, version) for version in ("1.0", "2.0")}

    default = stack.http.post("/v1/predictions", json={"texts": texts})
    forced = stack.http.post(
        "/v1/predictions", json={"text": texts[0]}, headers={"X-Model-Version": "2.0"}
    )

    assert default.status_code == 200
    body = default.json()
    assert (body["model"], body["version"], body["variant"]) == ("stars", "1.0", "default")
    assert body["request_id"] == default.headers["X-Request-Id"]
    assert body["predictions"] == [
        {"stars": p.stars, "probabilities": p.probabilities} for p in expected["1.0"]
    ]
    assert forced.status_code == 200
    assert forced.json()["version"] == "2.0"
    assert forced.json()["predictions"] == [
        {"stars": expected["2.0"][0].stars, "probabilities": expected["2.0"][0].probabilities}
    ]
    for prediction in body["predictions"]:
        assert set(prediction["probabilities"]) == {"1", "2", "3", "4", "5"}
        assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_models_and_readiness(stack: LiveGateway) -> None:
    models = stack.http.get("/v1/models")
    ready = stack.http.get("/readyz")

    assert models.status_code == 200
    body = models.json()
    # Each worker says what it computes in and why: these tiny archives had no validation
    # split to measure the faster numerics on, so auto serves fp32.
    for version in body["versions"]:
        numerics = version.pop("numerics")
        assert numerics["precision"] == "fp32"
        assert "no validation split" in numerics["reason"]
        assert numerics["validation_accuracy"] == {}
    assert body == {
        "model": "stars",
        "versions": [
            {"version": "1.0", "is_default": True, "ready": True, "workers": 1, "ready_workers": 1},
            {
                "version": "2.0",
                "is_default": False,
                "ready": True,
                "workers": 1,
                "ready_workers": 1,
            },
        ],
    }
    assert ready.json() == {"status": "ready", "versions": ["default"]}
    assert stack.http.get("/healthz").json() == {"status": "ok"}


def test_client_errors_get_their_statuses(stack: LiveGateway) -> None:
    def chunked_body() -> Iterator[bytes]:
        yield b'{"texts": ['
        for _ in range(100):
            yield b'"' + b"a" * 100 + b'",'
        yield b'"end"]}'

    cases = {
        "unknown version": stack.http.post(
            "/v1/predictions", json={"text": "ok"}, headers={"X-Model-Version": "9.9"}
        ),
        "version not a version": stack.http.post(
            "/v1/predictions", json={"text": "ok"}, headers={"X-Model-Version": "../../models"}
        ),
        "no text": stack.http.post("/v1/predictions", json={"user_id": "u1"}),
        "empty text": stack.http.post("/v1/predictions", json={"text": " \t "}),
        "not json": stack.http.post(
            "/v1/predictions", content=b"\xff\xfe", headers={"Content-Type": "application/json"}
        ),
        "batch too large": stack.http.post("/v1/predictions", json={"texts": ["ok"] * 9}),
        "text too long": stack.http.post("/v1/predictions", json={"text": "a" * 501}),
        "body too large": stack.http.post("/v1/predictions", json={"texts": ["a" * 400] * 30}),
        "chunked body too large": stack.http.post(
            "/v1/predictions", content=chunked_body(), headers={"Content-Type": "application/json"}
        ),
    }

    statuses = {name: response.status_code for name, response in cases.items()}
    assert statuses == {
        "unknown version": 404,
        "version not a version": 422,
        "no text": 422,
        "empty text": 422,
        "not json": 422,
        "batch too large": 413,
        "text too long": 413,
        "body too large": 413,
        "chunked body too large": 413,
    }
    for response in cases.values():
        assert set(response.json()) == {"error"}
        assert set(response.json()["error"]) == {"code", "message"}
    assert stack.http.get("/healthz").status_code == 200


def test_version_without_a_ready_worker_is_503_until_scaled_back(stack: LiveGateway) -> None:
    management = httpx.Client(base_url=stack.torchserve.options.management_url, timeout=60.0)
    key = json.loads(stack.torchserve.paths.key_file.read_text())["management"]["key"]
    scale = {"synchronous": "true"}
    headers = {"Authorization": f"Bearer {key}"}
    with management:
        scaled = management.put(
            "/models/stars/2.0", params={**scale, "min_worker": 0, "max_worker": 0}, headers=headers
        )
        assert scaled.status_code == 200, scaled.text
        try:
            down = stack.http.post(
                "/v1/predictions", json={"text": "ok"}, headers={"X-Model-Version": "2.0"}
            )
            listed = stack.http.get("/v1/models").json()["versions"]
        finally:
            management.put(
                "/models/stars/2.0",
                params={**scale, "min_worker": 1, "max_worker": 1},
                headers=headers,
            )
    back = stack.http.post(
        "/v1/predictions", json={"text": "ok"}, headers={"X-Model-Version": "2.0"}
    )

    assert down.status_code == 503
    assert down.json()["error"]["code"] == "model_not_ready"
    assert [v["ready"] for v in listed] == [True, False]
    assert back.status_code == 200


def test_upstream_slower_than_the_timeout_is_504(stack: LiveGateway) -> None:
    # A second gateway (in-process) whose patience is shorter than TorchServe's 5 ms batch delay.
    settings = Settings(
        torchserve_url=stack.torchserve.options.inference_url,
        torchserve_management_url=stack.torchserve.options.management_url,
        torchserve_key_file=stack.torchserve.paths.key_file,
        upstream_timeout_s=0.001,
        json_logs=False,
    )
    with TestClient(create_app(settings)) as impatient:
        response = impatient.post("/v1/predictions", json={"text": "ok"})

    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"


def test_metrics_count_the_traffic(stack: LiveGateway) -> None:
    ok = {"route": "/v1/predictions", "method": "POST", "status": "200", "version": "2.0"}
    before_ok = stack.metric("starrating_requests_total", **ok)
    before_latency = stack.metric(
        "starrating_request_duration_seconds_count", route="/v1/predictions"
    )
    before_batch = stack.metric("starrating_batch_size_count")
    before_batch_sum = stack.metric("starrating_batch_size_sum")
    before_unknown = stack.metric("starrating_upstream_errors_total", kind="unknown_version")
    before_stars = sum(
        stack.metric("starrating_predicted_stars_total", version="2.0", stars=str(s))
        for s in range(1, 6)
    )

    for texts in (["one"], ["two", "three"], ["four", "five", "six"]):
        response = stack.http.post(
            "/v1/predictions", json={"texts": texts}, headers={"X-Model-Version": "2.0"}
        )
        assert response.status_code == 200
    stack.http.post("/v1/predictions", json={"text": "x"}, headers={"X-Model-Version": "8.8"})

    assert stack.metric("starrating_requests_total", **ok) - before_ok == 3
    latency = stack.metric("starrating_request_duration_seconds_count", route="/v1/predictions")
    assert latency - before_latency == 4
    assert stack.metric("starrating_batch_size_count") - before_batch == 4
    assert stack.metric("starrating_batch_size_sum") - before_batch_sum == 1 + 2 + 3 + 1
    unknown = stack.metric("starrating_upstream_errors_total", kind="unknown_version")
    assert unknown - before_unknown == 1
    stars = sum(
        stack.metric("starrating_predicted_stars_total", version="2.0", stars=str(s))
        for s in range(1, 6)
    )
    assert stars - before_stars == 6
    assert stack.metric("starrating_upstream_duration_seconds_count") > 0


def test_each_request_is_one_json_log_line_without_the_text(stack: LiveGateway) -> None:
    response = stack.http.post(
        "/v1/predictions",
        json={"texts": [DISTINCTIVE, "It's OK."]},
        headers={"X-Request-Id": "integration-log-0001"},
    )
    assert response.status_code == 200

    lines = [json.loads(line) for line in stack.log_file.read_text().splitlines()]
    (line,) = [entry for entry in lines if entry.get("request_id") == "integration-log-0001"]
    assert line["logger"] == "api.access"
    assert (line["route"], line["status"], line["version"], line["variant"]) == (
        "/v1/predictions",
        200,
        "1.0",
        "default",
    )
    assert (line["text_count"], line["text_lengths"]) == (2, [len(DISTINCTIVE), 8])
    assert line["latency_ms"] > 0
    assert any(entry["logger"].startswith("uvicorn") for entry in lines)
    # Nowhere in any log of the stack: the gateway's, TorchServe's, the handler's.
    for log_file in (stack.torchserve.paths.home / "logs").rglob("*"):
        if log_file.is_file():
            assert "Wombat-saxophone" not in log_file.read_text(errors="replace"), log_file


def test_openapi_of_the_running_gateway(stack: LiveGateway) -> None:
    schema = stack.http.get("/openapi.json").json()

    assert {"/v1/predictions", "/v1/models", "/healthz", "/readyz", "/metrics"} <= set(
        schema["paths"]
    )


def test_torchserve_stopped_and_started_under_a_running_gateway(stack: LiveGateway) -> None:
    gateway_pid = stack.gateway_pid
    assert stop_torchserve(stack.torchserve.paths)

    down = {
        "predict": stack.http.post("/v1/predictions", json={"text": "ok"}),
        "models": stack.http.get("/v1/models"),
        "readyz": stack.http.get("/readyz"),
    }
    alive = stack.http.get("/healthz")

    torchserve = stack.torchserve
    archives = discover_archives(torchserve.options.model_store)
    start_torchserve(torchserve.paths, torchserve.options, archives)
    with torchserve.sync_client(timeout=120.0) as client:
        register_versions(client, archives, default_version="1.0")
    back = stack.http.post("/v1/predictions", json={"text": "ok"})

    assert {name: r.status_code for name, r in down.items()} == {
        "predict": 503,
        "models": 503,
        "readyz": 503,
    }
    assert down["predict"].json()["error"]["code"] == "upstream_unavailable"
    assert alive.status_code == 200
    assert stack.http.get("/readyz").status_code == 200
    assert back.status_code == 200
    assert back.json()["version"] == "1.0"
    # The same gateway process answered throughout: it was never restarted.
    assert Path(f"/proc/{gateway_pid}").exists()
