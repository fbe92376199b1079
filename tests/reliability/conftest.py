"""The real stack for reliability and security tests: TorchServe + the gateway, as deployed.

One tiny-model store per session; one running stack per module (``stack``), started by
``serving.launcher``: TorchServe with token authorization on and the gateway as its own
``uvicorn`` process with an admin token set. Every test asks the stack whether the gateway is
still alive after what it did.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from serving.addresses import free_port
from serving.gateway_process import without_settings
from serving.launcher import GatewayOptions, StackPlan
from serving.launcher import running_stack as running_stack_of
from serving.paths import ServingPaths
from serving.torchserve_config import TorchServeOptions
from tests.serving.helpers import RunningTorchServe, build_tiny_archives

VERSION = "1.0"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@dataclass
class GatewayStack:
    """A running gateway in front of a running TorchServe."""

    torchserve: RunningTorchServe
    url: str
    port: int
    pid: int
    admin_token: str
    env: dict[str, str]
    http: httpx.Client

    @property
    def paths(self) -> ServingPaths:
        return self.torchserve.paths

    def alive(self) -> bool:
        """The same gateway process still runs and answers its liveness probe."""
        if not psutil.pid_exists(self.pid):
            return False
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def log_text(self) -> str:
        """Everything the stack logged: the gateway's and TorchServe's log files."""
        logs = self.torchserve.paths.home / "logs"
        return "\n".join(
            path.read_text(errors="replace") for path in sorted(logs.rglob("*")) if path.is_file()
        )


@pytest.fixture(scope="session")
def reliability_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store with one tiny version, shared by every module of this package."""
    root = tmp_path_factory.mktemp("reliability")
    store = root / "model_store"
    build_tiny_archives(store, root / "runs", {VERSION: 0})
    return store


def clean_environ() -> dict[str, str]:
    """This process's environment without STARRATING_* settings a developer may have set."""
    return without_settings(os.environ)


@contextmanager
def running_stack(
    store: Path, home: Path, extra_env: Mapping[str, str] | None = None
) -> Iterator[GatewayStack]:
    """TorchServe (token auth on, every archive in ``store``) and the gateway with an admin
    token, as ``starrating serve`` starts them; both stopped."""
    admin_token, port = secrets.token_urlsafe(32), free_port()
    plan = StackPlan(
        paths=ServingPaths.under(home),
        torchserve=TorchServeOptions.on_free_ports(store),
        gateway=GatewayOptions(
            port=port,
            env={**clean_environ(), "STARRATING_ADMIN_TOKEN": admin_token, **(extra_env or {})},
        ),
    )
    with running_stack_of(plan) as running:
        gateway = running.started_gateway()
        with httpx.Client(base_url=gateway.url, timeout=60.0) as http:
            yield GatewayStack(
                RunningTorchServe.of(running),
                gateway.url,
                port,
                gateway.pid,
                admin_token,
                gateway.env,
                http,
            )


@pytest.fixture(scope="module")
def stack(
    reliability_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayStack]:
    """One running stack for the whole test module."""
    with running_stack(reliability_store, tmp_path_factory.mktemp("stack-home")) as running:
        yield running
