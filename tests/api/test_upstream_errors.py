"""What a client hears when TorchServe fails mid-prediction: a live but slow model is a 504; a
TorchServe that is gone, refusing, resetting or restarting (the version without a ready worker
while it loads) is a 503 with Retry-After, since trying again shortly will work."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from serving.torchserve import TorchServeClient
from tests.api.conftest import INFERENCE, MANAGEMENT, FakeTorchServe

GatewayFactory = Callable[..., TestClient]
PREDICT = "/v1/predictions"
REVIEW = {"text": "It's OK."}


class Failing:
    """The fake TorchServe, whose prediction requests fail with ``error`` (management answers
    as the fake says, or is refused too with ``management_down``)."""

    def __init__(self, torchserve: FakeTorchServe, error: type[httpx.TransportError]) -> None:
        self.torchserve = torchserve
        self.error = error
        self.management_down = False
        self.worker_started: datetime | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/predictions"):
            raise self.error("upstream failed", request=request)
        if self.management_down:
            raise httpx.ConnectError("connection refused", request=request)
        response = await self.torchserve(request)
        if self.worker_started is None or response.status_code != 200:
            return response
        described = response.json()
        for version in described:
            for worker in version["workers"]:
                worker["startTime"] = self.worker_started.isoformat().replace("+00:00", "Z")
        return httpx.Response(200, json=described)


@pytest.fixture
def gateway_on(settings: Settings) -> GatewayFactory:
    """``gateway_on(handler, **setting_overrides)``: the real app and client on ``handler``."""

    def make(handler: Failing, **overrides: object) -> TestClient:
        client = TorchServeClient(INFERENCE, MANAGEMENT, transport=httpx.MockTransport(handler))
        app = create_app(settings.model_copy(update=overrides), client=client)
        return TestClient(app, raise_server_exceptions=False)

    return make


@pytest.mark.parametrize("coalesce", [True, False])
def test_a_timeout_of_a_ready_model_stays_504(
    gateway_on: GatewayFactory, torchserve: FakeTorchServe, coalesce: bool
) -> None:
    with gateway_on(Failing(torchserve, httpx.ReadTimeout), coalesce=coalesce) as http:
        answer = http.post(PREDICT, json=REVIEW)
    assert answer.status_code == 504
    assert answer.json()["error"]["code"] == "upstream_timeout"
    assert "retry-after" not in answer.headers


@pytest.mark.parametrize("coalesce", [True, False])
def test_a_timeout_while_the_version_has_no_ready_worker_is_503_with_retry_after(
    gateway_on: GatewayFactory, torchserve: FakeTorchServe, coalesce: bool
) -> None:
    torchserve.ready["1.0"] = False  # TorchServe restarted and is loading the model
    with gateway_on(Failing(torchserve, httpx.ReadTimeout), coalesce=coalesce) as http:
        answer = http.post(PREDICT, json=REVIEW)
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "model_not_ready"
    assert answer.headers["retry-after"] == "1"


@pytest.mark.parametrize(("started_s_ago", "status"), [(5, 503), (600, 504)])
def test_a_timeout_right_after_a_worker_restart_is_503_an_old_worker_504(
    gateway_on: GatewayFactory, torchserve: FakeTorchServe, started_s_ago: int, status: int
) -> None:
    # The worker is READY by the time the gateway asks, but it (re)started while the request
    # waited (TorchServe replaced a crashed worker): the wait was the restart's, not the model's.
    failing = Failing(torchserve, httpx.ReadTimeout)
    failing.worker_started = datetime.now(UTC) - timedelta(seconds=started_s_ago)
    with gateway_on(failing, upstream_timeout_s=10.0) as http:
        answer = http.post(PREDICT, json=REVIEW)
    assert answer.status_code == status
    assert answer.json()["error"]["code"] == (
        "model_not_ready" if status == 503 else "upstream_timeout"
    )


def test_a_timeout_while_the_version_is_not_registered_again_yet_is_503(
    gateway_on: GatewayFactory, torchserve: FakeTorchServe
) -> None:
    with gateway_on(Failing(torchserve, httpx.ReadTimeout)) as http:
        del torchserve.ready["2.0"]
        answer = http.post(PREDICT, json=REVIEW, headers={"X-Model-Version": "2.0"})
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "model_not_ready"


def test_a_timeout_then_no_torchserve_at_all_is_503(
    gateway_on: GatewayFactory, torchserve: FakeTorchServe
) -> None:
    # In flight when TorchServe's container vanished: no reset ever comes, only the timeout.
    failing = Failing(torchserve, httpx.ReadTimeout)
    failing.management_down = True
    with gateway_on(failing) as http:
        answer = http.post(PREDICT, json=REVIEW)
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "upstream_unavailable"
    assert answer.headers["retry-after"] == "1"


@pytest.mark.parametrize(
    "error", [httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError], ids=str
)
def test_refused_or_reset_connections_are_503_with_retry_after(
    gateway_on: GatewayFactory, torchserve: FakeTorchServe, error: type[httpx.TransportError]
) -> None:
    with gateway_on(Failing(torchserve, error)) as http:
        answer = http.post(PREDICT, json=REVIEW)
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "upstream_unavailable"
    assert answer.headers["retry-after"] == "1"
