"""The A/B split on SageMaker hosting: one SageMaker Model per ``.mar`` version, one endpoint
config with a production variant per version and its initial weight, and traffic shifts with
UpdateEndpointWeightsAndCapacities.

Every model runs the `serve` image (the Dockerfile's TorchServe target, pushed to ECR), which
SageMaker starts as ``docker run IMAGE serve``: TorchServe loads the one ``stars-<V>.mar`` that
SageMaker copies from S3 into /opt/ml/model (uncompressed model data, so no model.tar.gz) and
answers /ping and /invocations on port 8080.

``plan_endpoint`` and ``update_weights_request`` build the exact API requests (boto3 names) and
do nothing else; ``apply_endpoint_plan`` and ``apply_update_weights`` send them with a boto3
client, so a dry run prints precisely what a real run sends. ``apply_decision`` drives an
endpoint's weights from the A/B autopilot's decisions (the same policy as the gateway's split).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from starrating.aws import (
    SageMakerConfigError,
    require_instances,
    require_role_arn,
    require_s3_uri,
)
from starrating.service import MODEL_NAME, VERSION_RULE, archive_file_name, is_version

logger = logging.getLogger(__name__)

_NAME_LIMIT = 63  # SageMaker model, variant, config and endpoint names: [a-zA-Z0-9](-*[a-zA-Z0-9])*
_VALID_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")


def variant_name(version: str) -> str:
    """The production variant of a model version: ``stars-1-0`` for version ``1.0``."""
    if not is_version(version):
        raise SageMakerConfigError(f"not a model version: {version!r} ({VERSION_RULE})")
    return f"{MODEL_NAME}-{re.sub(r'[^A-Za-z0-9]+', '-', version).strip('-')}"


def _checked_name(name: str, what: str) -> str:
    if len(name) > _NAME_LIMIT or not _VALID_NAME.match(name):
        raise SageMakerConfigError(
            f"{what} {name!r} is not a valid SageMaker name: up to {_NAME_LIMIT} letters, digits "
            "and hyphens, starting and ending with a letter or digit"
        )
    return name


def checked_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """``{version: weight}`` with every weight >= 0 and at least one > 0 (SageMaker splits
    traffic in proportion to the weights)."""
    if not weights:
        raise SageMakerConfigError("give at least one version and its weight (e.g. 1.0=90)")
    for version, weight in weights.items():
        variant_name(version)
        if not (math.isfinite(weight) and weight >= 0):
            raise SageMakerConfigError(f"weight of version {version} must be >= 0, got {weight}")
    if sum(weights.values()) <= 0:
        raise SageMakerConfigError("at least one weight must be above 0: no variant gets traffic")
    return dict(weights)


def traffic_shares(weights: Mapping[str, float]) -> dict[str, float]:
    """The share of requests each version receives."""
    total = sum(weights.values())
    return {version: weight / total for version, weight in weights.items()}


@dataclass(frozen=True)
class EndpointSpec:
    """An endpoint that serves several versions of ``stars`` side by side."""

    endpoint_name: str
    image_uri: str
    role_arn: str
    s3_prefix: str
    weights: Mapping[str, float]
    model_store: Path
    instance_type: str = "ml.c6i.xlarge"
    instance_count: int = 1
    update: bool = False

    def __post_init__(self) -> None:
        _checked_name(self.endpoint_name, "endpoint name")
        checked_weights(self.weights)
        require_s3_uri(self.s3_prefix, "the S3 prefix for model data")
        require_role_arn(self.role_arn)
        require_instances(self.instance_type, self.instance_count)
        missing = [str(self.archive(v)) for v in self.weights if not self.archive(v).is_file()]
        if missing:
            raise SageMakerConfigError(
                f"no archive {', '.join(missing)}: build it with "
                "`starrating archive --run RUN --version V`"
            )

    def archive(self, version: str) -> Path:
        return self.model_store / archive_file_name(version)


@dataclass(frozen=True)
class Upload:
    """A local file and the S3 object it becomes."""

    source: Path
    bucket: str
    key: str

    @property
    def s3_uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class EndpointPlan:
    """Uploads, then CreateModel per version, CreateEndpointConfig, Create/UpdateEndpoint."""

    uploads: list[Upload]
    create_models: list[dict[str, Any]]
    create_endpoint_config: dict[str, Any]
    endpoint_operation: str  # "CreateEndpoint" or "UpdateEndpoint"
    endpoint_request: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        """The plan as the dry run prints it: uploads and the API requests in order."""
        requests = [{"operation": "CreateModel", "params": p} for p in self.create_models]
        requests.append(
            {"operation": "CreateEndpointConfig", "params": self.create_endpoint_config}
        )
        requests.append({"operation": self.endpoint_operation, "params": self.endpoint_request})
        return {
            "uploads": [{"source": str(u.source), "s3_uri": u.s3_uri} for u in self.uploads],
            "requests": requests,
        }


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key.strip("/")


def plan_endpoint(spec: EndpointSpec, created: datetime) -> EndpointPlan:
    """The uploads and requests that put ``spec`` in service; names carry ``created`` so a new
    deployment never collides with the models and config of the one it replaces."""
    stamp = created.strftime("%Y%m%d-%H%M%S")
    bucket, prefix = _split_s3(spec.s3_prefix)
    tags = [{"Key": "starrating:endpoint", "Value": spec.endpoint_name}]
    uploads: list[Upload] = []
    models: list[dict[str, Any]] = []
    variants: list[dict[str, Any]] = []
    for version, weight in spec.weights.items():
        variant = variant_name(version)
        archive = spec.archive(version)
        # One folder per version: SageMaker copies the folder's objects into /opt/ml/model.
        folder = "/".join(p for p in (prefix, spec.endpoint_name, variant) if p)
        uploads.append(Upload(archive, bucket, f"{folder}/{archive.name}"))
        model_name = _checked_name(f"{spec.endpoint_name}-{variant}-{stamp}", "model name")
        models.append(
            {
                "ModelName": model_name,
                "ExecutionRoleArn": spec.role_arn,
                "PrimaryContainer": {
                    "Image": spec.image_uri,
                    "Mode": "SingleModel",
                    "ModelDataSource": {
                        "S3DataSource": {
                            "S3Uri": f"s3://{bucket}/{folder}/",
                            "S3DataType": "S3Prefix",
                            "CompressionType": "None",
                        }
                    },
                },
                "Tags": [*tags, {"Key": "starrating:version", "Value": version}],
            }
        )
        variants.append(
            {
                "VariantName": variant,
                "ModelName": model_name,
                "InstanceType": spec.instance_type,
                "InitialInstanceCount": spec.instance_count,
                "InitialVariantWeight": float(weight),
            }
        )
    config_name = _checked_name(f"{spec.endpoint_name}-{stamp}", "endpoint config name")
    return EndpointPlan(
        uploads=uploads,
        create_models=models,
        create_endpoint_config={
            "EndpointConfigName": config_name,
            "ProductionVariants": variants,
            "Tags": tags,
        },
        endpoint_operation="UpdateEndpoint" if spec.update else "CreateEndpoint",
        endpoint_request={"EndpointName": spec.endpoint_name, "EndpointConfigName": config_name}
        | ({} if spec.update else {"Tags": tags}),
    )


def apply_endpoint_plan(plan: EndpointPlan, sagemaker_client: Any, s3_client: Any) -> None:
    """Upload the archives, then send the requests in order (boto3 clients)."""
    for upload in plan.uploads:
        logger.info("uploading %s to %s", upload.source, upload.s3_uri)
        with upload.source.open("rb") as body:
            s3_client.put_object(Bucket=upload.bucket, Key=upload.key, Body=body)
    for request in plan.create_models:
        logger.info("creating model %s", request["ModelName"])
        sagemaker_client.create_model(**request)
    logger.info("creating endpoint config %s", plan.create_endpoint_config["EndpointConfigName"])
    sagemaker_client.create_endpoint_config(**plan.create_endpoint_config)
    if plan.endpoint_operation == "UpdateEndpoint":
        sagemaker_client.update_endpoint(**plan.endpoint_request)
    else:
        sagemaker_client.create_endpoint(**plan.endpoint_request)
    logger.info("%s %s sent", plan.endpoint_operation, plan.endpoint_request["EndpointName"])


def update_weights_request(endpoint_name: str, weights: Mapping[str, float]) -> dict[str, Any]:
    """The UpdateEndpointWeightsAndCapacities request that sets each version's weight."""
    _checked_name(endpoint_name, "endpoint name")
    return {
        "EndpointName": endpoint_name,
        "DesiredWeightsAndCapacities": [
            {"VariantName": variant_name(version), "DesiredWeight": float(weight)}
            for version, weight in checked_weights(weights).items()
        ],
    }


