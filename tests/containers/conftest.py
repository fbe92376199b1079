"""The images, built once per session (`make images`, layer cache), and one compose stack.

Everything here runs real containers on this machine's Docker engine (`.ci/run` installs and
starts it); there is no skip: without an engine the fixtures fail and say so. Traffic goes only
to ports published on 127.0.0.1; what sits on the internal network is reached with
`docker exec`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.addresses import free_port as free_port  # tests here import it from this module

REPO = Path(__file__).resolve().parents[2]
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
PREFIX = os.environ.get("IMAGE_PREFIX", "starrating")
TAG = os.environ.get("IMAGE_TAG", "latest")
PROJECT = "starrating-ci"


def image(target: str) -> str:
    return f"{PREFIX}-{target}:{TAG}"


def docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        pytest.fail(f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 120.0) -> float:
    """Poll until ``condition()`` holds; the seconds it took. Fails with ``what`` on timeout."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"gave up after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - start


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def sagemaker_training_env(
    hyperparameters: dict[str, str], hosts: list[str], current_host: str
) -> dict[str, str]:
    """The SM_* variables SageMaker sets in a training container (channels model, train,
    validation; no GPU) on instance ``current_host`` of ``hosts``."""
    return {
        "SM_MODEL_DIR": "/opt/ml/model",
        "SM_CHANNEL_TRAIN": "/opt/ml/input/data/train",
        "SM_CHANNEL_VALIDATION": "/opt/ml/input/data/validation",
        "SM_CHANNELS": json.dumps(["model", "train", "validation"]),
        "SM_HPS": json.dumps(hyperparameters),
        "SM_HOSTS": json.dumps(hosts),
        "SM_CURRENT_HOST": current_host,
        "SM_HOST_COUNT": str(len(hosts)),
        "SM_CURRENT_HOST_RANK": str(hosts.index(current_host)),
        "SM_NUM_GPUS": "0",
        "SM_OUTPUT_DATA_DIR": "/opt/ml/output/data",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """`make images` (the layer cache makes a repeat cheap): serve, gateway, train."""
    if docker("info", check=False).returncode != 0:
        pytest.fail("no Docker engine answers: start dockerd (see .ci/run)")
    result = subprocess.run(
        ["make", "--no-print-directory", "images"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=3000,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return {target: image(target) for target in ("serve", "gateway", "train")}


def tiny_store(directory: Path, versions: dict[str, int]) -> Path:
    """Real .mar files of the tests' tiny model, readable by the images' uid 10001."""
    from tests.serving.helpers import build_tiny_archives

    store = directory / "model_store"
    build_tiny_archives(store, directory / "runs", versions)
    store.chmod(0o755)
    for archive in store.glob("*.mar"):
        archive.chmod(0o644)
    return store


@dataclass
class Stack:
    """The shipped docker-compose.yml with the offline override, as `make compose-up` runs it."""

    env_file: Path
    secrets: dict[str, str]
    url: str
    up_seconds: float

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "docker-compose",
                "--project-name",
                PROJECT,
                "--env-file",
                str(self.env_file),
                "-f",
                "docker-compose.yml",
                "-f",
                "docker-compose.offline.yml",
                *args,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.environ(),
        )

    def environ(self) -> dict[str, str]:
        return {
            **os.environ,
            **self.secrets,
            "COMPOSE_PROJECT": PROJECT,
            "COMPOSE_ENV_FILE": str(self.env_file),
            # The client the tests use (Debian's, where the first on PATH wants buildx).
            "DOCKER": DOCKER,
        }

    def up(self) -> float:
        """`make compose-up`'s script; the seconds until every service was healthy."""
        start = time.monotonic()
        result = subprocess.run(
            ["deploy/docker/compose.sh", "up"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=900,
            env=self.environ(),
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
        return time.monotonic() - start

    def down(self, *flags: str) -> None:
        result = subprocess.run(
            ["deploy/docker/compose.sh", "down"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            env={**self.environ(), "COMPOSE_DOWN_FLAGS": " ".join(flags)},
        )
        assert result.returncode == 0, result.stderr

    def container(self, service: str) -> str:
        result = self.compose("ps", "-q", service)
        container_id = result.stdout.strip()
        assert container_id, f"no container for {service}: {result.stderr}"
        return container_id

    def exec(self, service: str, *command: str) -> str:
        return docker("exec", self.container(service), *command).stdout

    def psql(self, query: str) -> list[list[str]]:
        out = self.exec(
            "postgres", "psql", "-U", "starrating", "-d", "starrating", "-tAF", "\t", "-c", query
        )
        return [line.split("\t") for line in out.splitlines() if line]

    def prometheus(self, path: str, **params: str) -> Any:
        import json
        from urllib.parse import urlencode

        url = f"http://127.0.0.1:9090{path}?{urlencode(params)}"
        return json.loads(self.exec("prometheus", "wget", "-q", "-O", "-", url))

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets['STARRATING_ADMIN_TOKEN']}"}

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def logs(self, service: str) -> str:
        result = self.compose("logs", "--no-color", "--tail", "200", service)
        return result.stdout + result.stderr


@pytest.fixture(scope="session")
def stack(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One compose stack for the session: two versions (1.0, 2.0) of the tiny model, its
    gateway published on ``STARRATING_GATEWAY_PORT`` or else on a free port (so a service
    already on 8000 does not stop the tests)."""
    chosen = os.environ.get("STARRATING_GATEWAY_PORT")
    gateway_port = int(chosen) if chosen else free_port()
    if port_open(gateway_port):
        pytest.fail(
            f"127.0.0.1:{gateway_port} is taken: stop what listens there, or set "
            "STARRATING_GATEWAY_PORT to a free port"
        )
    home = tmp_path_factory.mktemp("compose")
    home.chmod(0o755)
    store = tiny_store(home, {"1.0": 0, "2.0": 1})
    values = {
        "STARRATING_ADMIN_TOKEN": secrets.token_hex(16),
        "STARRATING_POSTGRES_PASSWORD": secrets.token_hex(16),
        "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(16),
        "STARRATING_GATEWAY_PORT": str(gateway_port),
        "STARRATING_MODEL_STORE_DIR": str(store),
    }
    env_file = home / "compose.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    stack = Stack(env_file, values, f"http://127.0.0.1:{gateway_port}", 0.0)
    stack.down("-v")  # a stack left over by an interrupted session
    try:
        stack.up_seconds = stack.up()
        yield stack
    finally:
        for service in ("gateway", "torchserve"):
            (home / f"{service}.log").write_text(stack.logs(service))
        stack.down("-v")
        shutil.rmtree(home / "runs", ignore_errors=True)
