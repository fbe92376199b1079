"""Starting and stopping the serving stack: TorchServe (config, versions) and the gateway.

Everything an instance writes lives under ``STARRATING_HOME`` (``./var`` by default)::

    torchserve/config.properties   the TorchServe config written at each start
    torchserve/key_file.json       TorchServe's tokens (it writes them to its working directory)
    torchserve/tmp/                TorchServe's TEMP: its pid file, sockets, extracted archives
    logs/torchserve/               TorchServe's logs (ts_log.log, model_log.log, access_log.log,
                                   model_metrics.log, ...) and the launcher's stdout.log
    logs/gateway.log               the gateway's output
    run/torchserve.pid, run/gateway.pid

One TorchServe per home: TorchServe keeps its pid file and sockets in TEMP, so instances with
different homes (and ports) do not collide. The config binds to loopback by default, turns on
Prometheus metrics, keeps token authorization on (``token_auth=False`` is the explicit
``--insecure-dev`` switch), enables the model-registration API only while the management address
is loopback, and allows registering archives from the model store only.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
from packaging.version import InvalidVersion, Version

from serving.sizing import THREADS_ENV, serving_layout
from serving.torchserve import KEY_FILE_NAME, TorchServeError, TorchServeSyncClient
from starrating.service import (
    DEFAULT_INFERENCE_URL,
    DEFAULT_MANAGEMENT_URL,
    ENV_PREFIX,
    LOOPBACK,
    METRICS_PORT,
    MODEL_NAME,
)

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = frozenset({LOOPBACK, "localhost", "::1"})
TORCHSERVE_MAIN_CLASS = "org.pytorch.serve.ModelServer"
READY_CHECK_TEXT = "readiness check"
Progress = Callable[[str], None]


class LifecycleError(RuntimeError):
    """The stack could not be started or stopped; the message says what to look at."""


class GatewayWontBeReadyError(LifecycleError):
    """The gateway started, but /readyz answers a code its caller said waiting cannot fix (a
    stored experiment routing to a version TorchServe does not have). The stack is left running
    so that it can be fixed through it."""


@dataclass(frozen=True)
class ServingPaths:
    """Where one serving instance keeps its files (see the module docstring)."""

    home: Path

    @classmethod
    def under(cls, home: Path) -> ServingPaths:
        return cls(home.resolve())

    @property
    def torchserve_dir(self) -> Path:
        return self.home / "torchserve"

    @property
    def config_file(self) -> Path:
        return self.torchserve_dir / "config.properties"

    @property
    def key_file(self) -> Path:
        return self.torchserve_dir / KEY_FILE_NAME

    @property
    def temp_dir(self) -> Path:
        return self.torchserve_dir / "tmp"

    @property
    def torchserve_logs(self) -> Path:
        return self.home / "logs" / "torchserve"

    @property
    def gateway_log(self) -> Path:
        return self.home / "logs" / "gateway.log"

    @property
    def torchserve_pid(self) -> Path:
        return self.home / "run" / "torchserve.pid"

    @property
    def gateway_pid(self) -> Path:
        return self.home / "run" / "gateway.pid"

    def make_dirs(self) -> None:
        for directory in (
            self.torchserve_dir,
            self.temp_dir,
            self.torchserve_logs,
            self.gateway_log.parent,
            self.torchserve_pid.parent,
        ):
            directory.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class TorchServeOptions:
    """How TorchServe is configured: addresses, model store, token authorization."""

    model_store: Path
    inference_url: str = DEFAULT_INFERENCE_URL
    management_url: str = DEFAULT_MANAGEMENT_URL
    metrics_port: int = METRICS_PORT
    # TorchServe 0.12 always starts its gRPC servers too (no switch to turn them off); a second
    # instance on the default ports exits at startup, so each instance needs its own.
    grpc_inference_port: int = 7070
    grpc_management_port: int = 7071
    token_auth: bool = True
    token_expiration_min: int = 60
    model_name: str = MODEL_NAME

    @classmethod
    def on_free_ports(cls, model_store: Path, *, token_auth: bool = True) -> TorchServeOptions:
        """Loopback on free ports (gRPC included): an instance beside any other, for tests
        and benchmarks."""
        return cls(
            model_store=model_store,
            inference_url=f"http://{LOOPBACK}:{free_port()}",
            management_url=f"http://{LOOPBACK}:{free_port()}",
            metrics_port=free_port(),
            grpc_inference_port=free_port(),
            grpc_management_port=free_port(),
            token_auth=token_auth,
        )

    @property
    def metrics_url(self) -> str:
        return f"http://{_url_host(self._host(self.inference_url))}:{self.metrics_port}"

    @staticmethod
    def _host(url: str) -> str:
        return urlsplit(url).hostname or LOOPBACK

    @property
    def model_api_enabled(self) -> bool:
        """Registering archives over HTTP is allowed only while management is loopback-only."""
        return urlsplit(self.management_url).hostname in LOOPBACK_HOSTS

    def config_properties(self, archives: list[ArchiveInfo]) -> str:
        """The text of TorchServe's ``config.properties``."""
        store = self.model_store.resolve()
        workers = serving_layout(max(1, len(archives))).workers_per_version
        lines = [
            "# Written by `starrating serve`; rewritten at each start.",
            f"inference_address={self.inference_url}",
            f"management_address={self.management_url}",
            f"metrics_address={self.metrics_url}",
            "metrics_mode=prometheus",
            f"grpc_inference_address={self._host(self.inference_url)}",
            f"grpc_inference_port={self.grpc_inference_port}",
            f"grpc_management_address={self._host(self.management_url)}",
            f"grpc_management_port={self.grpc_management_port}",
            # The handler's own metrics (batch sizes) reach :8082 without a metrics yaml.
            "model_metrics_auto_detect=true",
            f"model_store={store}",
            f"allowed_urls={_store_archive_urls(store)}",
            f"enable_model_api={str(self.model_api_enabled).lower()}",
            f"disable_token_authorization={str(not self.token_auth).lower()}",
            f"token_expiration_min={self.token_expiration_min}",
            # Workers per version and torch threads per worker from the CPUs this process may
            # use (serving.sizing); the archives' model-config.yaml leaves both open.
            f"default_workers_per_model={workers}",
            # Settings never come from TS_* variables a user happens to have set.
            "enable_envvars_config=false",
            "install_py_dep_per_model=false",
        ]
        if not self.model_api_enabled:
            # No registration API: load every version at startup instead.
            lines.append("load_models=" + ",".join(a.path.name for a in archives))
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ArchiveInfo:
    """A ``.mar`` in the model store and the model name and version in its manifest."""

    path: Path
    model_name: str
    version: str


