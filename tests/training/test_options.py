"""Both training command lines offer every TrainConfig field, with the field's flag, default and
help: `starrating train` (typer) and `python -m training` / SageMaker's train.py (argparse)."""

from __future__ import annotations

from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import typer
from typer.core import TyperGroup, TyperOption
from typer.testing import CliRunner

from cli import app
from training.config import TrainConfig, build_parser, option_name, parse_args

runner = CliRunner()
FIELDS = fields(TrainConfig)


def _train_command_options() -> dict[str, TyperOption]:
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    command = group.commands["train"]
    return {p.name: p for p in command.params if isinstance(p, TyperOption) and p.name}


def _default(f: Field[Any]) -> Any:
    return None if f.default is MISSING else f.default


@pytest.mark.parametrize("f", FIELDS, ids=[f.name for f in FIELDS])
def test_starrating_train_has_an_option_for_every_field(f: Field[Any]) -> None:
    option = _train_command_options().get(f.name)
    assert option is not None, f"`starrating train` has no option for TrainConfig.{f.name}"
    assert option.opts == [option_name(f.name)]
    assert option.help == f.metadata["help"]
    assert option.required == (f.default is MISSING)
    assert option.default == _default(f)


@pytest.mark.parametrize("f", FIELDS, ids=[f.name for f in FIELDS])
def test_python_m_training_has_an_option_for_every_field(f: Field[Any]) -> None:
    actions = {a.dest: a for a in build_parser()._actions}
    action = actions.get(f.name)
    assert action is not None, f"`python -m training` has no option for TrainConfig.{f.name}"
    assert option_name(f.name) in action.option_strings
    assert action.help == f.metadata["help"]
    assert action.required == (f.default is MISSING)
    assert action.default == _default(f)


def test_train_help_explains_every_option() -> None:
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for f in FIELDS:
        line = next((s for s in lines if f" {option_name(f.name)} " in s), None)
        assert line is not None, f"--help does not list {option_name(f.name)}"
        assert f.metadata["help"] in line
    assert any("--no-progress" in s for s in lines)


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
