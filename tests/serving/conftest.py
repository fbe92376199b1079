"""Fixtures that start a real TorchServe once per test module (see tests/serving/helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serving.helpers import RunningTorchServe, build_tiny_archives, running_torchserve

# Two versions of the tiny model with different weights.
VERSION_SEEDS = {"1.0": 0, "2.0": 1}


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """A model store with stars-1.0.mar and stars-2.0.mar, and the run dirs they came from."""
    root = tmp_path_factory.mktemp("serving")
    store = root / "model_store"
    runs = build_tiny_archives(store, root / "runs", VERSION_SEEDS)
    return store, runs


@pytest.fixture(scope="module")
def torchserve(
    tiny_store: tuple[Path, dict[str, Path]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningTorchServe]:
    """A real TorchServe (token auth on) serving both tiny versions; 2.0 is the default."""
    store, _ = tiny_store
    with running_torchserve(tmp_path_factory.mktemp("ts-home"), store) as running:
        yield running
