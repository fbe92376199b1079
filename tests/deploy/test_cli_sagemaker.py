"""``starrating sagemaker train|deploy|update-weights``: --dry-run prints the API requests as
JSON without AWS; a real run sends them (to Stubber-checked boto3 clients here)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from typer.testing import CliRunner

from cli import app

ROLE = "arn:aws:iam::123456789012:role/StarratingSageMaker"
ECR = "123456789012.dkr.ecr.us-east-1.amazonaws.com"


@pytest.fixture(autouse=True)
def no_aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A dry run must work on a machine without any AWS configuration.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def runner() -> CliRunner:
    # A narrow terminal: the JSON must still come out unwrapped.
    return CliRunner(env={"COLUMNS": "40"})


@pytest.fixture
def model_store(tmp_path: Path) -> Path:
    store = tmp_path / "model_store"
    store.mkdir()
    for version in ("1.0", "2.0"):
        (store / f"stars-{version}.mar").write_bytes(b"archive")
    return store


def invoke(runner: CliRunner, *args: str) -> Any:
    return runner.invoke(app, ["sagemaker", *args])


def requests_of(output: str) -> list[dict[str, Any]]:
    plan: dict[str, Any] = json.loads(output)
    return list(plan["requests"])


TRAIN_ARGS = (
    "train",
    "--image",
    f"{ECR}/starrating-train:0.1.0",
    "--role",
    ROLE,
    "--train",
    "s3://reviews/prepared/train/",
    "--validation",
    "s3://reviews/prepared/validation/",
    "--output",
    "s3://reviews/jobs",
    "--checkpoints",
    "s3://reviews/checkpoints/run-7",
    "--region",
    "us-east-1",
)


def test_train_dry_run_prints_the_create_training_job_request(runner: CliRunner) -> None:
    result = invoke(
        runner,
        *TRAIN_ARGS,
        "--instance-type",
        "ml.p3.2xlarge",
        "--hp",
        "epochs=2",
        "--mlflow-tracking-uri",
        "https://mlflow.example.com",
        "--dry-run",
    )
    assert result.exit_code == 0, result.output
    (request,) = requests_of(result.stdout)
    params = request["params"]
    assert request["operation"] == "CreateTrainingJob"
    assert params["ResourceConfig"]["InstanceCount"] == 2
    assert params["ResourceConfig"]["InstanceType"] == "ml.p3.2xlarge"
    assert params["EnableManagedSpotTraining"] is True
    assert params["CheckpointConfig"]["S3Uri"] == "s3://reviews/checkpoints/run-7"
    assert params["HyperParameters"] == {"epochs": "2"}
    assert params["Environment"]["MLFLOW_TRACKING_URI"] == "https://mlflow.example.com"


def test_a_dry_run_counts_no_objects_and_replicates_unless_told_to_shard(
    runner: CliRunner,
) -> None:
    result = invoke(runner, *TRAIN_ARGS, "--dry-run")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["train_channel"]["S3DataDistributionType"] == "FullyReplicated"
    assert "not counted" in plan["train_channel"]["why"]
    result = invoke(runner, *TRAIN_ARGS, "--shard-train", "--dry-run")
    assert result.exit_code == 0, result.output
    (request,) = requests_of(result.stdout)
    (train,) = [c for c in request["params"]["InputDataConfig"] if c["ChannelName"] == "train"]
    assert train["DataSource"]["S3DataSource"]["S3DataDistributionType"] == "ShardedByS3Key"


@pytest.mark.parametrize(
    ("keys", "flag", "sharded"),
    [
        (["part-0.jsonl", "part-1.jsonl", "part-2.jsonl.gz"], None, True),
        (["part-0.jsonl", "summary.json"], None, False),  # one object for two instances
        (["part-0.jsonl", "part-1.jsonl"], "--replicate-train", False),
    ],
)
def test_a_launch_shards_the_training_split_when_every_instance_gets_an_object(
    runner: CliRunner,
    monkeypatch: pytest.MonkeyPatch,
    keys: list[str],
    flag: str | None,
    sharded: bool,
) -> None:
    import training.sagemaker

    s3 = boto3.client("s3", region_name="us-east-1")
    launched: list[Any] = []

    def launch_training_job(spec: Any, region: str) -> str:
        launched.append(spec)
        return "starrating-2026-12-04-15-00-00-000"

    monkeypatch.setattr(training.sagemaker, "launch_training_job", launch_training_job)
    monkeypatch.setattr(boto3, "Session", StubbedSession({"s3": s3}))
    with Stubber(s3) as stub:
        if flag is None:  # --replicate-train needs no count
            stub.add_response(
                "list_objects_v2",
                {"Contents": [{"Key": f"prepared/train/{key}"} for key in keys]},
                expected_params={"Bucket": "reviews", "Prefix": "prepared/train/"},
            )
        result = invoke(runner, *TRAIN_ARGS, *([flag] if flag else []))
        stub.assert_no_pending_responses()
    assert result.exit_code == 0, result.output
    (spec,) = launched
    assert spec.train_sharded is sharded
    expected = "ShardedByS3Key" if sharded else "FullyReplicated"
    assert f"training split: {expected}" in " ".join(result.output.split())


def test_sharding_is_refused_when_an_instance_would_get_no_object(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    monkeypatch.setattr(boto3, "Session", StubbedSession({"s3": s3}))
    with Stubber(s3) as stub:
        stub.add_response("list_objects_v2", {"Contents": [{"Key": "prepared/train/a.jsonl"}]})
        result = invoke(runner, *TRAIN_ARGS, "--shard-train")
    assert result.exit_code == 2
    assert "an instance would get none" in " ".join(result.output.split())


def test_train_refuses_unknown_hyperparameters_before_anything_else(runner: CliRunner) -> None:
    result = invoke(runner, *TRAIN_ARGS, "--hp", "epoch=2", "--dry-run")
    assert result.exit_code == 2
    assert "unknown hyperparameter(s) epoch" in result.output


def test_a_region_is_required(runner: CliRunner) -> None:
    args = [a for a in TRAIN_ARGS if a not in ("--region", "us-east-1")]
    result = invoke(runner, *args, "--dry-run")
    assert result.exit_code == 2
    assert "no AWS region" in result.output


def deploy_args(model_store: Path, *extra: str) -> list[str]:
    return [
        "deploy",
        "--endpoint-name",
        "starrating-ab",
        "--image",
        f"{ECR}/starrating-serve:0.1.0",
        "--role",
        ROLE,
        "--s3-prefix",
        "s3://models-bucket/starrating",
        "--variant",
        "1.0=90",
        "--variant",
        "2.0=10",
        "--model-store",
        str(model_store),
        "--region",
        "us-east-1",
        *extra,
    ]


def test_deploy_dry_run_prints_models_config_and_endpoint(
    runner: CliRunner, model_store: Path
) -> None:
    result = invoke(runner, *deploy_args(model_store, "--dry-run"))
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert [u["source"] for u in plan["uploads"]] == [
        str(model_store / "stars-1.0.mar"),
        str(model_store / "stars-2.0.mar"),
    ]
    operations = [r["operation"] for r in plan["requests"]]
    assert operations == ["CreateModel", "CreateModel", "CreateEndpointConfig", "CreateEndpoint"]
    variants = plan["requests"][2]["params"]["ProductionVariants"]
    assert [(v["VariantName"], v["InitialVariantWeight"]) for v in variants] == [
        ("stars-1-0", 90.0),
        ("stars-2-0", 10.0),
    ]


def test_deploy_names_the_missing_archive(runner: CliRunner, model_store: Path) -> None:
    (model_store / "stars-2.0.mar").unlink()
    result = invoke(runner, *deploy_args(model_store, "--dry-run"))
    assert result.exit_code == 2
    assert "stars-2.0.mar" in "".join(result.output.split())  # wrapped at 40 columns


def test_update_weights_dry_run(runner: CliRunner) -> None:
    result = invoke(
        runner,
        "update-weights",
        "--endpoint-name",
        "starrating-ab",
        "--variant",
        "1.0=25",
        "--variant",
        "2.0=75",
        "--region",
        "us-east-1",
        "--dry-run",
    )
    assert result.exit_code == 0, result.output
    (request,) = requests_of(result.stdout)
    assert request == {
        "operation": "UpdateEndpointWeightsAndCapacities",
        "params": {
            "EndpointName": "starrating-ab",
            "DesiredWeightsAndCapacities": [
                {"VariantName": "stars-1-0", "DesiredWeight": 25.0},
                {"VariantName": "stars-2-0", "DesiredWeight": 75.0},
            ],
        },
    }


class StubbedSession:
    """``boto3.Session`` whose clients answer from botocore Stubbers (real request checks)."""

    def __init__(self, clients: dict[str, Any]) -> None:
        self.clients = clients

    def __call__(self, region_name: str) -> StubbedSession:
        assert region_name == "us-east-1"
        return self

    def client(self, name: str) -> Any:
        return self.clients[name]


@pytest.fixture
def sagemaker_stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stubber]:
    sagemaker = boto3.client("sagemaker", region_name="us-east-1")
    s3 = boto3.client("s3", region_name="us-east-1")
    with Stubber(sagemaker) as stub, Stubber(s3) as s3_stub:
        for _ in range(2):
            s3_stub.add_response("put_object", {"ETag": '"e"'})
        monkeypatch.setattr(boto3, "Session", StubbedSession({"sagemaker": sagemaker, "s3": s3}))
        yield stub


def test_update_weights_sends_the_request(runner: CliRunner, sagemaker_stub: Stubber) -> None:
    sagemaker_stub.add_response(
        "update_endpoint_weights_and_capacities",
        {"EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/starrating-ab"},
        expected_params={
            "EndpointName": "starrating-ab",
            "DesiredWeightsAndCapacities": [
                {"VariantName": "stars-1-0", "DesiredWeight": 0.0},
                {"VariantName": "stars-2-0", "DesiredWeight": 1.0},
            ],
        },
    )
    result = invoke(
        runner,
        "update-weights",
        "--endpoint-name",
        "starrating-ab",
        "--variant",
        "1.0=0",
        "--variant",
        "2.0=1",
        "--region",
        "us-east-1",
    )
    assert result.exit_code == 0, result.output
    assert "2.0: 100%" in result.output
    sagemaker_stub.assert_no_pending_responses()


def test_deploy_reports_what_aws_refused(
    runner: CliRunner, model_store: Path, sagemaker_stub: Stubber
) -> None:
    sagemaker_stub.add_client_error(
        "create_model",
        service_error_code="AccessDeniedException",
        service_message="not authorized to perform: sagemaker:CreateModel",
        http_status_code=400,
    )
    result = invoke(runner, *deploy_args(model_store))
    assert result.exit_code == 2
    assert "AWS refused the request" in result.output
    assert "sagemaker:CreateModel" in result.output
