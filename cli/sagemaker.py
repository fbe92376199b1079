"""``starrating sagemaker train|deploy|update-weights``: a distributed SageMaker training job and
an A/B endpoint with one production variant per model version. ``--dry-run`` prints the exact
API requests as JSON and makes no AWS call (no credentials needed)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from cli.app import app, console, fail, needs_extra
from starrating.settings import CoreSettings

sagemaker_app = typer.Typer(
    help="SageMaker training jobs and A/B endpoints (AWS account needed unless --dry-run).",
    no_args_is_help=True,
)
app.add_typer(sagemaker_app, name="sagemaker")

_DRY_RUN = typer.Option(
    False, "--dry-run", help="Print the API requests as JSON and make no AWS call."
)
_REGION = typer.Option(
    None,
    "--region",
    help="AWS region.",
    show_default="AWS_DEFAULT_REGION or AWS_REGION",
)
_VARIANTS = typer.Option(
    ...,
    "--variant",
    help="VERSION=WEIGHT, once per model version (e.g. --variant 1.0=90 --variant 2.0=10); "
    "traffic is split in proportion to the weights.",
)


def _region(option: str | None) -> str:
    region = option or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if not region:
        raise fail("no AWS region: pass --region or set AWS_DEFAULT_REGION")
    return region


def _print_plan(plan: dict[str, Any]) -> None:
    # Plain JSON on stdout (no rich markup), so it can be piped into jq or saved.
    console.print_json(json.dumps(plan))


def _aws_failure(exc: Exception) -> typer.Exit:
    return fail(f"AWS refused the request: {exc}")


@sagemaker_app.command("train")
@needs_extra("train,sagemaker")
def train_command(
    image: str = typer.Option(
        ..., "--image", help="Training image URI (the Dockerfile's `train` target in ECR)."
    ),
    role: str = typer.Option(
        ..., "--role", envvar="SAGEMAKER_ROLE_ARN", help="IAM execution role ARN of the job."
    ),
    train: str = typer.Option(
        ...,
        "--train",
        help="s3:// prefix of the training split: several .jsonl objects (at least one per "
        "instance, to be sharded across the instances by S3 key).",
    ),
    validation: str | None = typer.Option(None, "--validation", help="s3:// validation split."),
    test: str | None = typer.Option(None, "--test", help="s3:// test split."),
    output: str = typer.Option(..., "--output", help="s3:// prefix for the model artefacts."),
    checkpoints: str = typer.Option(
        ...,
        "--checkpoints",
        help="s3:// prefix synced with /opt/ml/checkpoints; a restarted spot job resumes there.",
    ),
    instance_type: str = typer.Option("ml.g5.xlarge", help="GPU instance type."),
    instance_count: int = typer.Option(2, help="Instances (torchrun nodes)."),
    processes_per_node: int | None = typer.Option(
        None, help="Training processes per instance.", show_default="one per GPU"
    ),
    spot: bool = typer.Option(True, "--spot/--on-demand", help="Managed spot training."),
    max_run: int = typer.Option(24 * 3600, help="Longest training time, seconds."),
    max_wait: int = typer.Option(
        36 * 3600, help="Longest time including waits for spot capacity, seconds (spot only)."
    ),
    volume_gb: int = typer.Option(50, help="Storage per instance, GB."),
    shard_train: bool | None = typer.Option(
        None,
        "--shard-train/--replicate-train",
        help="Shard the training split by S3 key (each instance downloads only its own objects "
        "and its processes divide them), or copy it whole to every instance (all processes of "
        "all instances divide it). Either way every row is read once per epoch.",
        show_default="shard when the --train prefix holds at least as many .jsonl objects as "
        "instances (counted at launch; a --dry-run, which counts nothing, replicates)",
    ),
    hyperparameter: list[str] = typer.Option(
        [],
        "--hp",
        help="KEY=VALUE for training/sagemaker_entry.py (e.g. --hp epochs=3 --hp lr=5e-5), "
        "repeatable.",
    ),
    mlflow_tracking_uri: str | None = typer.Option(
        None,
        "--mlflow-tracking-uri",
        help="Remote MLflow tracking URI for the job.",
        show_default="MLFLOW_TRACKING_URI if remote",
    ),
    base_job_name: str = typer.Option("starrating", help="Prefix of the job name."),
    region: str | None = _REGION,
    dry_run: bool = _DRY_RUN,
) -> None:
    """Start a distributed (torchrun) training job on SageMaker GPU instances."""
    from botocore.exceptions import BotoCoreError, ClientError

    from starrating.aws import SageMakerConfigError
    from training.sagemaker import (
        TrainingJobSpec,
        count_train_objects,
        launch_training_job,
        plan_training_job,
        resolve_tracking_uri,
    )

    aws_region = _region(region)
    train_objects = None
    if not dry_run and shard_train is not False:
        try:
            train_objects = count_train_objects(train, aws_region)
        except (ClientError, BotoCoreError) as exc:
            raise _aws_failure(exc) from exc
    try:
        hyperparameters = dict(_key_value(pair) for pair in hyperparameter)
        spec = TrainingJobSpec(
            image_uri=image,
            role_arn=role,
            train_s3=train,
            validation_s3=validation,
            test_s3=test,
            output_s3=output,
            checkpoint_s3=checkpoints,
            instance_type=instance_type,
            instance_count=instance_count,
            processes_per_node=processes_per_node,
            spot=spot,
            max_run_s=max_run,
            max_wait_s=max_wait,
            volume_gb=volume_gb,
            shard_train=shard_train,
            train_objects=train_objects,
            hyperparameters=hyperparameters,
            mlflow_tracking_uri=resolve_tracking_uri(mlflow_tracking_uri, os.environ),
            base_job_name=base_job_name,
        )
    except SageMakerConfigError as exc:
        raise fail(str(exc)) from exc
    if dry_run:
        _print_plan(plan_training_job(spec, aws_region))
        return
    try:
        job_name = launch_training_job(spec, aws_region)
    except (ClientError, BotoCoreError) as exc:
        raise _aws_failure(exc) from exc
    channel = spec.train_distribution()
    console.print(
        f"training split: {channel['S3DataDistributionType']} ({channel['why']})",
        markup=False,
    )
    console.print(
        f"started training job [bold]{job_name}[/] on {instance_count} x {instance_type}; "
        f"follow it in the SageMaker console or with "
        f"`aws sagemaker describe-training-job --training-job-name {job_name}`"
    )


def _key_value(pair: str) -> tuple[str, str]:
    from starrating.aws import SageMakerConfigError

    key, sep, value = pair.partition("=")
    if not sep or not key.strip():
        raise SageMakerConfigError(f"expected KEY=VALUE, got {pair!r}")
    return key.strip(), value


@sagemaker_app.command("deploy")
@needs_extra("sagemaker")
def deploy_command(
    endpoint_name: str = typer.Option(..., "--endpoint-name", help="SageMaker endpoint name."),
    image: str = typer.Option(
        ..., "--image", help="Serving image URI (the Dockerfile's `serve` target in ECR)."
    ),
    role: str = typer.Option(
        ..., "--role", envvar="SAGEMAKER_ROLE_ARN", help="IAM execution role ARN of the models."
    ),
    s3_prefix: str = typer.Option(
        ..., "--s3-prefix", help="s3:// prefix the .mar archives are uploaded under."
    ),
    variant: list[str] = _VARIANTS,
    model_store: Path | None = typer.Option(
        None,
        "--model-store",
        help="Where stars-VERSION.mar are.",
        show_default="STARRATING_MODEL_STORE",
    ),
    instance_type: str = typer.Option("ml.c6i.xlarge", help="Instance type of every variant."),
    instance_count: int = typer.Option(1, help="Instances per variant."),
    update: bool = typer.Option(
        False, "--update", help="Switch an existing endpoint to the new variants."
    ),
    region: str | None = _REGION,
    dry_run: bool = _DRY_RUN,
) -> None:
    """Create a model per version, an endpoint config with one weighted variant per version,
    and the endpoint (the A/B split on SageMaker)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from serving.sagemaker import (
        EndpointSpec,
        apply_endpoint_plan,
        parse_weights,
        plan_endpoint,
        traffic_shares,
    )
    from starrating.aws import SageMakerConfigError

    aws_region = _region(region)
    try:
        weights = parse_weights(variant)
        spec = EndpointSpec(
            endpoint_name=endpoint_name,
            image_uri=image,
            role_arn=role,
            s3_prefix=s3_prefix,
            weights=weights,
            model_store=model_store if model_store is not None else CoreSettings().model_store,
            instance_type=instance_type,
            instance_count=instance_count,
            update=update,
        )
    except SageMakerConfigError as exc:
        raise fail(str(exc)) from exc
    plan = plan_endpoint(spec, created=datetime.now(UTC))
    if dry_run:
        _print_plan(plan.as_json())
        return
    import boto3

    session = boto3.Session(region_name=aws_region)
    try:
        apply_endpoint_plan(plan, session.client("sagemaker"), session.client("s3"))
    except (ClientError, BotoCoreError) as exc:
        raise _aws_failure(exc) from exc
    shares = ", ".join(f"{v}: {share:.0%}" for v, share in traffic_shares(weights).items())
    console.print(
        f"endpoint [bold]{endpoint_name}[/] is being {'updated' if update else 'created'} "
        f"({shares}); it serves once its status is InService "
        f"(`aws sagemaker describe-endpoint --endpoint-name {endpoint_name}`)"
    )