def apply_update_weights(request: Mapping[str, Any], sagemaker_client: Any) -> None:
    sagemaker_client.update_endpoint_weights_and_capacities(**request)


class WeightDecision(Protocol):
    """What the A/B autopilot decided (``abtesting.policy.Decision`` is one): the candidate's new
    share of traffic (0 for a rollback, 1 for a promotion)."""

    @property
    def action(self) -> str: ...

    @property
    def weight_after(self) -> float: ...


def decision_weights_request(
    endpoint_name: str, decision: WeightDecision, control_version: str, candidate_version: str
) -> dict[str, Any]:
    """The UpdateEndpointWeightsAndCapacities request that applies an autopilot decision to an
    endpoint whose variants are ``variant_name(control_version)`` and
    ``variant_name(candidate_version)``: the candidate at ``weight_after``, the control the rest
    (so a rollback sends everything to the control and a promotion everything to the
    candidate)."""
    if not 0.0 <= decision.weight_after <= 1.0:
        raise SageMakerConfigError(
            f"a decision's weight must be in [0, 1], got {decision.weight_after}"
        )
    if control_version == candidate_version:
        raise SageMakerConfigError(f"control and candidate are both version {control_version}")
    weights = {
        control_version: 1.0 - decision.weight_after,
        candidate_version: decision.weight_after,
    }
    return update_weights_request(endpoint_name, weights)