@dataclass(frozen=True)
class ServingStack:
    """What ``serve`` started."""

    inference_url: str
    management_url: str
    metrics_url: str
    key_file: Path | None
    versions: list[str]
    default_version: str
    gateway_url: str | None
    torchserve_pid: int
    gateway_pid: int | None
    paths: ServingPaths


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def version_key(version: str) -> tuple[int, Version | str]:
    """Sort key for model versions: PEP 440 order where it parses (1.10 after 1.9), else text."""
    try:
        return (1, Version(version))
    except InvalidVersion:
        return (0, version)


def discover_archives(model_store: Path, model_name: str = MODEL_NAME) -> list[ArchiveInfo]:
    """The model's archives in ``model_store``, oldest version first (read from each manifest)."""
    found: dict[str, ArchiveInfo] = {}
    for path in sorted(model_store.glob("*.mar")):
        try:
            with zipfile.ZipFile(path) as archive:
                manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
            name = str(manifest["model"]["modelName"])
            version = str(manifest["model"]["modelVersion"])
        except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
            logger.warning("skipping %s: not a readable model archive (%s)", path, exc)
            continue
        if name != model_name:
            continue
        if version in found:
            raise LifecycleError(
                f"{path.name} and {found[version].path.name} both hold {model_name} version "
                f"{version}; remove one from {model_store}"
            )
        found[version] = ArchiveInfo(path, name, version)
    return sorted(found.values(), key=lambda a: version_key(a.version))


