"""The serve image sizes TorchServe from the CPUs the container may use (its cgroup quota and
cpuset), not from the host's cores: under `--cpus 1` one worker with one torch thread per
version (TorchServe's own default started 16 workers under a 1-CPU limit, pytorch/serve#3150)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containers.conftest import docker, tiny_store, wait_for

pytestmark = [pytest.mark.containers, pytest.mark.slow, pytest.mark.timeout(1800)]

STORE = "/opt/starrating/model-store"
# Run inside the container, where TorchServe wrote its key file (the working directory).
DESCRIBE = """
import json
from pathlib import Path
from serving.torchserve import TorchServeSyncClient
with TorchServeSyncClient(
    "http://127.0.0.1:8080", "http://127.0.0.1:8081", key_file=Path("key_file.json")
) as client:
    print(json.dumps({
        v.version: {
            "workers": v.workers,
            "threads": client.describe(v.version, customized=True).metadata["threads"],
        }
        for v in client.list_versions()
    }))
"""


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Model stores with one and with two versions of the tiny model."""
    stores = {}
    for count in (1, 2):
        home = tmp_path_factory.mktemp(f"sizing-{count}")
        home.chmod(0o755)
        stores[count] = tiny_store(home, {f"{v}.0": v for v in range(1, count + 1)})
    return stores


def layout(image: str, store: Path, *limits: str) -> tuple[list[str], str]:
    """(workers and threads printed, the CPU count said on stderr) inside a container."""
    result = docker(
        "run", "--rm", *limits,
        "-v", f"{store}:{STORE}:ro",
        "--entrypoint", "starrating-serving-layout",
        image, STORE,
    )  # fmt: skip
    return result.stdout.split(), result.stderr


@pytest.mark.parametrize(
    ("versions", "limits", "cpus", "expected"),
    [
        (1, ("--cpus", "1"), 1, ["1", "1"]),  # a CPU quota (docker --cpus, a Kubernetes limit)
        (1, ("--cpus", "1.5"), 2, ["2", "1"]),  # a fractional quota rounds up
        (1, ("--cpuset-cpus", "0"), 1, ["1", "1"]),  # an affinity mask
        (2, ("--cpus", "2"), 2, ["1", "1"]),  # two versions share two CPUs
    ],
)
def test_the_layout_follows_the_containers_cpu_limit(
    images: dict[str, str],
    stores: dict[int, Path],
    versions: int,
    limits: tuple[str, ...],
    cpus: int,
    expected: list[str],
) -> None:
    printed, said = layout(images["serve"], stores[versions], *limits)
    assert printed == expected
    assert f"{versions} version(s) on {cpus} CPU(s)" in said


@pytest.fixture
def one_cpu_torchserve(images: dict[str, str], stores: dict[int, Path]) -> Iterator[str]:
    container = docker(
        "run", "-d", "--cpus", "1",
        "-v", f"{stores[2]}:{STORE}:ro",
        images["serve"],
    ).stdout.strip()  # fmt: skip
    try:
        yield container
    finally:
        docker("rm", "-f", container, check=False)


def test_torchserve_under_a_1_cpu_limit_runs_one_worker_with_one_thread_per_version(
    one_cpu_torchserve: str,
) -> None:
    wait_for(
        lambda: (
            docker(
                "exec", one_cpu_torchserve, "starrating-torchserve-healthcheck", check=False
            ).returncode
            == 0
        ),
        "every version to have a ready worker",
        timeout_s=300,
    )
    described = json.loads(
        docker("exec", one_cpu_torchserve, "python", "-c", DESCRIBE).stdout.strip()
    )
    assert described == {
        "1.0": {"workers": 1, "threads": 1},
        "2.0": {"workers": 1, "threads": 1},
    }
