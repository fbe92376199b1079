"""Checks of AWS settings shared by the SageMaker training launcher (``training.sagemaker``) and
the SageMaker hosting deployer (``serving.sagemaker``): plain string checks, no AWS SDK, so a
bad setting fails at once with what to change, before any call to AWS.
"""

from __future__ import annotations


class SageMakerConfigError(ValueError):
    """A SageMaker job or endpoint setting that cannot work, with what to change."""


def require_s3_uri(uri: str, what: str) -> str:
    if not uri.startswith("s3://") or len(uri) <= len("s3://"):
        raise SageMakerConfigError(f"{what} must be an s3:// URI, got {uri!r}")
    return uri


def require_role_arn(role_arn: str) -> str:
    if not role_arn.startswith("arn:") or ":iam::" not in role_arn:
        raise SageMakerConfigError(
            f"the role must be an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME), got {role_arn!r}"
        )
    return role_arn


def require_instances(instance_type: str, instance_count: int) -> None:
    if not instance_type.startswith("ml."):
        raise SageMakerConfigError(
            f"SageMaker instance types start with 'ml.' (e.g. ml.g5.xlarge), got {instance_type!r}"
        )
    if instance_count < 1:
        raise SageMakerConfigError(f"instance count must be >= 1, got {instance_count}")
