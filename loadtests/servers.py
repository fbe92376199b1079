"""Starting and stopping the servers a benchmark drives, each on a free loopback port."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from loadtests.naive_server import MODEL_ENV
from serving.addresses import free_port
from serving.processes import NotReadyError, wait_until

logger = logging.getLogger(__name__)


class ServerStartError(RuntimeError):
    """A server did not become ready; the message says where its log is."""


def wait_until_ready(
    url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 120.0
) -> None:
    """Poll ``url`` until it answers 200; fail early if the process exits."""

    def answers() -> bool:
        try:
            return httpx.get(url, timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(answers, timeout_s=timeout, alive=lambda: process.poll() is None)
    except NotReadyError as exc:
        if exc.exited:
            raise ServerStartError(f"server exited with {process.returncode}; see {log}") from exc
        raise ServerStartError(
            f"server not ready at {url} after {timeout:.0f} s; see {log}"
        ) from exc


def stop_process(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def naive_server(model_dir: Path, log_dir: Path) -> Iterator[str]:
    """Run the naive FastAPI + pipeline server (one uvicorn worker); yields its base URL."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "naive_server.log"
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "loadtests.naive_server:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--log-level",
        "warning",
    ]
    env = os.environ | {MODEL_ENV: str(model_dir)}
    with log.open("wb") as handle:
        process = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(f"{url}/healthz", process, log)
        logger.info("naive server ready at %s", url)
        yield url
    finally:
        stop_process(process)
