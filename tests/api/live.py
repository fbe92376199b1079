"""A live serving stack for gateway tests: real TorchServe, the gateway as its own process.

Importable from any test (``from tests.api.live import running_gateway``)::

    with running_gateway(tmp / "stack", env={"STARRATING_MAX_BATCH_SIZE": "8"}) as live:
        live.http.post("/v1/predictions", json={"text": "It's OK."})
        live.torchserve.sync_client()      # straight to TorchServe (tests/serving/helpers.py)

Started the way ``starrating serve`` starts it (``serving.launcher``): two tiny-model versions
("1.0" the default, "2.0" other weights) with token authorization on, then
``uvicorn api.app:create_app --factory``. Always stopped afterwards.

``run_schemathesis(live.url, "--checks", "all", ...)`` fuzzes a live gateway's own OpenAPI
document with the schemathesis CLI, the way every gateway test here runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from serving.addresses import free_port
from serving.gateway_process import without_settings
from serving.launcher import GatewayOptions, StackPlan, running_stack
from serving.paths import ServingPaths
from serving.torchserve_config import TorchServeOptions
from tests.serving.helpers import RunningTorchServe, build_tiny_archives

REPO = Path(__file__).resolve().parents[2]
VERSION_SEEDS = {"1.0": 0, "2.0": 1}


def metric_value(exposition: str, name: str, **labels: str) -> float:
    """One sample's value in a /metrics text (0 when the series does not exist yet)."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def run_schemathesis(
    url: str,
    *options: str,
    checks: str,
    seed: int,
    max_time_s: int,
    include_path_regex: str | None = None,
    headers: Mapping[str, str] | None = None,
    hooks: Path | None = None,
    timeout_s: float = 300,
) -> subprocess.CompletedProcess[str]:
    """The schemathesis CLI against the OpenAPI document of the gateway at ``url``: ``checks``
    (``all`` or names), seeded, for ``max_time_s`` at most, one worker, 30 s per request,
    secrets sanitized from its output; the operations whose path matches
    ``include_path_regex`` (default: all), ``headers`` sent with every request, ``hooks`` a file
    of schemathesis hooks, ``options`` more CLI options. Run from the repository root (a hooks
    file may import ``tests``). Never raises on failures found: the caller asserts on the
    return code."""
    command = [
        *(sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json"),
        *("--checks", checks, "--seed", str(seed), "--max-time", str(max_time_s)),
        *("--workers", "1", "--request-timeout", "30", "--output-sanitize", "true"),
    ]
    if include_path_regex is not None:
        command += ["--include-path-regex", include_path_regex]
    for name, value in (headers or {}).items():
        command += ["--header", f"{name}: {value}"]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(hooks)} if hooks else None
    return subprocess.run(
        [*command, *options],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        cwd=REPO,
        env=env,
    )


def schemathesis_failure(result: subprocess.CompletedProcess[str]) -> str:
    """What a failed ``run_schemathesis`` printed, short enough for an assertion message."""
    return result.stdout[-6000:] + result.stderr[-2000:]


@dataclass(frozen=True)
class LiveGateway:
    torchserve: RunningTorchServe
    gateway_pid: int
    url: str
    http: httpx.Client

    @property
    def log_file(self) -> Path:
        return self.torchserve.paths.gateway_log

    def metric(self, name: str, **labels: str) -> float:
        return metric_value(self.http.get("/metrics").text, name, **labels)


@contextmanager
def running_gateway(root: Path, env: Mapping[str, str] | None = None) -> Iterator[LiveGateway]:
    """The stack under ``root``; ``env`` adds ``STARRATING_*`` settings for the gateway."""
    store = root / "model_store"
    build_tiny_archives(store, root / "runs", VERSION_SEEDS)
    plan = StackPlan(
        paths=ServingPaths.under(root / "home"),
        torchserve=TorchServeOptions.on_free_ports(store),
        # The developer's own STARRATING_* settings must not leak into the test gateway.
        gateway=GatewayOptions(
            port=free_port(), env={**without_settings(os.environ), **(env or {})}
        ),
        default_version="1.0",
    )
    with running_stack(plan) as stack:
        gateway = stack.started_gateway()
        with httpx.Client(base_url=gateway.url, timeout=30.0) as http:
            yield LiveGateway(RunningTorchServe.of(stack), gateway.pid, gateway.url, http)
