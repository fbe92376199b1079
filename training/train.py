"""SageMaker script-mode entry point: ``python train.py --epochs 3 ...`` inside a training job.

SageMaker passes hyperparameters as arguments (the names of ``python -m training``, with dashes
or underscores) and locations in the environment: ``SM_CHANNEL_TRAIN``,
``SM_CHANNEL_VALIDATION``, ``SM_CHANNEL_TEST`` (input channels), ``SM_MODEL_DIR`` (uploaded as
the model artefact when the job ends). Checkpoints go to ``/opt/ml/checkpoints``, which SageMaker
syncs with S3 and restores on a restarted (spot) job, so the job always resumes from there.
For multi-GPU jobs SageMaker launches this file with torchrun. Metrics are logged as lines
that ``METRIC_DEFINITIONS`` (``{"Name", "Regex"}`` for the job's ``metric_definitions``) read.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file (SageMaker runs `python train.py` from the source directory).
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.metric_lines import METRIC_DEFINITIONS

SAGEMAKER_CHECKPOINTS = Path("/opt/ml/checkpoints")
_CHANNELS = {
    "train": "SM_CHANNEL_TRAIN",
    "validation": "SM_CHANNEL_VALIDATION",
    "test": "SM_CHANNEL_TEST",
}


def sagemaker_arguments(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """``argv`` with the run directory, channels and checkpoint location from the environment
    (an argument given explicitly wins)."""
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
    return run_training(parse_args(arguments, prog="train.py"))


__all__ = ["METRIC_DEFINITIONS", "main", "sagemaker_arguments"]

if __name__ == "__main__":
    sys.exit(main())
