"""Starting the gateway detached (``uvicorn api.app:create_app --factory``) and stopping it.

The gateway is a program to this module, not a library: it is started by its command line,
configured by its ``STARRATING_*`` environment and known through its HTTP answers (/readyz), so
nothing of ``api`` is imported here.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Collection, Mapping
from pathlib import Path

import httpx

from serving.addresses import url_host
from serving.errors import GatewayWontBeReadyError, LifecycleError
from serving.paths import ServingPaths
from serving.processes import NotReadyError, log_tail, running_pid, stop_pid_file, wait_until
from serving.sizing import ServingLayout
from serving.torchserve_config import TorchServeOptions
from starrating.service import ENV_PREFIX

logger = logging.getLogger(__name__)

GATEWAY_MARKER = "uvicorn"
"""In the gateway's command line: a pid in ``run/gateway.pid`` without it is not the gateway."""


def without_settings(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without ``STARRATING_*`` settings: a private gateway (a test's, a benchmark's)
    runs on its defaults, not on what a developer set for their own (a database, a token)."""
    return {k: v for k, v in env.items() if not k.startswith(ENV_PREFIX)}


def gateway_env(
    base: Mapping[str, str],
    paths: ServingPaths,
    options: TorchServeOptions,
    *,
    layout: ServingLayout | None = None,
) -> dict[str, str]:
    """The gateway's environment: ``base`` plus where TorchServe is and how to authenticate,
    and with ``layout`` as many coalesced requests in flight per version as TorchServe runs
    workers for it, so that no worker idles while predictions wait (a value in ``base``
    wins)."""
    env = {}
    if layout is not None:
        env[f"{ENV_PREFIX}COALESCE_MAX_IN_FLIGHT"] = str(layout.workers_per_version)
    env.update(base)
    env.update(
        {
            f"{ENV_PREFIX}HOME": str(paths.home),
            f"{ENV_PREFIX}MODEL_STORE": str(options.model_store.resolve()),
            f"{ENV_PREFIX}TORCHSERVE_URL": options.inference_url,
            f"{ENV_PREFIX}TORCHSERVE_MANAGEMENT_URL": options.management_url,
            f"{ENV_PREFIX}MODEL_NAME": options.model_name,
        }
    )
    key_file = f"{ENV_PREFIX}TORCHSERVE_KEY_FILE"
    if options.token_auth:
        env[key_file] = str(paths.key_file)
    else:
        env.pop(key_file, None)
    return env


def start_gateway(
    paths: ServingPaths,
    env: Mapping[str, str],
    *,
    host: str,
    port: int,
    workers: int = 1,
    timeout_s: float = 60.0,
    give_up_on: Collection[str] = (),
    cwd: Path | None = None,
) -> int:
    """Start ``uvicorn api.app:create_app --factory`` detached; wait for /readyz; its pid.

    ``give_up_on`` are the error codes of /readyz after which waiting cannot help; whoever
    knows the gateway's codes names them (``starrating serve``: the stale experiment). With
    several workers, Prometheus metrics go through a fresh multiprocess directory so that
    /metrics adds up every worker. ``cwd``: the checkout whose ``api`` to run (uvicorn imports
    from its working directory first)."""
    if running_pid(paths.gateway_pid, GATEWAY_MARKER) is not None:
        raise LifecycleError(f"the gateway of {paths.home} is already running")
    paths.make_dirs()
    env = dict(env)
    if workers > 1:
        metrics_dir = paths.home / "run" / "prometheus"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    with paths.gateway_log.open("ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "api.app:create_app",
                "--factory",
                "--host",
                host,
                "--port",
                str(port),
                "--workers",
                str(workers),
                # The gateway logs every request itself, as JSON.
                "--no-access-log",
            ],
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    paths.gateway_pid.write_text(f"{process.pid}\n")
    url = f"http://{url_host(host)}:{port}/readyz"
    reason = ["it never answered"]

    def ready(http: httpx.Client) -> bool:
        try:
            readyz = http.get(url)
        except httpx.TransportError:
            return False
        if readyz.status_code == 200:
            return True
        code, reason[0] = _readiness_error(readyz)
        if code in give_up_on:
            # Waiting cannot help; the gateway stays up to be fixed through it.
            raise GatewayWontBeReadyError(
                f"the gateway cannot serve: {reason[0]}. The gateway (pid {process.pid}) "
                "and TorchServe are left running for that; `starrating stop` stops them"
            )
        return False

    with httpx.Client(timeout=2.0) as http:
        try:
            wait_until(
                lambda: ready(http), timeout_s=timeout_s, alive=lambda: process.poll() is None
            )
        except NotReadyError as exc:
            if exc.exited:
                paths.gateway_pid.unlink(missing_ok=True)
                raise LifecycleError(
                    f"the gateway exited (code {process.returncode}); see {paths.gateway_log}:\n"
                    + log_tail(paths.gateway_log)
                ) from exc
            stop_gateway(paths)
            raise LifecycleError(
                f"the gateway did not become ready at {url}: {reason[0]}; see {paths.gateway_log}"
            ) from exc
    logger.info("gateway is up (pid %d) on http://%s:%d", process.pid, host, port)
    return process.pid


def _readiness_error(readyz: httpx.Response) -> tuple[str | None, str]:
    """The error code and message of a /readyz answer that is not 200."""
    try:
        error = readyz.json()["error"]
        return str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return None, f"/readyz answered {readyz.status_code}"


def stop_gateway(paths: ServingPaths, *, timeout_s: float = 15.0) -> bool:
    """Terminate this home's gateway; False when none was running."""
    pid = stop_pid_file(
        paths.gateway_pid, GATEWAY_MARKER, lambda pid: os.kill(pid, signal.SIGTERM), timeout_s
    )
    if pid is None:
        return False
    logger.info("gateway (pid %d) stopped", pid)
    return True
