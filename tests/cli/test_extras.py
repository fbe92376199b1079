"""A command whose role's libraries are not installed says which extra to install."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# A fresh interpreter in which ``missing`` cannot be imported, as if its extra were not installed.
RUN_WITHOUT = """
import sys
sys.modules[sys.argv[1]] = None
from cli import app
app(sys.argv[2:], prog_name="starrating")
"""


def run_without(missing: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT, missing, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=120,
    )


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
    args: list[str], missing: str, extra: str
) -> None:
    result = run_without(missing, *args)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert f"pip install 'starrating[{extra}]'" in output
    assert f"{missing} is not installed" in output


def test_a_missing_module_of_the_project_itself_is_not_blamed_on_an_extra() -> None:
    result = run_without("training.evaluate", "evaluate", "--run", "run", "--data", "data")
    assert result.returncode != 0
    assert "extra" not in result.stdout + result.stderr
