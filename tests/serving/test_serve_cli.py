"""`starrating serve` and `starrating stop` for real, as a user runs them."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import psutil
import pytest

from serving.supervisor import free_port
from tests.serving.helpers import running_torchserve, starrating

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_serve_starts_both_and_stop_stops_both(
    tiny_store: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    store, _ = tiny_store
    home = tmp_path / "home"
    gateway_port = free_port()
    env = {
        **os.environ,
        "STARRATING_HOME": str(home),
        "STARRATING_TORCHSERVE_URL": f"http://127.0.0.1:{free_port()}",
        "STARRATING_TORCHSERVE_MANAGEMENT_URL": f"http://127.0.0.1:{free_port()}",
        "STARRATING_PORT": str(gateway_port),
        "STARRATING_DATABASE_URL": f"sqlite:///{tmp_path / 'ab.db'}",
        "COLUMNS": "200",
    }
    metrics, *grpc = (str(free_port()) for _ in range(3))
    served = starrating(
        "serve", "--model-store", str(store), "--metrics-port", metrics, "--grpc-ports", *grpc,
        env=env,
    )  # fmt: skip
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