@sagemaker_app.command("update-weights")
@needs_extra("sagemaker")
def update_weights_command(
    endpoint_name: str = typer.Option(..., "--endpoint-name", help="SageMaker endpoint name."),
    variant: list[str] = _VARIANTS,
    region: str | None = _REGION,
    dry_run: bool = _DRY_RUN,
) -> None:
    """Shift traffic between the versions of a running endpoint (no redeployment)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from serving.sagemaker import (
        apply_update_weights,
        parse_weights,
        traffic_shares,
        update_weights_request,
    )
    from starrating.aws import SageMakerConfigError

    aws_region = _region(region)
    try:
        weights = parse_weights(variant)
        request = update_weights_request(endpoint_name, weights)
    except SageMakerConfigError as exc:
        raise fail(str(exc)) from exc
    if dry_run:
        operation = "UpdateEndpointWeightsAndCapacities"
        _print_plan({"uploads": [], "requests": [{"operation": operation, "params": request}]})
        return
    import boto3

    try:
        apply_update_weights(request, boto3.Session(region_name=aws_region).client("sagemaker"))
    except (ClientError, BotoCoreError) as exc:
        raise _aws_failure(exc) from exc
    shares = ", ".join(f"{v}: {share:.0%}" for v, share in traffic_shares(weights).items())
    console.print(f"endpoint [bold]{endpoint_name}[/] now splits traffic {shares}")
