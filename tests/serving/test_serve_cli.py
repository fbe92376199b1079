"""`starrating serve` and `starrating stop` for real, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from abtesting.store import ExperimentStore
from serving.addresses import free_port
from tests.serving.helpers import running_torchserve, starrating

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def stack_env(tmp_path: Path, gateway_port: int, **extra: str) -> dict[str, str]:
    """`starrating serve`'s environment for a stack of its own: home, A/B store and ports."""
    return {
        **os.environ,
        "STARRATING_HOME": str(tmp_path / "home"),
        "STARRATING_TORCHSERVE_URL": f"http://127.0.0.1:{free_port()}",
        "STARRATING_TORCHSERVE_MANAGEMENT_URL": f"http://127.0.0.1:{free_port()}",
        "STARRATING_PORT": str(gateway_port),
        "STARRATING_DATABASE_URL": f"sqlite:///{tmp_path / 'ab.db'}",
        "COLUMNS": "300",
        **extra,
    }


def serve(store: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`starrating serve` on free metrics and gRPC ports."""
    metrics, *grpc = (str(free_port()) for _ in range(3))
    return starrating(
        "serve", "--model-store", str(store), "--metrics-port", metrics, "--grpc-ports", *grpc,
        env=env,
    )  # fmt: skip


def test_serve_starts_both_and_stop_stops_both(
    tiny_store: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    store, _ = tiny_store
    home = tmp_path / "home"
    gateway_port = free_port()
    env = stack_env(tmp_path, gateway_port)
    served = serve(store, env)
    try:
        assert served.returncode == 0, served.stdout + served.stderr
        assert "versions 1.0, 2.0; default 2.0" in served.stdout
        pids = {
            name: int((home / "run" / f"{name}.pid").read_text())
            for name in ("torchserve", "gateway")
        }
        assert all(psutil.pid_exists(pid) for pid in pids.values())
        config = (home / "torchserve" / "config.properties").read_text()
        assert "disable_token_authorization=false" in config
        assert (home / "torchserve" / "key_file.json").is_file()
        assert (home / "logs" / "torchserve" / "ts_log.log").is_file()

        # The gateway found TorchServe's tokens on its own and serves both versions.
        gateway = f"http://127.0.0.1:{gateway_port}"
        review = {"text": "I loved it! I will recommend this to everyone."}
        answer = httpx.post(f"{gateway}/v1/predictions", json=review, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["version"] == "2.0"
        pinned = httpx.post(
            f"{gateway}/v1/predictions",
            json=review,
            headers={"X-Model-Version": "1.0"},
            timeout=30,
        )
        assert pinned.status_code == 200 and pinned.json()["version"] == "1.0"

        again = starrating("serve", "--model-store", str(store), env=env)
        assert again.returncode != 0 and "already running" in again.stdout + again.stderr
    finally:
        stopped = starrating("stop", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert "gateway: stopped" in stopped.stdout and "TorchServe: stopped" in stopped.stdout
    psutil.wait_procs([psutil.Process(p) for p in pids.values() if psutil.pid_exists(p)], 10)
    assert not any(psutil.pid_exists(pid) for pid in pids.values())
    assert not (home / "run" / "torchserve.pid").exists()
    assert not (home / "run" / "gateway.pid").exists()
    assert "was not running" in starrating("stop", env=env).stdout


def test_insecure_dev_serves_without_tokens(
    tiny_store: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    store, _ = tiny_store
    with running_torchserve(tmp_path / "home", store, token_auth=False) as ts:
        assert not ts.paths.key_file.exists()
        ping = httpx.get(f"{ts.inference_url}/ping", timeout=5)
        answer = httpx.post(f"{ts.inference_url}/predictions/stars/1.0", json={"text": "ok"})
    assert ping.status_code == 200
    assert answer.status_code == 200 and answer.json()["model_version"] == "1.0"


def test_serve_names_a_stale_experiment_at_once_and_leaves_the_stack_to_fix_it(
    tiny_store: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    """A reused A/B store whose experiment routes to 3.0, a version this model store lacks."""
    store, _ = tiny_store
    home = tmp_path / "home"
    gateway_port = free_port()
    env = stack_env(tmp_path, gateway_port, STARRATING_ADMIN_TOKEN="admin-s3cret-token")
    experiments = ExperimentStore(env["STARRATING_DATABASE_URL"])
    experiments.save_experiment(
        "old-test",
        {
            "name": "old-test",
            "variants": [
                {"name": "A", "version": "1.0", "weight": 0.5},
                {"name": "B", "version": "3.0", "weight": 0.5},
            ],
            "sticky": True,
            "shadow": None,
        },
    )
    experiments.close()
    try:
        started = time.monotonic()
        served = serve(store, env)
        took = time.monotonic() - started
        said = " ".join((served.stdout + served.stderr).split())  # rich wraps long lines
        assert served.returncode != 0
        assert "experiment 'old-test' routes to model version 3.0" in said, said
        assert "registered: 1.0, 2.0" in said
        assert "starrating archive --run RUN_DIR --version 3.0" in said
        assert "PUT /v1/experiment" in said
        assert "starrating stop" in said
        assert took < 60  # no wait for the readiness timeout: it would not fix itself
        # The gateway's own log says it too, as one JSON line.
        logged = [
            json.loads(line)
            for line in (home / "logs" / "gateway.log").read_text().splitlines()
            if line.startswith("{") and "old-test" in line
        ]
        assert any(r["level"] == "WARNING" and "version 3.0" in r["message"] for r in logged)
        # The way out the message names: a new experiment through the running gateway.
        gateway = f"http://127.0.0.1:{gateway_port}"
        fixed = httpx.put(
            f"{gateway}/v1/experiment",
            json={
                "name": "only-1",
                "variants": [{"name": "A", "version": "1.0", "weight": 1.0}],
                "sticky": True,
                "shadow": None,
            },
            headers={"Authorization": "Bearer admin-s3cret-token"},
            timeout=30,
        )
        assert fixed.status_code == 200, fixed.text
        assert httpx.get(f"{gateway}/readyz", timeout=5).status_code == 200
    finally:
        assert starrating("stop", env=env).returncode == 0