def start_torchserve(
    paths: ServingPaths,
    options: TorchServeOptions,
    archives: list[ArchiveInfo],
    *,
    timeout_s: float = 90.0,
) -> int:
    """Write the config, start TorchServe detached and wait for /ping; returns the JVM pid."""
    if running_pid(paths.torchserve_pid, TORCHSERVE_MAIN_CLASS) is not None:
        raise LifecycleError(
            f"TorchServe of {paths.home} is already running; run `starrating stop` first"
        )
    paths.make_dirs()
    paths.config_file.write_text(options.config_properties(archives))
    layout = serving_layout(max(1, len(archives)))
    paths.key_file.unlink(missing_ok=True)
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
            env=_torchserve_env(paths, threads=layout.threads_per_worker),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            timeout=60,
            check=False,
        )
    jvm_pid = _read_pid(paths.temp_dir / ".model_server.pid")
    if result.returncode != 0 or jvm_pid is None:
        raise LifecycleError(
            f"TorchServe did not start (exit {result.returncode}); see {launcher_log}:\n"
            + _tail(launcher_log)
        )
    paths.torchserve_pid.write_text(f"{jvm_pid}\n")
    key_file = paths.key_file if options.token_auth else None
    with TorchServeSyncClient(
        options.inference_url, options.management_url, key_file=key_file, timeout=5.0
    ) as client:
        deadline = time.monotonic() + timeout_s
        while not client.ping():
            exited = not psutil.pid_exists(jvm_pid)
            if exited or time.monotonic() > deadline:
                stop_torchserve(paths)
                why = "it exited" if exited else f"no healthy /ping in {timeout_s:.0f} s"
                raise LifecycleError(
                    f"TorchServe did not come up on {options.inference_url} ({why}); see "
                    f"{paths.torchserve_logs / 'ts_log.log'}:\n"
                    + _tail(paths.torchserve_logs / "ts_log.log")
                )
            time.sleep(0.2)
    logger.info("TorchServe is up (pid %d) on %s", jvm_pid, options.inference_url)
    return jvm_pid


def register_versions(
    client: TorchServeSyncClient,
    archives: list[ArchiveInfo],
    *,
    default_version: str | None = None,
    register: bool = True,
    timeout_s: float = 300.0,
    progress: Progress | None = None,
) -> str:
    """Register every archive, make the newest (or ``default_version``) the default, and wait
    until each version answers a real prediction. Returns the default version."""
    if not archives:
        raise LifecycleError("no model archives to serve")
    workers = serving_layout(len(archives)).workers_per_version
    versions = [a.version for a in archives]
    default = default_version or versions[-1]
    if default not in versions:
        raise LifecycleError(f"default version {default} is not among the archives {versions}")
    for archive in archives:
        if register:
            if progress:
                progress(f"registering {archive.model_name} {archive.version}")
            client.register(archive.path.name, initial_workers=workers, synchronous=True)
    client.set_default(default)
    for version in versions:
        if progress:
            progress(f"waiting for {version} to answer")
        wait_until_answers(client, version, timeout_s=timeout_s)
    return default


def wait_until_answers(client: TorchServeSyncClient, version: str, *, timeout_s: float) -> None:
    """Block until ``version`` answers a prediction (``/ping`` is healthy long before that)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.predict([READY_CHECK_TEXT], version)
            return
        except TorchServeError as exc:
            if time.monotonic() > deadline:
                raise LifecycleError(f"version {version} did not answer: {exc}") from exc
        time.sleep(0.5)


def stop_torchserve(paths: ServingPaths, *, timeout_s: float = 30.0) -> bool:
    """Stop this home's TorchServe and its workers; False when none was running."""
    pid = running_pid(paths.torchserve_pid, TORCHSERVE_MAIN_CLASS)
    if pid is None:
        paths.torchserve_pid.unlink(missing_ok=True)
        return False
    workers = _children(pid)
    subprocess.run(
        [sys.executable, "-m", "ts.model_server", "--stop"],
        cwd=paths.torchserve_dir,
        env=_torchserve_env(paths),
        capture_output=True,
        timeout=60,
        check=False,
    )
    _wait_gone([pid, *workers], timeout_s)
    paths.torchserve_pid.unlink(missing_ok=True)
    paths.key_file.unlink(missing_ok=True)
    logger.info("TorchServe (pid %d) stopped", pid)
    return True


