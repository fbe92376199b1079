"""SageMaker script-mode entry point: ``python training/sagemaker_entry.py --epochs 3 ...`` inside
a training job (the ``entry_script`` that ``training.sagemaker`` gives the job).

SageMaker passes hyperparameters as arguments (the names of ``python -m training``, with dashes
or underscores) and locations in the environment: ``SM_CHANNEL_TRAIN``,
``SM_CHANNEL_VALIDATION``, ``SM_CHANNEL_TEST`` (input channels), ``SM_MODEL_DIR`` (uploaded as
the model artefact when the job ends). Checkpoints go to ``/opt/ml/checkpoints``, which SageMaker
syncs with S3 and restores on a restarted (spot) job, so the job always resumes from there.
When the training channel is sharded by S3 key (``S3DistributionType`` ``ShardedByS3Key`` in
``/opt/ml/input/config/inputdataconfig.json``), each instance holds only its own objects and
the job trains with ``--train-sharded-per-node``.
For multi-GPU jobs SageMaker launches this file with torchrun. Metrics are logged as lines
that ``METRIC_DEFINITIONS`` (``{"Name", "Regex"}`` for the job's ``metric_definitions``) read.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file (SageMaker runs `python training/sagemaker_entry.py` from the source
    # directory).
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.metric_lines import METRIC_DEFINITIONS

SAGEMAKER_CHECKPOINTS = Path("/opt/ml/checkpoints")
# Each channel's settings, as SageMaker writes them for the job (also in $SM_INPUT_DATA_CONFIG).
SAGEMAKER_INPUT_DATA_CONFIG = Path("/opt/ml/input/config/inputdataconfig.json")
_CHANNELS = {
    "train": "SM_CHANNEL_TRAIN",
    "validation": "SM_CHANNEL_VALIDATION",
    "test": "SM_CHANNEL_TEST",
}


def train_channel_sharded(env: Mapping[str, str], input_data_config: Path) -> bool:
    """Whether SageMaker gave each instance only its own objects of the training channel."""
    text = env.get("SM_INPUT_DATA_CONFIG")
    if text is None and input_data_config.is_file():
        text = input_data_config.read_text(encoding="utf-8")
    channels = json.loads(text) if text else {}
    train = channels.get("train") or {}
    return bool(train.get("S3DistributionType") == "ShardedByS3Key")


def sagemaker_arguments(
    argv: Sequence[str],
    env: Mapping[str, str],
    input_data_config: Path = SAGEMAKER_INPUT_DATA_CONFIG,
) -> list[str]:
    """``argv`` with the run directory, channels, checkpoint location and how the training
    channel was distributed, from the environment (an argument given explicitly wins)."""
    given = {a.split("=", 1)[0].replace("_", "-") for a in argv if a.startswith("--")}
    args = list(argv)
    if "--out" not in given:
        args += ["--out", env.get("SM_MODEL_DIR", "/opt/ml/model")]
    for split, variable in _CHANNELS.items():
        if f"--{split}" not in given and variable in env:
            args += [f"--{split}", env[variable]]
    if "--checkpoint-dir" not in given and (
        "SM_MODEL_DIR" in env or SAGEMAKER_CHECKPOINTS.is_dir()
    ):
        args += ["--checkpoint-dir", str(SAGEMAKER_CHECKPOINTS)]
    if "--train-sharded-per-node" not in given and train_channel_sharded(env, input_data_config):
        args += ["--train-sharded-per-node", "true"]
    if "--resume" not in given:
        args += ["--resume", "true"]
    if "--progress" not in given:
        args += ["--progress", "false"]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from training.config import parse_args
    from training.run import configure_logging, run_training

    configure_logging()
    arguments = sagemaker_arguments(sys.argv[1:] if argv is None else argv, os.environ)
    return run_training(parse_args(arguments, prog="sagemaker_entry.py"))


__all__ = ["METRIC_DEFINITIONS", "main", "sagemaker_arguments", "train_channel_sharded"]

if __name__ == "__main__":
    sys.exit(main())
