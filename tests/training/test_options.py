"""Both training command lines offer every TrainConfig field, with the field's flag, default and
help: `starrating train` and `python -m training` / SageMaker's sagemaker_entry.py (both
transformers.HfArgumentParser over TrainConfig)."""

from __future__ import annotations

import argparse
import re
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from typer.testing import CliRunner

from cli import app
from cli.training import train_parser
from training.config import TrainConfig, build_parser, option_name, parse_args

runner = CliRunner()
FIELDS = fields(TrainConfig)


def _default(f: Field[Any]) -> Any:
    return None if f.default is MISSING else f.default


def _assert_option_for(parser: argparse.ArgumentParser, f: Field[Any], command: str) -> None:
    flag = option_name(f.name)
    action = next((a for a in parser._actions if flag in a.option_strings), None)
    assert action is not None, f"`{command}` has no option for TrainConfig.{f.name}"
    assert action.dest == f.name
    assert action.help == f.metadata["help"]
    assert action.required == (f.default is MISSING)
    assert action.default == _default(f)


@pytest.mark.parametrize("f", FIELDS, ids=[f.name for f in FIELDS])
def test_starrating_train_has_an_option_for_every_field(f: Field[Any]) -> None:
    _assert_option_for(train_parser(), f, "starrating train")


@pytest.mark.parametrize("f", FIELDS, ids=[f.name for f in FIELDS])
def test_python_m_training_has_an_option_for_every_field(f: Field[Any]) -> None:
    _assert_option_for(build_parser(), f, "python -m training")


def test_train_help_explains_every_option() -> None:
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    # One entry per option (after the usage): its flags, then its help.
    entries = [" ".join(e.split()) for e in re.split(r"\n(?=  -)", result.output)[1:]]
    for f in FIELDS:
        entry = next((e for e in entries if e.startswith(f"{option_name(f.name)} ")), None)
        assert entry is not None, f"--help does not list {option_name(f.name)}"
        assert f.metadata["help"] in entry
    assert any(e.startswith("--no-progress") for e in entries)


def _config_from_starrating_train(args: list[str]) -> TrainConfig:
    launched: list[TrainConfig] = []

    def launch(config: TrainConfig, nproc_per_node: int) -> int:
        launched.append(config)
        return 0

    with (
        mock.patch("cli.training._launch", launch),
        mock.patch("cli.training.print_run_summary"),
    ):
        result = runner.invoke(app, ["train", *args])
    assert result.exit_code == 0, result.output
    (config,) = launched
    return config


def test_both_command_lines_build_the_same_config(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text("")
    (tmp_path / "validation.jsonl").write_text("")
    common = ["--out", str(tmp_path / "run"), "--data", str(tmp_path)]
    # Nothing else given: every field has its dataclass default.
    defaults = TrainConfig(out=tmp_path / "run", data=tmp_path)
    assert _config_from_starrating_train(common) == defaults == parse_args(common)
    given = [
        *["--max-steps", "12", "--lr", "1e-3", "--precision", "bf16"],
        *["--checkpoint-dir", str(tmp_path / "ckpt"), "--tracking-uri", "sqlite:///x.db"],
    ]
    from_typer = _config_from_starrating_train(
        [*common, *given, "--resume", "--early-stop", "--no-progress"]
    )
    from_argparse = parse_args([*common, *given, "--resume", "--early-stop", "--progress", "false"])
    assert from_typer == from_argparse
    assert (from_typer.max_steps, from_typer.resume, from_typer.progress) == (12, True, False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "3", "--nproc-per-node", "2"], "must divide evenly among 2 processes"),
        (["--nproc-per-node", "0"], "--nproc-per-node must be at least 1"),
        (["--epochs", "0"], "--epochs must be positive"),
        (["--bogus", "1"], "unrecognized arguments: --bogus 1"),
    ],
)
def test_starrating_train_refuses_a_bad_command_line_before_launching(
    tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "train.jsonl").write_text("")
    (tmp_path / "validation.jsonl").write_text("")
    with mock.patch("cli.training._launch") as launch:
        result = runner.invoke(
            app, ["train", "--out", str(tmp_path / "run"), "--data", str(tmp_path), *args]
        )
    assert result.exit_code == 2 and message in result.output
    launch.assert_not_called()