def start_gateway(
    paths: ServingPaths,
    env: Mapping[str, str],
    *,
    host: str,
    port: int,
    workers: int = 1,
    timeout_s: float = 60.0,
    give_up_on: Collection[str] = (),
) -> int:
    """Start ``uvicorn api.app:create_app --factory`` detached; wait for /readyz; its pid.

    The gateway is a program to this module, not a library: it is started by its command line
    and known through its HTTP answers, so nothing of ``api`` is imported here. ``give_up_on``
    are the error codes of /readyz after which waiting cannot help; whoever knows the gateway's
    codes names them (``starrating serve``: the stale experiment). With several workers,
    Prometheus metrics go through a fresh multiprocess directory so that /metrics adds up every
    worker."""
    if running_pid(paths.gateway_pid, "uvicorn") is not None:
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
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    paths.gateway_pid.write_text(f"{process.pid}\n")
    url = f"http://{_url_host(host)}:{port}/readyz"
    deadline = time.monotonic() + timeout_s
    reason = "it never answered"
    with httpx.Client(timeout=2.0) as http:
        while True:
            if process.poll() is not None:
                paths.gateway_pid.unlink(missing_ok=True)
                raise LifecycleError(
                    f"the gateway exited (code {process.returncode}); see {paths.gateway_log}:\n"
                    + _tail(paths.gateway_log)
                )
            try:
                readyz = http.get(url)
                if readyz.status_code == 200:
                    break
                code, reason = _readiness_error(readyz)
                if code in give_up_on:
                    # Waiting cannot help; the gateway stays up to be fixed through it.
                    raise GatewayWontBeReadyError(
                        f"the gateway cannot serve: {reason}. The gateway (pid {process.pid}) "
                        "and TorchServe are left running for that; `starrating stop` stops them"
                    )
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                stop_gateway(paths)
                raise LifecycleError(
                    f"the gateway did not become ready at {url}: {reason}; see {paths.gateway_log}"
                )
            time.sleep(0.2)
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
    pid = running_pid(paths.gateway_pid, "uvicorn")
    if pid is None:
        paths.gateway_pid.unlink(missing_ok=True)
        return False
    children = _children(pid)
    os.kill(pid, signal.SIGTERM)
    _wait_gone([pid, *children], timeout_s)
    paths.gateway_pid.unlink(missing_ok=True)
    logger.info("gateway (pid %d) stopped", pid)
    return True


def gateway_env(
    base: Mapping[str, str], paths: ServingPaths, options: TorchServeOptions
) -> dict[str, str]:
    """The gateway's environment: ``base`` plus where TorchServe is and how to authenticate."""
    env = dict(base)
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


def coalescing_env(versions: int, cpus: int | None = None) -> dict[str, str]:
    """The gateway keeps as many coalesced requests in flight per version as TorchServe runs
    workers for it (``serving_layout``), so that no worker idles while predictions wait."""
    workers = serving_layout(versions, cpus).workers_per_version
    return {f"{ENV_PREFIX}COALESCE_MAX_IN_FLIGHT": str(workers)}


