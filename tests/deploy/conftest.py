"""Shared helpers of the deployment tests: the repository root and the tools they run."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def tool(name: str) -> str:
    """A command-line tool from the virtual environment (PyPI -bin packages) or the PATH."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: `pip install -e .[dev]` (or apt-get, see .ci/run)")
    return found
