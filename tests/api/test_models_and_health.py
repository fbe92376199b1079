"""GET /v1/models, /healthz and /readyz on the real app and client, with a fake TorchServe."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi.testclient import TestClient

from api.seams import Assignment
from tests.api.conftest import AppFactory, FakeTorchServe


def test_models_lists_versions_with_default_and_readiness(
    gateway: TestClient, torchserve: FakeTorchServe
) -> None:
    torchserve.ready["2.0"] = False

    response = gateway.get("/v1/models")

    assert response.status_code == 200
    assert response.json() == {
        "model": "stars",
        "versions": [
            {
                "version": "1.0",
                "is_default": True,
                "ready": True,
                "workers": 1,
                "ready_workers": 1,
                # The worker's own description: what it computes in, and why.
                "numerics": {
                    "precision": "int8",
                    "reason": "CPU without bf16 kept; -0.20 accuracy points",
                    "validation_accuracy": {"fp32": 0.66, "bf16": 0.66, "int8": 0.658},
                },
            },
            {
                "version": "2.0",
                "is_default": False,
                "ready": False,
                "workers": 1,
                "ready_workers": 0,
                "numerics": None,  # no ready worker to ask
            },
        ],
    }


def test_models_when_torchserve_is_down_is_503(
    gateway: TestClient, torchserve: FakeTorchServe
) -> None:
    torchserve.down = True

    response = gateway.get("/v1/models")

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "upstream_unavailable"


def test_healthz_needs_no_torchserve(gateway: TestClient, torchserve: FakeTorchServe) -> None:
    torchserve.down = True
    assert gateway.get("/healthz").json() == {"status": "ok"}


def test_readyz_when_default_version_ready(gateway: TestClient) -> None:
    response = gateway.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ready", "versions": ["default"]}


def test_readyz_503_when_torchserve_down(gateway: TestClient, torchserve: FakeTorchServe) -> None:
    torchserve.down = True

    response = gateway.get("/readyz")

    assert response.status_code == 503
    assert response.json() == {
        "error": {"code": "not_ready", "message": "the model server is unreachable"}
    }


def test_readyz_503_when_default_version_has_no_ready_worker(
    gateway: TestClient, torchserve: FakeTorchServe
) -> None:
    torchserve.ready["1.0"] = False

    response = gateway.get("/readyz")

    assert response.status_code == 503
    assert response.json()["error"]["message"] == "model version default has no ready worker"


def test_readyz_gives_up_after_its_timeout_when_torchserve_hangs(
    make_app: AppFactory, torchserve: FakeTorchServe
) -> None:
    torchserve.hang_s = 30.0
    with TestClient(make_app(readiness_timeout_s=0.05)) as client:
        response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json() == {
        "error": {
            "code": "not_ready",
            "message": "the model server did not answer within 0.05s",
        }
    }


class TwoVersionChooser:
    def choose(self, user_id: str | None, forced_version: str | None) -> Assignment:
        return Assignment(variant="a", version="1.0")

    def served_versions(self) -> Sequence[str | None]:
        return ("1.0", "2.0")


def test_readyz_checks_every_version_the_chooser_serves(
    make_app: AppFactory, torchserve: FakeTorchServe
) -> None:
    with TestClient(make_app(chooser=TwoVersionChooser())) as client:
        ready = client.get("/readyz")
        torchserve.ready["2.0"] = False
        not_ready = client.get("/readyz")
        del torchserve.ready["2.0"]
        unknown = client.get("/readyz")

    assert ready.json() == {"status": "ready", "versions": ["1.0", "2.0"]}
    assert not_ready.status_code == 503
    assert not_ready.json()["error"]["message"] == "model version 2.0 has no ready worker"
    assert unknown.status_code == 503