def serve(
    paths: ServingPaths,
    options: TorchServeOptions,
    *,
    gateway_host: str | None = LOOPBACK,
    gateway_port: int,
    gateway_workers: int = 1,
    gateway_give_up_on: Collection[str] = (),
    default_version: str | None = None,
    env: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> ServingStack:
    """Start TorchServe with every archived version, then the gateway (None: no gateway) on
    ``gateway_port``; ``gateway_give_up_on`` as ``start_gateway``'s ``give_up_on``."""
    archives = discover_archives(options.model_store, options.model_name)
    if not archives:
        raise LifecycleError(
            f"no {options.model_name} archives in {options.model_store}; "
            "run `starrating archive --run RUN --version V` first"
        )
    if progress:
        progress(f"starting TorchServe ({len(archives)} versions)")
    jvm_pid = start_torchserve(paths, options, archives)
    gateway_pid: int | None = None
    gateway_url: str | None = None
    try:
        key_file = paths.key_file if options.token_auth else None
        with TorchServeSyncClient(
            options.inference_url,
            options.management_url,
            model_name=options.model_name,
            key_file=key_file,
            timeout=300.0,
        ) as client:
            default = register_versions(
                client,
                archives,
                default_version=default_version,
                register=options.model_api_enabled,
                progress=progress,
            )
        if gateway_host is not None:
            if progress:
                progress("starting the gateway")
            base = env if env is not None else os.environ
            gateway_pid = start_gateway(
                paths,
                # A value the caller set wins over the one from the layout.
                {**coalescing_env(len(archives)), **gateway_env(base, paths, options)},
                host=gateway_host,
                port=gateway_port,
                workers=gateway_workers,
                give_up_on=gateway_give_up_on,
            )
            gateway_url = f"http://{_url_host(gateway_host)}:{gateway_port}"
    except GatewayWontBeReadyError:
        raise
    except BaseException:
        stop_torchserve(paths)
        raise
    return ServingStack(
        inference_url=options.inference_url,
        management_url=options.management_url,
        metrics_url=options.metrics_url,
        key_file=paths.key_file if options.token_auth else None,
        versions=[a.version for a in archives],
        default_version=default,
        gateway_url=gateway_url,
        torchserve_pid=jvm_pid,
        gateway_pid=gateway_pid,
        paths=paths,
    )


def stop(paths: ServingPaths) -> tuple[bool, bool]:
    """Stop the gateway, then TorchServe: (gateway was running, TorchServe was running)."""
    return stop_gateway(paths), stop_torchserve(paths)


def running_pid(pid_file: Path, marker: str) -> int | None:
    """The pid in ``pid_file`` if that process is alive and its command line has ``marker``
    (a pid reused by an unrelated process is not ours to signal)."""
    pid = _read_pid(pid_file)
    if pid is None:
        return None
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return pid if any(marker in part for part in process.cmdline()) else None
    except psutil.Error:
        return None


def _torchserve_env(paths: ServingPaths, *, threads: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if threads is not None:
        # The handler's torch threads; a value the user set wins.
        env.setdefault(THREADS_ENV, str(threads))
    # TEMP for the JVM; TMPDIR/TMP as well because the launcher finds its pid file through
    # Python's tempfile, which looks at TMPDIR first.
    for name in ("TEMP", "TMPDIR", "TMP"):
        env[name] = str(paths.temp_dir)
    env["LOG_LOCATION"] = str(paths.torchserve_logs)
    env["METRICS_LOCATION"] = str(paths.torchserve_logs)
    return env


def _store_archive_urls(store: Path) -> str:
    """The regex of the only archive URLs TorchServe may fetch: ``.mar`` files directly in the
    store, by plain file name. TorchServe decodes %2e%2e only after matching, so a looser
    ``STORE/.*`` let ``file://STORE/%2e%2e/x.mar`` load an archive from outside the store.

    Written without backslashes, which Java's Properties.load would drop: metacharacters of the
    path go in brackets; the few without a bracket form Java and Python share match any one
    character but "/".
    """
    literal = {c: f"[{c}]" for c in ".*+?$|(){}"} | {c: "[^/]" for c in "^[]\\"}
    path = "".join(literal.get(c, c) for c in str(store))
    return f"file://{path}/[A-Za-z0-9][A-Za-z0-9._-]*[.]mar"


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _children(pid: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _wait_gone(pids: list[int], timeout_s: float) -> None:
    """Wait for the processes to exit; kill what is left after ``timeout_s``."""
    processes = []
    for pid in pids:
        try:
            processes.append(psutil.Process(pid))
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    for process in alive:
        logger.warning("pid %d did not exit in %.0f s; killing it", process.pid, timeout_s)
        try:
            process.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(alive, timeout=5)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
