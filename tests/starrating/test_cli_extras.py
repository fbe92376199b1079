"""A command whose role's libraries are not installed says which extra to install."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from starrating.cli import app


@pytest.mark.parametrize(
    ("args", "missing", "extra"),
    [
        (["evaluate", "--run", "run", "--data", "data"], "torch", "train"),
        (["stop"], "psutil", "serve"),
        (["sagemaker", "update-weights", "--endpoint-name", "e", "--variant", "1.0=1",
          "--region", "us-east-1"], "boto3", "sagemaker"),
    ],
)  # fmt: skip
def test_a_missing_extra_is_named_with_the_command_that_installs_it(
    monkeypatch: pytest.MonkeyPatch, args: list[str], missing: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` fails as if not installed
    for name in [m for m in sys.modules if m.startswith(("training.", "serving."))]:
        monkeypatch.delitem(sys.modules, name)  # so the command imports its modules afresh
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert f"pip install 'starrating[{extra}]'" in result.output
    assert f"{missing} is not installed" in result.output


def test_a_missing_module_of_the_project_itself_is_not_blamed_on_an_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "training.evaluate", None)
    result = CliRunner().invoke(app, ["evaluate", "--run", "run", "--data", "data"])
    assert result.exit_code != 0
    assert "extra" not in result.output
