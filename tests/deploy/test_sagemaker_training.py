"""The SageMaker training job, built offline with the SDK v3 ``ModelTrainer``: the
CreateTrainingJob request it sends (checked against the API model with botocore's Stubber), the
torchrun driver settings it uploads, and its metric regexes against real training log lines."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import boto3
import pytest
from botocore.stub import Stubber
from sagemaker.core.helper.session_helper import Session
from sagemaker.train.container_drivers.common.utils import hyperparameters_to_cli_args

from starrating.aws import SageMakerConfigError
from training.metric_lines import METRIC_DEFINITIONS, format_metric_line
from training.sagemaker import (
    DryRunRefused,
    DryRunSession,
    TrainingJobSpec,
    build_model_trainer,
    count_train_objects,
    plan_training_job,
    resolve_tracking_uri,
    staged_source,
    training_job_request,
)

ROLE = "arn:aws:iam::123456789012:role/StarratingTraining"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/starrating-train:0.1.0"


def spec(**overrides: Any) -> TrainingJobSpec:
    values: dict[str, Any] = {
        "image_uri": IMAGE,
        "role_arn": ROLE,
        "train_s3": "s3://reviews/prepared/train/",
        "validation_s3": "s3://reviews/prepared/validation/",
        "test_s3": "s3://reviews/prepared/test/",
        "output_s3": "s3://reviews/jobs/output",
        "checkpoint_s3": "s3://reviews/jobs/checkpoints/run-1",
        "hyperparameters": {"epochs": "3", "lr": "5e-5"},
        "mlflow_tracking_uri": "https://mlflow.example.com",
    }
    values.update(overrides)
    return TrainingJobSpec(**values)


class UploadRecorder:
    """``upload_data`` of the mocked session: what would be uploaded, read while it exists."""

    def __init__(self) -> None:
        self.uploads: dict[str, dict[str, str]] = {}

    def __call__(self, path: str, bucket: str, key_prefix: str, **_: Any) -> str:
        channel = key_prefix.rsplit("/", 1)[-1]
        root = Path(path)
        self.uploads[channel] = {
            str(p.relative_to(root)): p.read_text(encoding="utf-8", errors="replace")
            for p in root.rglob("*")
            if p.is_file()
        }
        return f"s3://{bucket}/{key_prefix}"


@pytest.fixture
def recorder() -> UploadRecorder:
    return UploadRecorder()


@pytest.fixture
def session(recorder: UploadRecorder, monkeypatch: pytest.MonkeyPatch) -> MagicMock:
    # A session that never reaches AWS (see ENVIRONMENT.md): no role check, no bucket lookup.
    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "false")
    fake = MagicMock(spec=Session)
    fake.boto_session = MagicMock()
    fake.boto_region_name = "us-east-1"
    fake.default_bucket.return_value = "staging-bucket"
    fake.default_bucket_prefix = None
    fake.sagemaker_config = None
    fake.upload_data.side_effect = recorder
    return fake


@pytest.fixture
def source_dir() -> Iterator[Path]:
    with staged_source() as path:
        yield path


def request_for(job: TrainingJobSpec, source_dir: Path, session: MagicMock) -> dict[str, Any]:
    return training_job_request(build_model_trainer(job, source_dir, session))


def channels(request: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["ChannelName"]: c["DataSource"]["S3DataSource"] for c in request["InputDataConfig"]}


@pytest.mark.parametrize("instance_type", ["ml.p3.2xlarge", "ml.g5.2xlarge"])
def test_two_gpu_instances_of_the_chosen_type(
    source_dir: Path, session: MagicMock, instance_type: str
) -> None:
    request = request_for(spec(instance_type=instance_type), source_dir, session)
    assert request["ResourceConfig"]["InstanceCount"] == 2
    assert request["ResourceConfig"]["InstanceType"] == instance_type
    assert request["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert request["RoleArn"] == ROLE


def test_torchrun_runs_the_sagemaker_entry_on_every_gpu(
    source_dir: Path, session: MagicMock, recorder: UploadRecorder
) -> None:
    request_for(spec(), source_dir, session)
    drivers = recorder.uploads["sm_drivers"]
    assert "torchrun_driver.py" in drivers["sm_train.sh"]
    # None = one process per GPU (the driver counts them); the entry is the script-mode file.
    assert json.loads(drivers["distributed.json"])["process_count_per_node"] is None
    assert json.loads(drivers["sourcecode.json"])["entry_script"] == "training/sagemaker_entry.py"
    code = recorder.uploads["code"]
    assert "training/sagemaker_entry.py" in code and "starrating/labels.py" in code
    # Only the two packages travel: no data, model store, venv or tests.
    assert {name.split("/")[0] for name in code} == {"training", "starrating"}


def test_processes_per_node_can_be_fixed(
    source_dir: Path, session: MagicMock, recorder: UploadRecorder
) -> None:
    request_for(spec(processes_per_node=4), source_dir, session)
    distributed = json.loads(recorder.uploads["sm_drivers"]["distributed.json"])
    assert distributed["process_count_per_node"] == 4


def test_managed_spot_with_max_wait_and_s3_checkpoints(
    source_dir: Path, session: MagicMock
) -> None:
    request = request_for(spec(max_run_s=7200, max_wait_s=10800), source_dir, session)
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {
        "MaxRuntimeInSeconds": 7200,
        "MaxWaitTimeInSeconds": 10800,
    }
    # The entry resumes from /opt/ml/checkpoints, which SageMaker restores from this URI.
    assert request["CheckpointConfig"] == {
        "S3Uri": "s3://reviews/jobs/checkpoints/run-1",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert request["OutputDataConfig"]["S3OutputPath"] == "s3://reviews/jobs/output"


def test_on_demand_has_no_max_wait(source_dir: Path, session: MagicMock) -> None:
    request = request_for(spec(spot=False), source_dir, session)
    assert request.get("EnableManagedSpotTraining") is False
    assert "MaxWaitTimeInSeconds" not in request["StoppingCondition"]


def test_train_channel_can_be_sharded_by_key_and_evaluation_splits_are_whole(
    source_dir: Path, session: MagicMock
) -> None:
    data = channels(request_for(spec(shard_train=True), source_dir, session))
    assert data["train"] == {
        "S3DataType": "S3Prefix",
        "S3Uri": "s3://reviews/prepared/train/",
        "S3DataDistributionType": "ShardedByS3Key",
    }
    for split in ("validation", "test"):
        assert data[split]["S3DataDistributionType"] == "FullyReplicated"
        assert data[split]["S3Uri"] == f"s3://reviews/prepared/{split}/"
    assert {"code", "sm_drivers"} <= set(data)


@pytest.mark.parametrize(
    ("shard_train", "objects", "distribution"),
    [
        (None, None, "FullyReplicated"),  # not counted (a dry run): every instance gets it all
        (None, 2, "ShardedByS3Key"),  # one object per instance at least
        (None, 5, "ShardedByS3Key"),
        (None, 1, "FullyReplicated"),  # sharded, the second instance would get nothing
        (False, 8, "FullyReplicated"),
        (True, None, "ShardedByS3Key"),
    ],
)
def test_the_training_split_is_sharded_by_key_when_every_instance_gets_an_object(
    source_dir: Path,
    session: MagicMock,
    shard_train: bool | None,
    objects: int | None,
    distribution: str,
) -> None:
    job = spec(shard_train=shard_train, train_objects=objects)
    data = channels(request_for(job, source_dir, session))
    assert data["train"]["S3DataDistributionType"] == distribution
    assert job.train_distribution()["S3DataDistributionType"] == distribution


def test_sharding_by_key_is_refused_with_fewer_objects_than_instances() -> None:
    with pytest.raises(SageMakerConfigError, match=r"1 \.jsonl object.*2 instances.*get none"):
        spec(shard_train=True, train_objects=1)


def test_the_launcher_counts_the_jsonl_objects_under_the_training_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    prefix = {"Bucket": "reviews", "Prefix": "prepared/train/"}
    with Stubber(s3) as stub:
        stub.add_response(
            "list_objects_v2",
            {
                "Contents": [
                    {"Key": "prepared/train/part-00000.jsonl"},
                    {"Key": "prepared/train/part-00001.jsonl.gz"},
                    {"Key": "prepared/train/summary.json"},
                ],
                "IsTruncated": True,
                "NextContinuationToken": "page-2",
            },
            expected_params=prefix,
        )
        stub.add_response(
            "list_objects_v2",
            {"Contents": [{"Key": "prepared/train/part-00002.jsonl"}], "IsTruncated": False},
            expected_params=prefix | {"ContinuationToken": "page-2"},
        )
        monkeypatch.setattr(boto3, "Session", lambda region_name: MagicMock(client=lambda name: s3))
        assert count_train_objects("s3://reviews/prepared/train/", "us-east-1") == 3
        stub.assert_no_pending_responses()


def test_metric_definitions_are_the_training_log_regexes(
    source_dir: Path, session: MagicMock
) -> None:
    request = request_for(spec(), source_dir, session)
    assert request["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS


def test_hyperparameters_and_mlflow_uri_reach_the_job(source_dir: Path, session: MagicMock) -> None:
    request = request_for(spec(), source_dir, session)
    assert request["HyperParameters"] == {"epochs": "3", "lr": "5e-5"}
    assert request["Environment"] == {"MLFLOW_TRACKING_URI": "https://mlflow.example.com"}


def test_request_matches_the_create_training_job_api(source_dir: Path, session: MagicMock) -> None:
    request = request_for(spec(), source_dir, session)
    client = boto3.client("sagemaker", region_name="us-east-1")
    with Stubber(client) as stubber:
        # The Stubber validates the parameters against SageMaker's API model.
        stubber.add_response(
            "create_training_job",
            {"TrainingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:training-job/x"},
            expected_params=request,
        )
        client.create_training_job(**request)
        stubber.assert_no_pending_responses()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train_s3": "/data/train"}, "s3://"),
        ({"role_arn": "StarratingTraining"}, "IAM role ARN"),
        ({"instance_type": "p3.2xlarge"}, "'ml.'"),
        ({"instance_count": 0}, ">= 1"),
        ({"max_run_s": 7200, "max_wait_s": 3600}, "max wait"),
        ({"hyperparameters": {"checkpoint-dir": "/tmp"}}, "set by the launcher"),
        ({"hyperparameters": {"epochz": "3"}}, "unknown hyperparameter(s) epochz"),
    ],
)
def test_settings_that_cannot_work_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(SageMakerConfigError, match=re.escape(message)):
        spec(**overrides)


def test_tracking_uri_must_be_reachable_from_sagemaker() -> None:
    assert resolve_tracking_uri("https://mlflow.example.com", {}) == "https://mlflow.example.com"
    arn = "arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/x"
    assert resolve_tracking_uri(None, {"MLFLOW_TRACKING_URI": arn}) == arn
    # A local store only set in the environment stays behind; given explicitly it is an error.
    assert resolve_tracking_uri(None, {"MLFLOW_TRACKING_URI": "sqlite:///runs/mlflow.db"}) is None
    with pytest.raises(SageMakerConfigError, match="not reachable from a SageMaker job"):
        resolve_tracking_uri("sqlite:///runs/mlflow.db", {})


def test_dry_run_plans_uploads_and_refuses_every_aws_call() -> None:
    plan = plan_training_job(spec(), region="eu-west-1")
    (request,) = plan["requests"]
    assert request["operation"] == "CreateTrainingJob"
    params = request["params"]
    job = params["TrainingJobName"]
    uploads = {u["s3_uri"]: u for u in plan["uploads"]}
    code_uri = f"s3://reviews/starrating/{job}/input/code"
    drivers_uri = f"s3://reviews/starrating/{job}/input/sm_drivers"
    assert set(uploads) == {code_uri, drivers_uri}
    source_code = uploads[drivers_uri]["json"]["sourcecode.json"]
    assert source_code["entry_script"] == "training/sagemaker_entry.py"
    assert channels(params)["code"]["S3Uri"] == code_uri
    session = DryRunSession("eu-west-1", "reviews")
    with pytest.raises(DryRunRefused):
        session.boto_session.client("sts").get_caller_identity()


def test_metric_regexes_read_every_metric_of_a_formatted_line() -> None:
    keys = [d["Regex"].split("=")[0].removeprefix(r"\b") for d in METRIC_DEFINITIONS]
    line = format_metric_line({key: 0.25 + i for i, key in enumerate(keys)})
    for i, definition in enumerate(METRIC_DEFINITIONS):
        match = re.search(definition["Regex"], line)
        assert match is not None, definition["Name"]
        assert float(match.group(1)) == pytest.approx(0.25 + i)


@pytest.mark.slow
def test_job_arguments_train_and_the_metric_regexes_read_the_real_log(
    tiny_model_dir: Path,
    tiny_data_dir: Path,
    tmp_path: Path,
    source_dir: Path,
    session: MagicMock,
) -> None:
    """Run training/sagemaker_entry.py as the job's torchrun driver would, on tiny data: the
    request's hyperparameters as arguments (the SDK's own conversion), channels as SM_CHANNEL_*
    folders; then read its log with the request's metric definitions, as SageMaker does."""
    job = spec(
        hyperparameters={
            "model": str(tiny_model_dir),
            "max_steps": "4",
            "log_every": "1",
            "batch_size": "8",
        }
    )
    request = request_for(job, source_dir, session)
    channel_dirs = {}
    for split in ("train", "validation"):
        folder = tmp_path / "input" / split
        folder.mkdir(parents=True)
        # A channel is a folder of S3 objects: the split as one object among them.
        (folder / f"{split}-00000.jsonl").write_text(
            (tiny_data_dir / f"{split}.jsonl").read_text(encoding="utf-8")
        )
        channel_dirs[f"SM_CHANNEL_{split.upper()}"] = str(folder)
    env = {
        **os.environ,
        **channel_dirs,
        "SM_MODEL_DIR": str(tmp_path / "model"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    arguments = hyperparameters_to_cli_args(request["HyperParameters"])
    # Explicit only here: a job checkpoints to /opt/ml/checkpoints, not writable on this machine.
    arguments += ["--checkpoint-dir", str(tmp_path / "checkpoints")]
    result = subprocess.run(
        [sys.executable, str(source_dir / "training" / "sagemaker_entry.py"), *arguments],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "model" / "model").is_dir()
    log = (result.stdout + result.stderr).splitlines()
    values: dict[str, list[float]] = {}
    for definition in request["AlgorithmSpecification"]["MetricDefinitions"]:
        for line in log:
            match = re.search(definition["Regex"], line)
            if match:
                values.setdefault(definition["Name"], []).append(float(match.group(1)))
    assert len(values["train:loss"]) == 4  # one line per step with --log_every 1
    assert all(math.isfinite(v) and v > 0 for v in values["train:loss"])
    assert all(0.0 <= v <= 1.0 for v in values["validation:accuracy"])
    assert values["calibration:temperature"][-1] > 0
