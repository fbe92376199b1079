"""The Open Inference Protocol (v2) routes on the real app and client, with a fake TorchServe."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import AppFactory, FakeTorchServe, fake_probabilities, fake_stars
from tests.api.test_predictions import ListRecorder, RecordingChooser

REVIEWS = ["I loved it! I will recommend this to everyone.", "It's OK."]
INFER = "/v2/models/stars/infer"


def text_input(data: Any, shape: Any = None, **extra: Any) -> dict[str, Any]:
    count = 1 if isinstance(data, str) else len(data)
    return {"name": "text", "datatype": "BYTES", "shape": shape or [count], "data": data, **extra}


def infer_body(data: Any = None, **extra: Any) -> dict[str, Any]:
    return {"inputs": [text_input(REVIEWS if data is None else data)], **extra}


def flat_probabilities(texts: list[str]) -> list[float]:
    return [fake_probabilities(fake_stars(t))[str(s)] for t in texts for s in range(1, 6)]


def test_health_and_server_metadata(gateway: TestClient) -> None:
    assert gateway.get("/v2/health/live").json() == {"live": True}
    ready = gateway.get("/v2/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    meta = gateway.get("/v2").json()
    assert meta["name"] == "starrating" and meta["extensions"] == []


def test_model_metadata_names_the_tensors(gateway: TestClient) -> None:
    expected = {
        "name": "stars",
        "versions": ["1.0", "2.0"],
        "platform": "pytorch_torchserve",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "stars", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 5]},
        ],
    }
    assert gateway.get("/v2/models/stars").json() == expected
    assert gateway.get("/v2/models/stars/versions/2.0").json() == expected


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/bananas",
        "/v2/models/stars/versions/9.9",
        "/v2/models/bananas/ready",
        "/v2/models/stars/versions/9.9/ready",
    ],
)
def test_unknown_model_or_version_is_404_in_the_protocols_error_form(
    gateway: TestClient, path: str
) -> None:
    response = gateway.get(path)

    assert response.status_code == 404
    assert set(response.json()) == {"error"}
    assert isinstance(response.json()["error"], str) and response.json()["error"]


def test_model_ready_follows_torchserve(gateway: TestClient, torchserve: FakeTorchServe) -> None:
    torchserve.ready["2.0"] = False

    ready = gateway.get("/v2/models/stars/ready")
    not_ready = gateway.get("/v2/models/stars/versions/2.0/ready")

    assert (ready.status_code, ready.json()) == (200, {"name": "stars", "ready": True})
    assert not_ready.status_code == 503
    assert "no ready worker" in not_ready.json()["error"]


def test_server_not_ready_when_torchserve_is_down(
    gateway: TestClient, torchserve: FakeTorchServe
) -> None:
    torchserve.down = True

    assert gateway.get("/v2/health/live").status_code == 200
    ready = gateway.get("/v2/health/ready")
    assert ready.status_code == 503
    assert isinstance(ready.json()["error"], str)


def test_infer_answers_both_outputs_in_the_spec_form(gateway: TestClient) -> None:
    response = gateway.post(INFER, json=infer_body())

    assert response.status_code == 200
    assert response.json() == {
        "model_name": "stars",
        "model_version": "1.0",
        "id": response.headers["X-Request-Id"],
        "parameters": {"variant": "default"},
        "outputs": [
            {
                "name": "stars",
                "shape": [2],
                "datatype": "INT64",
                "data": [fake_stars(t) for t in REVIEWS],
            },
            {
                "name": "probabilities",
                "shape": [2, 5],
                "datatype": "FP32",
                "data": pytest.approx(flat_probabilities(REVIEWS)),
            },
        ],
    }


@pytest.mark.parametrize(
    "tensor",
    [
        pytest.param(text_input(REVIEWS[0]), id="bare string data"),
        pytest.param(text_input([REVIEWS[0]], shape=-1), id="shape -1"),
        pytest.param(text_input([REVIEWS[0]], shape=[-1]), id="shape [-1]"),
        pytest.param(text_input([[REVIEWS[0]]], shape=[1, 1]), id="nested data [1, 1]"),
        pytest.param(
            text_input([REVIEWS[0]], parameters={"content_type": "str"}), id="content_type str"
        ),
    ],
)
def test_common_client_forms_are_accepted(gateway: TestClient, tensor: dict[str, Any]) -> None:
    response = gateway.post(INFER, json={"inputs": [tensor], "model_name": "stars"})

    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [fake_stars(REVIEWS[0])]


def test_requested_outputs_are_answered_alone_and_in_order(gateway: TestClient) -> None:
    response = gateway.post(
        INFER, json=infer_body(outputs=[{"name": "probabilities"}, {"name": "stars"}])
    )
    only_stars = gateway.post(INFER, json=infer_body(outputs=[{"name": "stars"}]))

    assert [o["name"] for o in response.json()["outputs"]] == ["probabilities", "stars"]
    assert [o["name"] for o in only_stars.json()["outputs"]] == ["stars"]


def test_client_id_becomes_the_request_id(gateway: TestClient) -> None:
    response = gateway.post(INFER, json=infer_body(id="oip-client-0001"))

    assert response.json()["id"] == "oip-client-0001"
    assert response.headers["X-Request-Id"] == "oip-client-0001"


def test_unversioned_infer_goes_through_the_ab_router_and_recorder(
    make_app: AppFactory, torchserve: FakeTorchServe
) -> None:
    chooser, recorder = RecordingChooser(), ListRecorder()
    with TestClient(make_app(chooser=chooser, recorder=recorder)) as client:
        routed = client.post(INFER, json=infer_body(parameters={"user_id": "u-7"}))
        header = client.post(INFER, json=infer_body(), headers={"X-User-Id": "u-8"})
        forced = client.post("/v2/models/stars/versions/1.0/infer", json=infer_body())

    assert chooser.calls == [("u-7", None), ("u-8", None), (None, "1.0")]
    assert [v for v, _ in torchserve.predictions] == ["2.0", "2.0", "1.0"]
    assert routed.json()["model_version"] == "2.0"
    assert routed.json()["parameters"] == {"variant": "b"}
    assert forced.json()["model_version"] == "1.0"
    recorded = {e.request_id: e for e in recorder.events}
    assert set(recorded) == {r.json()["id"] for r in (routed, header, forced)}
    event = recorded[routed.json()["id"]]
    assert (event.user_id, event.version, event.assignment.variant) == ("u-7", "2.0", "b")
    assert event.stars == tuple(fake_stars(t) for t in REVIEWS)


BINARY = "binary tensor data"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param({"inputs": [{**text_input(REVIEWS), "name": "input-0"}]}, "unknown input",
                     id="wrong input name"),
        pytest.param({"inputs": [{**text_input(REVIEWS), "datatype": "FP32"}]}, "must be BYTES",
                     id="wrong datatype"),
        pytest.param({"inputs": [text_input(REVIEWS, shape=[3])]}, "shape [3] but 2",
                     id="shape does not fit"),
        pytest.param({"inputs": [text_input(REVIEWS, parameters={"content_type": "np"})]},
                     "content_type", id="unknown content type"),
        pytest.param(infer_body(outputs=[{"name": "logits"}]), "unknown output",
                     id="unknown output"),
        pytest.param(infer_body(outputs=[{"name": "stars", "parameters": {"binary_data": True}}]),
                     BINARY, id="binary output"),
        pytest.param(infer_body(parameters={"binary_data_output": True}), BINARY,
                     id="binary outputs for all"),
        pytest.param({"inputs": [text_input(REVIEWS, parameters={"binary_data_size": 10})]},
                     BINARY, id="binary input size"),
        pytest.param(infer_body(["   "]), "is empty", id="blank text"),
        pytest.param(infer_body(parameters={"user_id": "a b"}), "user_id", id="odd user id"),
        pytest.param({"inputs": []}, "inputs", id="no input"),
        pytest.param(infer_body(id="short"), "id", id="id that cannot be a request id"),
    ],
)  # fmt: skip
def test_bad_requests_are_400_with_a_message(
    gateway: TestClient, body: dict[str, Any], expected: str
) -> None:
    response = gateway.post(INFER, json=body)

    assert response.status_code == 400
    assert set(response.json()) == {"error"}
    assert expected in response.json()["error"]


def test_triton_binary_data_extension_is_refused_with_400(gateway: TestClient) -> None:
    tensor = {"name": "text", "shape": [1], "datatype": "BYTES"}
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": 8}}]}).encode()
    body = header + (4).to_bytes(4, "little") + b"good"

    response = gateway.post(
        INFER, content=body, headers={"Inference-Header-Content-Length": str(len(header))}
    )

    assert response.status_code == 400
    assert "binary_data=False" in response.json()["error"]


def test_upstream_and_limit_errors_keep_their_statuses(
    gateway: TestClient, torchserve: FakeTorchServe
) -> None:
    too_many = gateway.post(INFER, json=infer_body(["ok"] * 9))
    too_long = gateway.post(INFER, json=infer_body(["a" * 501]))
    unknown = gateway.post("/v2/models/stars/versions/9.9/infer", json=infer_body())
    not_json = gateway.post(INFER, content=b"{", headers={"Content-Type": "application/json"})
    torchserve.down = True
    down = gateway.post(INFER, json=infer_body())

    statuses = [r.status_code for r in (too_many, too_long, unknown, not_json, down)]
    assert statuses == [413, 413, 404, 400, 503]
    for response in (too_many, too_long, unknown, not_json, down):
        assert set(response.json()) == {"error"} and isinstance(response.json()["error"], str)


def test_v1_errors_keep_their_own_form(gateway: TestClient) -> None:
    response = gateway.post("/v1/predictions", json={"text": " "})

    assert response.status_code == 422
    assert set(response.json()["error"]) == {"code", "message"}


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/octet-stream"])
def test_json_body_is_read_whatever_the_content_type_says(
    gateway: TestClient, content_type: str | None
) -> None:
    # tritonclient sends its JSON with no Content-Type at all.
    headers = {"Content-Type": content_type} if content_type else {}
    response = gateway.post(INFER, content=json.dumps(infer_body()).encode(), headers=headers)

    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [fake_stars(t) for t in REVIEWS]
