"""SageMaker script mode: `python training/train.py` with SageMaker's environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from starrating.artifacts import load_artifacts

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_train_py_reads_channels_and_writes_the_model_dir(
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
        str(REPO / "training" / "train.py"),
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
