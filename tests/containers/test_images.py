"""What each built image holds: only its role's dependencies, and sizes within bounds."""

from __future__ import annotations

import json

import pytest

from tests.containers.conftest import docker

# The first test to use `images` waits for a cold build (about 8 minutes here).
pytestmark = [pytest.mark.containers, pytest.mark.slow, pytest.mark.timeout(1800)]

PROBE = (
    "import importlib.util, json; print(json.dumps({m: bool(importlib.util.find_spec(m)) "
    "for m in ['torch', 'transformers', 'mlflow', 'ts', 'model_archiver', 'locust', "
    "'accelerate', 'sklearn', 'matplotlib', 'pyarrow', 'fastapi', 'scipy', 'api', 'abtesting', "
    "'handlers']}))"
)
# Measured here: gateway 419 MB (numpy + scipy with bytecode are half of it), serve 1.7 GB with
# the CPU torch. The bounds catch a role's image picking up another role's dependencies.
MAX_MB = {"gateway": 450, "serve": 2500}


def modules(image: str) -> dict[str, bool]:
    out = docker("run", "--rm", "--entrypoint", "python", image, "-c", PROBE).stdout
    found: dict[str, bool] = json.loads(out)
    return found


def size_mb(image: str) -> float:
    return int(docker("image", "inspect", "--format", "{{.Size}}", image).stdout) / 1e6


def test_gateway_image_has_no_torch_transformers_mlflow_or_torchserve(
    images: dict[str, str],
) -> None:
    found = modules(images["gateway"])
    assert found["fastapi"] and found["scipy"] and found["api"] and found["abtesting"]
    heavy = ("torch", "transformers", "mlflow", "ts", "model_archiver", "locust")
    assert not any(found[m] for m in heavy), found
    assert size_mb(images["gateway"]) <= MAX_MB["gateway"]


def test_serve_image_has_no_training_or_benchmark_dependencies(images: dict[str, str]) -> None:
    found = modules(images["serve"])
    assert found["torch"] and found["transformers"] and found["ts"] and found["handlers"]
    # matplotlib is not in this list: captum (explanations, imported lazily) requires it.
    training = ("mlflow", "model_archiver", "locust", "accelerate", "sklearn", "pyarrow")
    assert not any(found[m] for m in training), found
    assert size_mb(images["serve"]) <= MAX_MB["serve"]


def test_every_image_size_is_reported(images: dict[str, str]) -> None:
    sizes = {target: round(size_mb(name)) for target, name in images.items()}
    print(f"image sizes (MB): {sizes}")
    assert all(sizes.values())