def apply_decision(
    decision: WeightDecision,
    endpoint_name: str,
    control_version: str,
    candidate_version: str,
    sagemaker_client: Any,
) -> dict[str, Any]:
    """Send the decision's weights to the endpoint (boto3's ``sagemaker`` client); the request
    sent. SageMaker shifts traffic without redeploying either variant."""
    request = decision_weights_request(endpoint_name, decision, control_version, candidate_version)
    apply_update_weights(request, sagemaker_client)
    logger.info(
        "autopilot %s applied to SageMaker endpoint %s: %s",
        decision.action,
        endpoint_name,
        request["DesiredWeightsAndCapacities"],
    )
    return request


def parse_weights(pairs: Sequence[str]) -> dict[str, float]:
    """``["1.0=90", "2.0=10"]`` to ``{"1.0": 90.0, "2.0": 10.0}``, refusing repeats."""
    weights: dict[str, float] = {}
    for pair in pairs:
        version, sep, value = pair.partition("=")
        if not sep or not version.strip():
            raise SageMakerConfigError(f"expected VERSION=WEIGHT (e.g. 1.0=90), got {pair!r}")
        version = version.strip()
        if version in weights:
            raise SageMakerConfigError(f"version {version} given twice")
        try:
            weights[version] = float(value)
        except ValueError as exc:
            raise SageMakerConfigError(
                f"weight of version {version} is not a number: {value!r}"
            ) from exc
    return checked_weights(weights)
