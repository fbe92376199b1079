"""The Open Inference Protocol's own clients against the gateway in front of a real TorchServe.

Triton's ``tritonclient.http.InferenceServerClient`` and KServe's ``InferenceRESTClient``
(protocol v2), unchanged, against ``/v2``: health, metadata, readiness and inference, with the
same stars ``/v1/predictions`` gives for the same texts and version, and an answer ``id`` that
``/v1/feedback`` takes. The stack is the one ``starrating serve`` starts (``tests.api.live``).
On the same stack, schemathesis with every check (``--checks all``) over ``/v2``, the prediction,
explanation and feedback routes and the explanation page finds no mismatch between the OpenAPI
document and what the gateway does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as triton
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from tritonclient.utils import InferenceServerException

from tests.api.live import LiveGateway, run_schemathesis, running_gateway, schemathesis_failure

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TEXTS = [
    "I loved it! I will recommend this to everyone.",
    "It's OK.",
    "Really bad. I hope they don't make this anymore.",
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    with running_gateway(tmp_path_factory.mktemp("oip-stack")) as live:
        yield live


def v1_stars(stack: LiveGateway, version: str) -> list[int]:
    response = stack.http.post(
        "/v1/predictions", json={"texts": TEXTS}, headers={"X-Model-Version": version}
    )
    assert response.status_code == 200, response.text
    return [p["stars"] for p in response.json()["predictions"]]


def v1_probabilities(stack: LiveGateway, version: str) -> list[list[float]]:
    response = stack.http.post(
        "/v1/predictions", json={"texts": TEXTS}, headers={"X-Model-Version": version}
    )
    return [
        [p["probabilities"][str(s)] for s in range(1, 6)] for p in response.json()["predictions"]
    ]


def triton_request() -> tuple[list[triton.InferInput], list[triton.InferRequestedOutput]]:
    text = triton.InferInput("text", [len(TEXTS)], "BYTES")
    text.set_data_from_numpy(np.array(TEXTS, dtype=object), binary_data=False)
    outputs = [
        triton.InferRequestedOutput("stars", binary_data=False),
        triton.InferRequestedOutput("probabilities", binary_data=False),
    ]
    return [text], outputs


def test_tritonclient_health_metadata_and_infer(stack: LiveGateway) -> None:
    client = triton.InferenceServerClient(url=stack.url.removeprefix("http://"))
    try:
        health = (client.is_server_live(), client.is_server_ready())
        ready = (client.is_model_ready("stars"), client.is_model_ready("stars", "2.0"))
        unknown_ready = client.is_model_ready("stars", "9.9")
        metadata = client.get_model_metadata("stars")
        inputs, outputs = triton_request()
        answers = {
            version: client.infer("stars", inputs, model_version=version, outputs=outputs)
            for version in ("1.0", "2.0")
        }
        routed = client.infer("stars", inputs, outputs=outputs, request_id="triton-req-0001")
        with pytest.raises(InferenceServerException, match="binary_data=False"):
            client.infer("stars", inputs)  # tritonclient asks for binary outputs by default
    finally:
        client.close()

    assert health == (True, True) and ready == (True, True) and unknown_ready is False
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in metadata["outputs"]] == ["stars", "probabilities"]
    assert metadata["versions"] == ["1.0", "2.0"]
    for version, result in answers.items():
        assert result.as_numpy("stars").tolist() == v1_stars(stack, version)
        probabilities = result.as_numpy("probabilities")
        assert probabilities.shape == (3, 5)
        np.testing.assert_allclose(probabilities, v1_probabilities(stack, version), atol=1e-6)
        assert result.get_response()["model_version"] == version
    # Unversioned: through the A/B router (no experiment: the default version), id = request id.
    assert routed.get_response()["model_version"] == "1.0"
    assert routed.as_numpy("stars").tolist() == v1_stars(stack, "1.0")
    assert routed.get_response()["id"] == "triton-req-0001"
    feedback = stack.http.post("/v1/feedback", json={"request_id": "triton-req-0001", "stars": 4})
    assert feedback.status_code == 200, feedback.text


async def kserve_round_trip(url: str) -> tuple[tuple[bool, bool, bool], dict[str, list[int]]]:
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    try:
        health = (
            await client.is_server_live(url),
            await client.is_server_ready(url),
            await client.is_model_ready(url, "stars"),
        )
        stars: dict[str, list[int]] = {}
        for version in ("1.0", "2.0"):
            request = InferRequest(
                model_name="stars",
                infer_inputs=[InferInput("text", [len(TEXTS)], "BYTES", data=list(TEXTS))],
            )
            response = await client.infer(
                f"{url}/v2/models/stars/versions/{version}/infer", request, is_graph_endpoint=True
            )
            assert isinstance(response, dict)
            assert response["model_version"] == version
            (output,) = [o for o in response["outputs"] if o["name"] == "stars"]
            stars[version] = output["data"]
        routed = await client.infer(
            url, InferRequest(model_name="stars", infer_inputs=[
                InferInput("text", [len(TEXTS)], "BYTES", data=list(TEXTS))
            ]), model_name="stars"
        )  # fmt: skip
        stars["routed"] = routed.outputs[0].as_numpy().tolist()
    finally:
        await client.close()
    return health, stars


def test_kserve_rest_client_v2_round_trip(stack: LiveGateway) -> None:
    health, stars = asyncio.run(kserve_round_trip(stack.url))

    assert health == (True, True, True)
    assert stars == {
        "1.0": v1_stars(stack, "1.0"),
        "2.0": v1_stars(stack, "2.0"),
        "routed": v1_stars(stack, "1.0"),
    }


def test_schemathesis_every_check_on_the_protocol_and_rating_routes(stack: LiveGateway) -> None:
    # The experiment routes have their own run, with the admin token: test_experiment_contract.
    result = run_schemathesis(
        stack.url,
        checks="all",
        seed=7,
        max_time_s=30,
        include_path_regex="^/(v2|v1/predictions|v1/explanations|v1/feedback|explain)",
    )

    assert result.returncode == 0, schemathesis_failure(result)
    assert "Tested: 13" in result.stdout
