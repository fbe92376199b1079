"""The OpenAPI document says what the gateway accepts: the forms clients generated from it send.

Schemathesis with every check runs against a live stack in tests/reliability and
tests/api/test_experiment_contract.py; these are the mismatches it found, pinned on the fake
TorchServe (the experiment body's own are pinned in tests/api/test_experiment_api.py).
"""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient


@pytest.fixture
def request_schema(gateway: TestClient) -> dict[str, Any]:
    document = gateway.get("/openapi.json").json()
    schema = dict(document["components"]["schemas"]["PredictionRequest"])
    schema["$defs"] = document["components"]["schemas"]
    return schema


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({"text": "good"}, True),
        ({"texts": ["good", "bad"]}, True),
        ({"text": "good", "texts": ["bad"]}, False),
        ({"user_id": "u-1"}, False),
        ({"text": None}, False),
        ({"text": " \t"}, False),
        ({"texts": []}, False),
        ({"texts": ["ok", "\x00"]}, False),
    ],
)
def test_prediction_schema_and_gateway_agree(
    gateway: TestClient, request_schema: dict[str, Any], body: dict[str, Any], valid: bool
) -> None:
    in_schema = jsonschema.Draft202012Validator(request_schema).is_valid(body)
    response = gateway.post("/v1/predictions", json=body)

    assert in_schema is valid
    assert (response.status_code == 200) is valid, response.text


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("OPTIONS", "/v1/experiment", "GET, HEAD, PUT"),
        ("DELETE", "/v1/predictions", "POST"),
        ("PUT", "/v2/models/stars/infer", "POST"),
        ("POST", "/v2/models/stars/versions/1.0/ready", "GET, HEAD"),
    ],
)
def test_405_names_every_method_of_the_path(
    gateway: TestClient, method: str, path: str, allow: str
) -> None:
    response = gateway.request(method, path)

    assert response.status_code == 405
    assert response.headers["Allow"] == allow


def test_v2_routes_announce_their_error_form_and_no_422(gateway: TestClient) -> None:
    paths = gateway.get("/openapi.json").json()["paths"]
    infer = paths["/v2/models/{model_name}/infer"]["post"]

    assert "422" not in infer["responses"]
    assert infer["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/OipError"
    )


def test_put_experiment_documents_409_for_a_version_conflict_and_422_for_a_bad_body(
    gateway: TestClient,
) -> None:
    responses = gateway.get("/openapi.json").json()["paths"]["/v1/experiment"]["put"]["responses"]

    assert "not registered in TorchServe" in responses["409"]["description"]
    assert responses["422"]["description"] == "invalid request body"
    for status in ("409", "422"):
        schema = responses[status]["content"]["application/json"]["schema"]
        assert schema["$ref"].endswith("/ErrorResponse")
