"""The SageMaker training job of starrating, built with the SageMaker Python SDK v3
(``sagemaker.train.ModelTrainer``).

The job runs ``training/sagemaker_entry.py`` from the `train` image (the Dockerfile's CUDA
target) on several GPU instances under torchrun: the SDK's torchrun driver starts one process per
GPU on every instance. Data channels are S3 prefixes. The training split is sharded across
instances by S3 key (``ShardedByS3Key``: each instance downloads only its own objects, and the
entry divides them among that instance's processes) when the prefix holds at least as many
``.jsonl`` objects as there are instances, counted when the job is launched; otherwise every
instance gets the whole split (``FullyReplicated``) and the processes of all instances divide it.
With managed spot training SageMaker syncs ``/opt/ml/checkpoints`` with an S3 URI and restores
it when a job restarts after an interruption, and the entry always resumes from
there. Metric definitions are the training package's ``METRIC_DEFINITIONS``, the regexes of its
metric log lines. A remote MLflow tracking URI is passed to the job as ``MLFLOW_TRACKING_URI``.

``training_job_request`` gives the exact CreateTrainingJob request without submitting it, and
``DryRunSession`` is a SageMaker session that plans uploads instead of doing them and refuses
every AWS call, so ``starrating sagemaker train --dry-run`` needs neither AWS nor credentials.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import boto3
from sagemaker.core.helper.session_helper import Session
from sagemaker.core.training.configs import (
    CheckpointConfig,
    Compute,
    InputData,
    MetricDefinition,
    OutputDataConfig,
    S3DataSource,
    SourceCode,
    StoppingCondition,
)
from sagemaker.train import ModelTrainer
from sagemaker.train.distributed import Torchrun

import starrating
import training
from starrating.aws import (
    SageMakerConfigError,
    require_instances,
    require_role_arn,
    require_s3_uri,
)
from training.config import TrainConfig
from training.data.streaming import SPLIT_SUFFIXES
from training.metric_lines import METRIC_DEFINITIONS

logger = logging.getLogger(__name__)

ENTRY_SCRIPT = "training/sagemaker_entry.py"
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
# Inputs that the entry script takes from SageMaker's environment (SM_CHANNEL_*, SM_MODEL_DIR,
# /opt/ml/checkpoints) or that this launcher sets: not hyperparameters.
RESERVED_HYPERPARAMETERS = frozenset(
    {
        "out",
        "data",
        "train",
        "validation",
        "test",
        "checkpoint_dir",
        "resume",
        "tracking_uri",
        "train_sharded_per_node",  # from the channel's distribution (inputdataconfig.json)
    }
)
_REMOTE_TRACKING_SCHEMES = ("http://", "https://", "arn:", "databricks")


def resolve_tracking_uri(explicit: str | None, env: Mapping[str, str]) -> str | None:
    """The MLflow tracking URI for the job: ``explicit``, else a remote ``MLFLOW_TRACKING_URI``
    from ``env``. A local store (file path, sqlite) cannot be reached from SageMaker: refused
    when explicit, skipped with a warning when it only comes from the environment."""
    if explicit is not None:
        if not explicit.startswith(_REMOTE_TRACKING_SCHEMES):
            raise SageMakerConfigError(
                f"MLflow tracking URI {explicit!r} is not reachable from a SageMaker job: use an "
                "http(s):// tracking server or a SageMaker managed MLflow ARN"
            )
        return explicit
    inherited = env.get("MLFLOW_TRACKING_URI")
    if inherited and inherited.startswith(_REMOTE_TRACKING_SCHEMES):
        return inherited
    if inherited:
        logger.warning(
            "MLFLOW_TRACKING_URI=%s is local to this machine: the job tracks into its own run "
            "directory instead (pass --mlflow-tracking-uri for a remote server)",
            inherited,
        )
    return None


@dataclass(frozen=True)
class TrainingJobSpec:
    """Everything that decides what the SageMaker training job does."""

    image_uri: str
    role_arn: str
    train_s3: str
    output_s3: str
    checkpoint_s3: str
    validation_s3: str | None = None
    test_s3: str | None = None
    instance_type: str = "ml.g5.xlarge"
    instance_count: int = 2
    processes_per_node: int | None = None
    spot: bool = True
    max_run_s: int = 24 * 3600
    max_wait_s: int = 36 * 3600
    volume_gb: int = 50
    # The training channel: True = ShardedByS3Key, False = FullyReplicated, None = shard when
    # ``train_objects`` (the .jsonl objects under the prefix, counted at launch) is known to be
    # at least ``instance_count``: with fewer, an instance would get no data at all.
    shard_train: bool | None = None
    train_objects: int | None = None
    hyperparameters: Mapping[str, str] = field(default_factory=dict)
    mlflow_tracking_uri: str | None = None
    base_job_name: str = "starrating"

    def __post_init__(self) -> None:
        for uri, what in (
            (self.train_s3, "the training data"),
            (self.output_s3, "the output location"),
            (self.checkpoint_s3, "the checkpoint location"),
            (self.validation_s3, "the validation data"),
            (self.test_s3, "the test data"),
        ):
            if uri is not None:
                require_s3_uri(uri, what)
        require_role_arn(self.role_arn)
        require_instances(self.instance_type, self.instance_count)
        if self.processes_per_node is not None and self.processes_per_node < 1:
            raise SageMakerConfigError("processes per node must be >= 1 (or left to SageMaker)")
        if self.max_run_s < 1:
            raise SageMakerConfigError(f"max run must be positive, got {self.max_run_s} s")
        if self.spot and self.max_wait_s < self.max_run_s:
            raise SageMakerConfigError(
                f"with spot training max wait ({self.max_wait_s} s) must be at least max run "
                f"({self.max_run_s} s): it counts the time spent waiting for spot capacity too"
            )
        if (
            self.shard_train
            and self.train_objects is not None
            and self.train_objects < self.instance_count
        ):
            raise SageMakerConfigError(
                f"the training prefix {self.train_s3} holds {self.train_objects} .jsonl "
                f"object(s) for {self.instance_count} instances: sharded by S3 key, an instance "
                "would get none. Split the data into more files or use --replicate-train"
            )
        reserved = RESERVED_HYPERPARAMETERS & {k.replace("-", "_") for k in self.hyperparameters}
        if reserved:
            raise SageMakerConfigError(
                f"hyperparameter(s) {', '.join(sorted(reserved))} are set by the launcher "
                "(channels, model directory, checkpoints, tracking): use the matching option"
            )
        known = _train_config_fields()
        unknown = {k for k in self.hyperparameters if k.replace("-", "_") not in known}
        if unknown:
            raise SageMakerConfigError(
                f"unknown hyperparameter(s) {', '.join(sorted(unknown))}; {ENTRY_SCRIPT} takes "
                f"{', '.join(sorted(known - RESERVED_HYPERPARAMETERS))}"
            )

    @property
    def train_sharded(self) -> bool:
        """Whether the training channel is sharded by S3 key."""
        if self.shard_train is not None:
            return self.shard_train
        return self.train_objects is not None and self.train_objects >= self.instance_count

    def train_distribution(self) -> dict[str, Any]:
        """How the training channel reaches the instances, and why (for the dry-run plan)."""
        if self.shard_train is not None:
            why = (
                "chosen with --shard-train" if self.shard_train else "chosen with --replicate-train"
            )
        elif self.train_objects is None:
            why = (
                "the objects under the training prefix were not counted (a dry run makes no AWS "
                "call): a real launch shards by S3 key when there are at least as many as "
                "instances"
            )
        else:
            why = f"{self.train_objects} .jsonl object(s) for {self.instance_count} instance(s)"
        return {
            "S3DataDistributionType": "ShardedByS3Key" if self.train_sharded else "FullyReplicated",
            "why": why,
        }


def count_train_objects(s3_uri: str, region: str) -> int:
    """The ``.jsonl[.gz]`` objects under an S3 prefix (ListObjectsV2): what ShardedByS3Key
    deals out among the instances."""
    bucket, _, prefix = s3_uri.removeprefix("s3://").partition("/")
    client = boto3.Session(region_name=region).client("s3")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sum(
        1
        for page in pages
        for item in page.get("Contents", [])
        if str(item["Key"]).endswith(SPLIT_SUFFIXES)
    )


def _train_config_fields() -> set[str]:
    return {f.name for f in fields(TrainConfig)}


@contextlib.contextmanager
def staged_source() -> Iterator[Path]:
    """A temporary source directory with the two packages the job runs (``starrating`` and
    ``training``), so the job uploads neither data, model stores nor virtual environments."""
    with tempfile.TemporaryDirectory(prefix="starrating-sagemaker-") as tmp:
        root = Path(tmp)
        for package in (starrating, training):
            source = Path(package.__file__).resolve().parent  # type: ignore[arg-type]
            shutil.copytree(
                source,
                root / source.name,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            )
        yield root


def _metric_definitions() -> list[MetricDefinition]:
    return [MetricDefinition(name=d["Name"], regex=d["Regex"]) for d in METRIC_DEFINITIONS]


def _channel(name: str, uri: str, sharded: bool) -> InputData:
    return InputData(
        channel_name=name,
        data_source=S3DataSource(
            s3_data_type="S3Prefix",
            s3_uri=uri,
            s3_data_distribution_type="ShardedByS3Key" if sharded else "FullyReplicated",
        ),
    )


def build_model_trainer(spec: TrainingJobSpec, source_dir: Path, session: Session) -> ModelTrainer:
    """The ``ModelTrainer`` for ``spec``; ``source_dir`` holds ``ENTRY_SCRIPT``."""
    channels = [_channel("train", spec.train_s3, sharded=spec.train_sharded)]
    # Evaluation gathers predictions over every rank: each instance needs the whole split.
    if spec.validation_s3:
        channels.append(_channel("validation", spec.validation_s3, sharded=False))
    if spec.test_s3:
        channels.append(_channel("test", spec.test_s3, sharded=False))
    environment = {}
    if spec.mlflow_tracking_uri:
        environment["MLFLOW_TRACKING_URI"] = spec.mlflow_tracking_uri

    trainer = ModelTrainer(
        training_image=spec.image_uri,
        role=spec.role_arn,
        base_job_name=spec.base_job_name,
        sagemaker_session=session,
        source_code=SourceCode(source_dir=str(source_dir), entry_script=ENTRY_SCRIPT),
        distributed=Torchrun(process_count_per_node=spec.processes_per_node),
        compute=Compute(
            instance_type=spec.instance_type,
            instance_count=spec.instance_count,
            volume_size_in_gb=spec.volume_gb,
            enable_managed_spot_training=spec.spot,
        ),
        stopping_condition=StoppingCondition(
            max_runtime_in_seconds=spec.max_run_s,
            max_wait_time_in_seconds=spec.max_wait_s if spec.spot else None,
        ),
        output_data_config=OutputDataConfig(s3_output_path=spec.output_s3, compression_type="GZIP"),
        checkpoint_config=CheckpointConfig(
            s3_uri=spec.checkpoint_s3, local_path=CHECKPOINT_LOCAL_PATH
        ),
        input_data_config=channels,
        environment=environment,
        hyperparameters=dict(spec.hyperparameters),
    )
    return trainer.with_metric_definitions(_metric_definitions())


def training_job_request(trainer: ModelTrainer) -> dict[str, Any]:
    """The CreateTrainingJob request that ``trainer.train()`` would send (API field names).

    The SDK has no public accessor: ``train(dry_run=True)`` validates but returns nothing, so
    this calls the method ``train()`` itself builds its request with. Local source code is
    uploaded through the trainer's session while the request is built.
    """
    request: dict[str, Any] = trainer._create_training_job_args(boto3=True)
    return request


def submit(trainer: ModelTrainer) -> str:
    """Start the job without waiting for it; its name."""
    trainer.train(wait=False, logs=False)
    job = trainer._latest_training_job
    if job is None:  # pragma: no cover - train() raises instead
        raise RuntimeError("SageMaker accepted no training job")
    return str(job.training_job_name)


def _bucket_of(uri: str) -> str:
    return uri.removeprefix("s3://").split("/", 1)[0]


class DryRunRefused(RuntimeError):
    """An AWS call attempted during a dry run."""


def _refuse_aws_call(event_name: str, **_: Any) -> None:
    raise DryRunRefused(f"dry run: no AWS call is made ({event_name})")


def _json_files(directory: Path) -> dict[str, Any]:
    return {
        p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.json"))
    }


class DryRunSession(Session):  # type: ignore[misc]
    """A SageMaker session for dry runs: ``default_bucket()`` is ``bucket``, ``upload_data``
    records what it would upload (``planned_uploads``) and returns the S3 URI the real upload
    would give, and any AWS API call raises ``DryRunRefused`` before it is sent."""

    def __init__(self, region: str, bucket: str) -> None:
        boto_session = boto3.Session(region_name=region)
        boto_session.events.register("before-call", _refuse_aws_call)
        self.planned_uploads: list[dict[str, Any]] = []
        self._dry_run_bucket = bucket
        super().__init__(boto_session=boto_session, default_bucket=bucket)

    def default_bucket(self) -> str:
        return self._dry_run_bucket

    def upload_data(
        self,
        path: str,
        bucket: str | None = None,
        key_prefix: str = "data",
        callback: Any = None,
        extra_args: Any = None,
    ) -> str:
        source = Path(path)
        uri = f"s3://{bucket or self._dry_run_bucket}/{key_prefix}"
        planned: dict[str, Any] = {"source": str(source)}
        if source.is_dir():
            planned["files"] = sum(1 for p in source.rglob("*") if p.is_file())
            # The SDK's driver settings (distributed.json: the torchrun runner and processes
            # per node; sourcecode.json: the entry script) decide how the job runs.
            planned["json"] = _json_files(source)
        else:
            uri = f"{uri}/{source.name}"
        planned["s3_uri"] = uri
        self.planned_uploads.append(planned)
        return uri


@contextlib.contextmanager
def role_validation_skipped() -> Iterator[None]:
    """Skip the SDK's IAM role check (read-only IAM calls) while a dry run builds its job."""
    previous = os.environ.get("SAGEMAKER_VALIDATE_ROLE")
    os.environ["SAGEMAKER_VALIDATE_ROLE"] = "false"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["SAGEMAKER_VALIDATE_ROLE"]
        else:
            os.environ["SAGEMAKER_VALIDATE_ROLE"] = previous


def plan_training_job(spec: TrainingJobSpec, region: str) -> dict[str, Any]:
    """What ``starrating sagemaker train`` would do, without AWS: the planned uploads and the
    CreateTrainingJob request."""
    session = DryRunSession(region, _bucket_of(spec.output_s3))
    with staged_source() as source_dir, role_validation_skipped():
        trainer = build_model_trainer(spec, source_dir, session)
        request = training_job_request(trainer)
    return {
        "uploads": session.planned_uploads,
        "train_channel": spec.train_distribution(),
        "requests": [{"operation": "CreateTrainingJob", "params": request}],
    }


def launch_training_job(spec: TrainingJobSpec, region: str) -> str:
    """Upload the code and start the job on SageMaker; the job's name."""
    session = Session(
        boto_session=boto3.Session(region_name=region), default_bucket=_bucket_of(spec.output_s3)
    )
    with staged_source() as source_dir:
        trainer = build_model_trainer(spec, source_dir, session)
        return submit(trainer)
