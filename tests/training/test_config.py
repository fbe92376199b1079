"""The training configuration as users and SageMaker give it: flags, hyperparameters, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import TrainConfig, parse_args
from training.sagemaker_entry import sagemaker_arguments


def test_arguments_round_trip_through_the_command_line(tmp_path: Path) -> None:
    config = TrainConfig(
        out=tmp_path / "run",
        data=tmp_path,
        train=tmp_path / "train.jsonl",
        epochs=2,
        max_steps=7,
        lr=3e-5,
        precision="bf16",
        resume=True,
        early_stop=True,
    )
    (tmp_path / "train.jsonl").write_text("")
    (tmp_path / "validation.jsonl").write_text("")
    assert parse_args(config.to_args()) == config


def test_sagemaker_style_hyperparameters_are_understood(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text("")
    (tmp_path / "validation.jsonl").write_text("")
    config = parse_args(
        [
            "--out",
            str(tmp_path / "m"),
            "--data",
            str(tmp_path),
            "--max_steps",
            "12",
            "--early_stop",
            "True",
            "--resume",
            "false",
            "--tracking_uri",
            "None",
        ]
    )
    assert (config.max_steps, config.early_stop, config.resume) == (12, True, False)
    assert config.tracking_uri is None


def test_missing_training_split_says_how_to_make_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--out", str(tmp_path / "run"), "--data", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "starrating data prepare" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--epochs", "0", "--epochs must be positive"),
        ("--warmup-ratio", "1.5", "--warmup-ratio must be in [0, 1)"),
        ("--precision", "fp8", "invalid choice"),
    ],
)
def test_bad_values_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str
) -> None:
    (tmp_path / "train.jsonl").write_text("")
    (tmp_path / "validation.jsonl").write_text("")
    with pytest.raises(SystemExit):
        parse_args(["--out", str(tmp_path / "run"), "--data", str(tmp_path), flag, value])
    assert message in capsys.readouterr().err


def test_sagemaker_environment_fills_in_locations_and_resume(tmp_path: Path) -> None:
    env = {
        "SM_MODEL_DIR": "/opt/ml/model",
        "SM_CHANNEL_TRAIN": "/opt/ml/input/data/train",
        "SM_CHANNEL_VALIDATION": "/opt/ml/input/data/validation",
    }
    args = sagemaker_arguments(["--epochs", "2", "--out", str(tmp_path)], env)
    assert args[:4] == ["--epochs", "2", "--out", str(tmp_path)]  # explicit wins
    pairs = dict(zip(args[4::2], args[5::2], strict=True))
    assert pairs == {
        "--train": "/opt/ml/input/data/train",
        "--validation": "/opt/ml/input/data/validation",
        "--checkpoint-dir": "/opt/ml/checkpoints",
        "--resume": "true",
        "--progress": "false",
    }
