"""Fixtures of the benchmark tests: the tiny model loaded as the bench loads models."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.reviews import ReviewSet, load_reviews
from starrating.artifacts import Artifacts, load_artifacts


@pytest.fixture(scope="session")
def tiny_artifacts(tiny_model_dir: Path) -> Artifacts:
    return load_artifacts(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_reviews(tiny_data_dir: Path) -> ReviewSet:
    return load_reviews(tiny_data_dir)
