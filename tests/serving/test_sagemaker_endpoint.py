"""The A/B endpoint on SageMaker, offline: the requests are built from .mar files and sent to
boto3 clients under botocore's Stubber, which checks each against SageMaker's and S3's API
models and answers without AWS."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from abtesting.policy import Decision
from serving.sagemaker import (
    EndpointSpec,
    apply_decision,
    apply_endpoint_plan,
    apply_update_weights,
    parse_weights,
    plan_endpoint,
    traffic_shares,
    update_weights_request,
    variant_name,
)
from starrating.aws import SageMakerConfigError

ROLE = "arn:aws:iam::123456789012:role/StarratingHosting"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/starrating-serve:0.1.0"
CREATED = datetime(2026, 11, 27, 9, 30, 0, tzinfo=UTC)


@pytest.fixture
def model_store(tmp_path: Path) -> Path:
    for version in ("1.0", "2.0"):
        (tmp_path / f"stars-{version}.mar").write_bytes(f"archive {version}".encode())
    return tmp_path


def endpoint(model_store: Path, **overrides: Any) -> EndpointSpec:
    values: dict[str, Any] = {
        "endpoint_name": "starrating-ab",
        "image_uri": IMAGE,
        "role_arn": ROLE,
        "s3_prefix": "s3://models-bucket/starrating",
        "weights": {"1.0": 90.0, "2.0": 10.0},
        "model_store": model_store,
    }
    values.update(overrides)
    return EndpointSpec(**values)


@pytest.fixture
def clients() -> Iterator[tuple[Any, Any, Stubber, Stubber]]:
    sagemaker = boto3.client("sagemaker", region_name="us-east-1")
    s3 = boto3.client("s3", region_name="us-east-1")
    with Stubber(sagemaker) as sagemaker_stub, Stubber(s3) as s3_stub:
        yield sagemaker, s3, sagemaker_stub, s3_stub
        sagemaker_stub.assert_no_pending_responses()
        s3_stub.assert_no_pending_responses()


def test_one_model_per_version_runs_the_serve_image_on_its_archive(model_store: Path) -> None:
    plan = plan_endpoint(endpoint(model_store), CREATED)
    assert [u.s3_uri for u in plan.uploads] == [
        "s3://models-bucket/starrating/starrating-ab/stars-1-0/stars-1.0.mar",
        "s3://models-bucket/starrating/starrating-ab/stars-2-0/stars-2.0.mar",
    ]
    assert [u.source for u in plan.uploads] == [
        model_store / "stars-1.0.mar",
        model_store / "stars-2.0.mar",
    ]
    first, second = plan.create_models
    assert first["ModelName"] == "starrating-ab-stars-1-0-20261127-093000"
    assert second["ModelName"] == "starrating-ab-stars-2-0-20261127-093000"
    for model, upload in zip(plan.create_models, plan.uploads, strict=True):
        container = model["PrimaryContainer"]
        assert container["Image"] == IMAGE
        assert model["ExecutionRoleArn"] == ROLE
        # Uncompressed model data: SageMaker copies the folder, i.e. this one .mar, into
        # /opt/ml/model, where the image's `serve` mode loads it.
        source = container["ModelDataSource"]["S3DataSource"]
        assert source["CompressionType"] == "None"
        assert upload.s3_uri.startswith(source["S3Uri"]) and source["S3Uri"].endswith("/")
        assert upload.s3_uri.count("/") == source["S3Uri"].count("/")


def test_endpoint_config_has_one_weighted_variant_per_version(model_store: Path) -> None:
    plan = plan_endpoint(endpoint(model_store, instance_type="ml.c6i.2xlarge"), CREATED)
    config = plan.create_endpoint_config
    assert config["EndpointConfigName"] == "starrating-ab-20261127-093000"
    assert config["ProductionVariants"] == [
        {
            "VariantName": "stars-1-0",
            "ModelName": "starrating-ab-stars-1-0-20261127-093000",
            "InstanceType": "ml.c6i.2xlarge",
            "InitialInstanceCount": 1,
            "InitialVariantWeight": 90.0,
        },
        {
            "VariantName": "stars-2-0",
            "ModelName": "starrating-ab-stars-2-0-20261127-093000",
            "InstanceType": "ml.c6i.2xlarge",
            "InitialInstanceCount": 1,
            "InitialVariantWeight": 10.0,
        },
    ]
    assert plan.endpoint_operation == "CreateEndpoint"
    assert plan.endpoint_request["EndpointConfigName"] == config["EndpointConfigName"]
    assert traffic_shares({"1.0": 90.0, "2.0": 10.0}) == {"1.0": 0.9, "2.0": 0.1}


def test_deploy_sends_valid_requests_in_order(
    model_store: Path, clients: tuple[Any, Any, Stubber, Stubber]
) -> None:
    sagemaker, s3, sagemaker_stub, s3_stub = clients
    plan = plan_endpoint(endpoint(model_store), CREATED)
    for upload in plan.uploads:
        s3_stub.add_response(
            "put_object",
            {"ETag": '"etag"'},
            expected_params={"Bucket": upload.bucket, "Key": upload.key, "Body": ANY},
        )
    for request in plan.create_models:
        sagemaker_stub.add_response(
            "create_model",
            {"ModelArn": f"arn:aws:sagemaker:us-east-1:123456789012:model/{request['ModelName']}"},
            expected_params=request,
        )
    sagemaker_stub.add_response(
        "create_endpoint_config",
        {"EndpointConfigArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/x"},
        expected_params=plan.create_endpoint_config,
    )
    sagemaker_stub.add_response(
        "create_endpoint",
        {"EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/starrating-ab"},
        expected_params=plan.endpoint_request,
    )
    apply_endpoint_plan(plan, sagemaker, s3)


def test_update_switches_an_existing_endpoint_to_the_new_config(
    model_store: Path, clients: tuple[Any, Any, Stubber, Stubber]
) -> None:
    sagemaker, s3, sagemaker_stub, s3_stub = clients
    plan = plan_endpoint(endpoint(model_store, update=True), CREATED)
    assert plan.endpoint_operation == "UpdateEndpoint"
    for _ in plan.uploads:
        s3_stub.add_response("put_object", {"ETag": '"etag"'})
    for _ in plan.create_models:
        sagemaker_stub.add_response("create_model", {"ModelArn": "arn:aws:sagemaker:::model/m"})
    sagemaker_stub.add_response(
        "create_endpoint_config", {"EndpointConfigArn": "arn:aws:sagemaker:::endpoint-config/c"}
    )
    sagemaker_stub.add_response(
        "update_endpoint",
        {"EndpointArn": "arn:aws:sagemaker:::endpoint/starrating-ab"},
        expected_params={
            "EndpointName": "starrating-ab",
            "EndpointConfigName": "starrating-ab-20261127-093000",
        },
    )
    apply_endpoint_plan(plan, sagemaker, s3)


def test_update_weights_shifts_traffic_between_variants(
    clients: tuple[Any, Any, Stubber, Stubber],
) -> None:
    sagemaker, _, sagemaker_stub, _ = clients
    request = update_weights_request("starrating-ab", parse_weights(["1.0=50", "2.0=50"]))
    assert request == {
        "EndpointName": "starrating-ab",
        "DesiredWeightsAndCapacities": [
            {"VariantName": "stars-1-0", "DesiredWeight": 50.0},
            {"VariantName": "stars-2-0", "DesiredWeight": 50.0},
        ],
    }
    sagemaker_stub.add_response(
        "update_endpoint_weights_and_capacities",
        {"EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/starrating-ab"},
        expected_params=request,
    )
    apply_update_weights(request, sagemaker)


def test_variant_names_are_valid_sagemaker_names() -> None:
    assert variant_name("1.0") == "stars-1-0"
    assert variant_name("2.1-rc1") == "stars-2-1-rc1"
    assert variant_name("2026.11.27") == "stars-2026-11-27"
    with pytest.raises(SageMakerConfigError, match="not a model version"):
        variant_name("../1.0")


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (["1.0"], "VERSION=WEIGHT"),
        (["1.0=ninety"], "not a number"),
        (["1.0=-5"], ">= 0"),
        (["1.0=nan"], ">= 0"),
        (["1.0=0", "2.0=0"], "at least one weight"),
        (["1.0=50", "1.0=50"], "given twice"),
        ([], "at least one version"),
    ],
)
def test_bad_weights_are_refused(pairs: list[str], message: str) -> None:
    with pytest.raises(SageMakerConfigError, match=re.escape(message)):
        parse_weights(pairs)


def test_missing_archive_and_bad_names_are_refused(model_store: Path) -> None:
    with pytest.raises(SageMakerConfigError, match=r"stars-3\.0\.mar.*starrating archive"):
        endpoint(model_store, weights={"1.0": 50.0, "3.0": 50.0})
    with pytest.raises(SageMakerConfigError, match="not a valid SageMaker name"):
        endpoint(model_store, endpoint_name="starrating_ab")
    with pytest.raises(SageMakerConfigError, match="s3://"):
        endpoint(model_store, s3_prefix="models-bucket/starrating")
    long_name = "a" * 40  # fits an endpoint, not the model names derived from it
    with pytest.raises(SageMakerConfigError, match="model name"):
        plan_endpoint(endpoint(model_store, endpoint_name=long_name), CREATED)


def _decision(action: str, before: float, after: float) -> Decision:
    return Decision(action, "candidate", before, after, "test", {})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("decision", "weights"),
    [
        (_decision("ramp", 0.1, 0.25), (0.75, 0.25)),
        (_decision("rollback", 0.25, 0.0), (1.0, 0.0)),
        (_decision("promote", 0.5, 1.0), (0.0, 1.0)),
    ],
)
def test_autopilot_decisions_set_the_endpoint_variant_weights(
    clients: tuple[Any, Any, Stubber, Stubber],
    decision: Decision,
    weights: tuple[float, float],
) -> None:
    sagemaker, _, sagemaker_stub, _ = clients
    expected = {
        "EndpointName": "starrating-ab",
        "DesiredWeightsAndCapacities": [
            {"VariantName": "stars-1-0", "DesiredWeight": weights[0]},
            {"VariantName": "stars-2-0", "DesiredWeight": weights[1]},
        ],
    }
    sagemaker_stub.add_response(
        "update_endpoint_weights_and_capacities",
        {"EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/starrating-ab"},
        expected_params=expected,
    )
    sent = apply_decision(decision, "starrating-ab", "1.0", "2.0", sagemaker)
    assert sent == expected
    sagemaker_stub.assert_no_pending_responses()


def test_a_decision_for_a_bad_endpoint_is_refused_before_any_call(
    clients: tuple[Any, Any, Stubber, Stubber],
) -> None:
    sagemaker = clients[0]  # the stubber has no response queued: any call would fail loudly
    with pytest.raises(SageMakerConfigError, match="not a valid SageMaker name"):
        apply_decision(_decision("ramp", 0.1, 0.5), "bad_name", "1.0", "2.0", sagemaker)
    with pytest.raises(SageMakerConfigError, match=r"both version 1\.0"):
        apply_decision(_decision("ramp", 0.1, 0.5), "starrating-ab", "1.0", "1.0", sagemaker)
