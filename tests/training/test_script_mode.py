"""SageMaker script mode: `python training/sagemaker_entry.py` with SageMaker's environment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from starrating.artifacts import load_artifacts
from training.sagemaker_entry import sagemaker_arguments

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_the_entry_reads_channels_and_writes_the_model_dir(
    tmp_path: Path, tiny_model_dir: Path, tiny_data_dir: Path
) -> None:
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", SM_MODEL_DIR=str(tmp_path / "model"))
    for split in ("train", "validation", "test"):  # one directory per channel, as SageMaker has
        channel = tmp_path / "input" / split
        channel.mkdir(parents=True)
        shutil.copy(tiny_data_dir / f"{split}.jsonl", channel / f"{split}.jsonl")
        env[f"SM_CHANNEL_{split.upper()}"] = str(channel)
    command = [
        sys.executable,
        str(REPO / "training" / "sagemaker_entry.py"),
        "--model",
        str(tiny_model_dir),
        "--max_steps",
        "6",
        "--batch_size",
        "16",
        "--log_every",
        "2",
        "--num_workers",
        "0",
        "--checkpoint_every",
        "3",
        "--checkpoint-dir",
        str(tmp_path / "checkpoints"),
    ]
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train_loss=" in result.stderr and "test_accuracy=" in result.stderr
    assert load_artifacts(tmp_path / "model" / "model").model.config.num_labels == 5
    assert (tmp_path / "model" / "metrics.json").is_file()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "checkpoint-000000003.pt",
        "checkpoint-000000006.pt",
    ]
    # A job restarted after its last checkpoint (say, during the final evaluation) resumes
    # there and ends with the same model instead of training on.
    weights = load_file(tmp_path / "model" / "model" / "model.safetensors")
    again = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stderr and "step 6" in again.stderr
    assert "train_loss=" not in again.stderr
    rerun = load_file(tmp_path / "model" / "model" / "model.safetensors")
    assert all(torch.equal(rerun[name], tensor) for name, tensor in weights.items())


def _input_data_config(tmp_path: Path, train_distribution: str) -> Path:
    """/opt/ml/input/config/inputdataconfig.json as SageMaker writes it for the job."""
    path = tmp_path / "inputdataconfig.json"
    channel = {"TrainingInputMode": "File", "RecordWrapperType": "None"}
    path.write_text(
        json.dumps(
            {
                "train": channel | {"S3DistributionType": train_distribution},
                "validation": channel | {"S3DistributionType": "FullyReplicated"},
            }
        )
    )
    return path


@pytest.mark.parametrize(
    ("distribution", "sharded"), [("ShardedByS3Key", True), ("FullyReplicated", False)]
)
def test_a_train_channel_sharded_by_key_trains_sharded_per_node(
    tmp_path: Path, distribution: str, sharded: bool
) -> None:
    config_file = _input_data_config(tmp_path, distribution)
    env = {"SM_MODEL_DIR": str(tmp_path / "model"), "SM_CHANNEL_TRAIN": str(tmp_path)}
    args = sagemaker_arguments(["--epochs", "1"], env, config_file)
    assert (["--train-sharded-per-node", "true"] in _pairs(args)) is sharded
    # SageMaker's environment carries the same JSON; an explicit argument wins over both.
    from_env = sagemaker_arguments([], env | {"SM_INPUT_DATA_CONFIG": config_file.read_text()})
    assert ("--train-sharded-per-node" in from_env) is sharded
    explicit = sagemaker_arguments(["--train_sharded_per_node", "false"], env, config_file)
    assert (
        explicit.count("--train-sharded-per-node") + explicit.count("--train_sharded_per_node") == 1
    )


def test_without_an_input_data_config_the_split_is_taken_as_whole(tmp_path: Path) -> None:
    args = sagemaker_arguments([], {}, tmp_path / "missing.json")
    assert "--train-sharded-per-node" not in args


def _pairs(args: list[str]) -> list[list[str]]:
    return [args[i : i + 2] for i in range(len(args) - 1)]
