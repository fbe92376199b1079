"""The `serve` image's TorchServe start-up, run here without Docker: its entrypoint with the
container's own config files (only the ports moved to free loopback ports) and real archives
of the tiny model, the model healthcheck that Docker, compose and Kubernetes run, and the
SageMaker hosting mode (/ping and /invocations without a token)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from serving.addresses import free_port
from tests.deploy.conftest import REPO
from tests.serving.helpers import build_tiny_archives

TORCHSERVE_DIR = REPO / "deploy" / "torchserve"
ENTRYPOINT = TORCHSERVE_DIR / "entrypoint.sh"
READY_WITHIN_S = 180


@dataclass(frozen=True)
class Ports:
    inference: int
    management: int
    metrics: int
    grpc_inference: int
    grpc_management: int

    @classmethod
    def free(cls) -> Ports:
        return cls(free_port(), free_port(), free_port(), free_port(), free_port())


def with_ports(config: str, ports: Ports) -> str:
    for host in ("0.0.0.0", "127.0.0.1"):
        config = (
            config.replace(f"{host}:8080", f"127.0.0.1:{ports.inference}")
            .replace(f"{host}:8081", f"127.0.0.1:{ports.management}")
            .replace(f"{host}:8082", f"127.0.0.1:{ports.metrics}")
        )
    return config.replace(
        "grpc_inference_port=7070", f"grpc_inference_port={ports.grpc_inference}"
    ).replace("grpc_management_port=7071", f"grpc_management_port={ports.grpc_management}")


def healthcheck(ports: Ports, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "STARRATING_TORCHSERVE_MANAGEMENT_URL": f"http://127.0.0.1:{ports.management}",
    }
    return subprocess.run(
        [str(Path(sys.executable).parent / "starrating-torchserve-healthcheck")],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
    )


def http(url: str, body: dict[str, Any] | None = None, key: str | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read().decode()


@contextmanager
def entrypoint(mode: str, home: Path, ports: Ports, env: dict[str, str]) -> Iterator[Path]:
    """Run the image's entrypoint in ``mode`` from ``home`` (its working directory, where the
    key file lands); stop its whole process group afterwards. Yields the log file."""
    for folder in ("state", "tmp", "logs"):
        (home / folder).mkdir(parents=True, exist_ok=True)
    log = home / "entrypoint.log"
    full_env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "TEMP": str(home / "tmp"),
        "LOG_LOCATION": str(home / "logs"),
        "METRICS_LOCATION": str(home / "logs"),
        **env,
    }
    with log.open("wb") as out:
        # Its own session, like tini -g in the image: the signal reaches the Java frontend too.
        process = subprocess.Popen(
            ["sh", str(ENTRYPOINT), mode],
            cwd=home / "state",
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + READY_WITHIN_S
        while healthcheck(ports, home / "state").returncode != 0:
            if process.poll() is not None:
                pytest.fail(f"TorchServe exited ({process.returncode}): {log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"not ready in {READY_WITHIN_S} s: {log.read_text()[-3000:]}")
            time.sleep(1)
        yield log
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # Wait for the Java frontend and workers (same process group) to be gone as well.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.5)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("container-store")
    build_tiny_archives(root / "model_store", root / "runs", {"1.0": 0, "2.0": 1})
    return root / "model_store"


def test_healthcheck_says_why_when_torchserve_is_down(tmp_path: Path) -> None:
    result = healthcheck(Ports.free(), tmp_path)
    assert result.returncode == 1
    assert "management API unreachable" in result.stderr


def test_entrypoint_refuses_an_empty_model_store(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    env = {
        **os.environ,
        "STARRATING_MODEL_STORE": str(tmp_path / "store"),
        "TS_CONFIG_FILE": str(TORCHSERVE_DIR / "config.properties"),
    }
    result = subprocess.run(
        ["sh", str(ENTRYPOINT), "start"], capture_output=True, text=True, env=env, timeout=30
    )
    assert result.returncode == 1
    assert "no .mar archive" in result.stderr and "starrating archive" in result.stderr


@pytest.mark.slow
@pytest.mark.integration
def test_container_config_serves_every_version_with_token_auth(store: Path, tmp_path: Path) -> None:
    ports = Ports.free()
    config = tmp_path / "config.properties"
    config.write_text(with_ports((TORCHSERVE_DIR / "config.properties").read_text(), ports))
    env = {"STARRATING_MODEL_STORE": str(store), "TS_CONFIG_FILE": str(config)}
    with entrypoint("start", tmp_path, ports, env):
        key_file = tmp_path / "state" / "key_file.json"
        # Owner-only: the gateway container reads it because it runs as the same uid.
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        keys = json.loads(key_file.read_text())
        management = f"http://127.0.0.1:{ports.management}"
        with pytest.raises(urllib.error.HTTPError) as refused:
            http(f"{management}/models/stars/all")
        assert refused.value.code == 400  # token authorization is on
        described = json.loads(
            http(f"{management}/models/stars/all", key=keys["management"]["key"])
        )
        assert sorted(v["modelVersion"] for v in described) == ["1.0", "2.0"]
        for version in ("1.0", "2.0"):
            answer = json.loads(
                http(
                    f"http://127.0.0.1:{ports.inference}/predictions/stars/{version}",
                    {"text": "I loved it! I will recommend this to everyone."},
                    key=keys["inference"]["key"],
                )
            )
            assert answer["model_version"] == version and 1 <= answer["stars"] <= 5
        # Prometheus scrapes the metrics API without a token.
        metrics = http(f"http://127.0.0.1:{ports.metrics}/metrics")
        assert "ts_inference_requests_total" in metrics


@pytest.mark.slow
@pytest.mark.integration
def test_sagemaker_mode_answers_ping_and_invocations(store: Path, tmp_path: Path) -> None:
    ports = Ports.free()
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    # The front answers SageMaker on ports.inference; TorchServe sits behind it on another.
    behind = free_port()
    (config_dir / "sagemaker.properties").write_text(
        with_ports((TORCHSERVE_DIR / "sagemaker.properties").read_text(), ports).replace(
            "127.0.0.1:8090", f"127.0.0.1:{behind}"
        )
    )
    # SageMaker copies the variant's model data, one archive, into /opt/ml/model.
    model_dir = tmp_path / "opt-ml-model"
    model_dir.mkdir()
    (model_dir / "stars-2.0.mar").write_bytes((store / "stars-2.0.mar").read_bytes())
    env = {
        "SAGEMAKER_MODEL_DIR": str(model_dir),
        "SAGEMAKER_BIND_TO_PORT": str(ports.inference),
        "STARRATING_TS_CONFIG_DIR": str(config_dir),
        # The container's variable for compose/Kubernetes must not leak into this mode.
        "TS_CONFIG_FILE": str(TORCHSERVE_DIR / "config.properties"),
    }
    with entrypoint("serve", tmp_path, ports, env):
        inference = f"http://127.0.0.1:{ports.inference}"
        assert json.loads(http(f"{inference}/ping"))["status"] == "Healthy"
        answer = json.loads(
            http(f"{inference}/invocations", {"text": "Really bad. I hope they don't make this."})
        )
        assert answer["model_version"] == "2.0"
        assert 1 <= answer["stars"] <= 5
        assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert not (tmp_path / "state" / "key_file.json").exists()
