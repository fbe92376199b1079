"""Starting a local TorchServe detached, registering the model's versions, and stopping it.

TorchServe's ``--start`` launcher starts the JVM in a new session and exits, so the JVM outlives
the process that started it (``starrating serve`` returns); it is found again by the pid file
under ``STARRATING_HOME`` (``serving.paths``).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence

import psutil

from serving.archives import ArchiveInfo
from serving.errors import LifecycleError
from serving.paths import ServingPaths
from serving.processes import (
    NotReadyError,
    log_tail,
    read_pid,
    running_pid,
    stop_pid_file,
    wait_until,
)
from serving.sizing import THREADS_ENV, ServingLayout, serving_layout
from serving.torchserve import TorchServeError, TorchServeSyncClient
from serving.torchserve_config import TorchServeOptions

logger = logging.getLogger(__name__)

TORCHSERVE_MAIN_CLASS = "org.pytorch.serve.ModelServer"
READY_CHECK_TEXT = "readiness check"
Progress = Callable[[str], None]


def start_torchserve(
    paths: ServingPaths,
    options: TorchServeOptions,
    archives: Sequence[ArchiveInfo],
    *,
    layout: ServingLayout | None = None,
    handler_env: Mapping[str, str] | None = None,
    timeout_s: float = 90.0,
) -> int:
    """Write the config, start TorchServe detached and wait for /ping; returns the JVM pid.

    ``layout`` sizes it (default: ``serving_layout`` for ``archives`` on this process's CPUs);
    ``handler_env`` (``STARRATING_HANDLER_*``) overrides this process's environment for the
    handler."""
    if running_pid(paths.torchserve_pid, TORCHSERVE_MAIN_CLASS) is not None:
        raise LifecycleError(
            f"TorchServe of {paths.home} is already running; run `starrating stop` first"
        )
    if layout is None:
        layout = serving_layout(max(1, len(archives)))
    paths.make_dirs()
    paths.config_file.write_text(options.config_properties(archives, layout))
    paths.key_file.unlink(missing_ok=True)
    env = torchserve_env(paths, threads=layout.threads_per_worker, overrides=handler_env)
    launcher_log = paths.torchserve_logs / "stdout.log"
    with launcher_log.open("ab") as log:
        # The launcher starts the JVM and exits; the JVM inherits the new session, so it
        # outlives this process and a Ctrl-C in the terminal that ran `starrating serve`.
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "ts.model_server",
                "--start",
                "--ts-config",
                str(paths.config_file),
                "--model-store",
                str(options.model_store.resolve()),
                "--ncs",
            ],
            cwd=paths.torchserve_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            timeout=60,
            check=False,
        )
    jvm_pid = read_pid(paths.temp_dir / ".model_server.pid")
    if result.returncode != 0 or jvm_pid is None:
        raise LifecycleError(
            f"TorchServe did not start (exit {result.returncode}); see {launcher_log}:\n"
            + log_tail(launcher_log)
        )
    paths.torchserve_pid.write_text(f"{jvm_pid}\n")
    key_file = paths.key_file if options.token_auth else None
    with TorchServeSyncClient(
        options.inference_url, options.management_url, key_file=key_file, timeout=5.0
    ) as client:
        try:
            wait_until(client.ping, timeout_s=timeout_s, alive=lambda: psutil.pid_exists(jvm_pid))
        except NotReadyError as exc:
            stop_torchserve(paths)
            why = "it exited" if exc.exited else f"no healthy /ping in {timeout_s:.0f} s"
            ts_log = paths.torchserve_logs / "ts_log.log"
            raise LifecycleError(
                f"TorchServe did not come up on {options.inference_url} ({why}); see "
                f"{ts_log}:\n" + log_tail(ts_log)
            ) from exc
    logger.info("TorchServe is up (pid %d) on %s", jvm_pid, options.inference_url)
    return jvm_pid


def register_versions(
    client: TorchServeSyncClient,
    archives: Sequence[ArchiveInfo],
    *,
    default_version: str | None = None,
    register: bool = True,
    workers: int | None = None,
    batch_size: int | None = None,
    max_batch_delay_ms: int | None = None,
    timeout_s: float = 300.0,
    progress: Progress | None = None,
) -> str:
    """Register every archive with ``workers`` each (default: ``serving_layout``'s), make the
    newest (or ``default_version``) the default, and wait until each version answers a real
    prediction. ``batch_size`` and ``max_batch_delay_ms`` left None come from the archive's
    ``model-config.yaml``. Returns the default version."""
    if not archives:
        raise LifecycleError("no model archives to serve")
    if workers is None:
        workers = serving_layout(len(archives)).workers_per_version
    versions = [a.version for a in archives]
    default = default_version or versions[-1]
    if default not in versions:
        raise LifecycleError(f"default version {default} is not among the archives {versions}")
    for archive in archives:
        if register:
            if progress:
                progress(f"registering {archive.model_name} {archive.version}")
            client.register(
                archive.path.name,
                initial_workers=workers,
                synchronous=True,
                batch_size=batch_size,
                max_batch_delay_ms=max_batch_delay_ms,
            )
    client.set_default(default)
    for version in versions:
        if progress:
            progress(f"waiting for {version} to answer")
        wait_until_answers(client, version, timeout_s=timeout_s)
    return default


def wait_until_answers(client: TorchServeSyncClient, version: str, *, timeout_s: float) -> None:
    """Block until ``version`` answers a prediction (``/ping`` is healthy long before that)."""
    last: list[TorchServeError] = []

    def answers() -> bool:
        try:
            client.predict([READY_CHECK_TEXT], version)
            return True
        except TorchServeError as exc:
            last[:] = [exc]
            return False

    try:
        wait_until(answers, timeout_s=timeout_s, interval_s=0.5)
    except NotReadyError:
        raise LifecycleError(f"version {version} did not answer: {last[0]}") from last[0]


def stop_torchserve(paths: ServingPaths, *, timeout_s: float = 30.0) -> bool:
    """Stop this home's TorchServe and its workers; False when none was running."""

    def ask(_: int) -> None:
        subprocess.run(
            [sys.executable, "-m", "ts.model_server", "--stop"],
            cwd=paths.torchserve_dir,
            env=torchserve_env(paths),
            capture_output=True,
            timeout=60,
            check=False,
        )

    pid = stop_pid_file(paths.torchserve_pid, TORCHSERVE_MAIN_CLASS, ask, timeout_s)
    if pid is None:
        return False
    paths.key_file.unlink(missing_ok=True)
    logger.info("TorchServe (pid %d) stopped", pid)
    return True


def torchserve_env(
    paths: ServingPaths,
    *,
    threads: int | None = None,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """TorchServe's environment: this process's, ``overrides`` on top, the handler's torch
    ``threads`` unless set already, and TEMP and the log folders under ``paths``."""
    env = {**os.environ, **(overrides or {})}
    if threads is not None:
        # A value the user set wins.
        env.setdefault(THREADS_ENV, str(threads))
    # TEMP for the JVM; TMPDIR/TMP as well because the launcher finds its pid file through
    # Python's tempfile, which looks at TMPDIR first.
    for name in ("TEMP", "TMPDIR", "TMP"):
        env[name] = str(paths.temp_dir)
    env["LOG_LOCATION"] = str(paths.torchserve_logs)
    env["METRICS_LOCATION"] = str(paths.torchserve_logs)
    return env
