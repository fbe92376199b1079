"""The one way the local stack is started and stopped: TorchServe, the gateway, or both.

A ``StackPlan`` is the whole decision (where files go, how TorchServe is configured, whether and
where the gateway runs); the launcher reads the model store once, sizes the stack once
(``serving_layout``) and hands that one layout to TorchServe's config, its workers' threads,
the registration and the gateway's environment.

- ``launch(plan)`` starts what the plan names, waits until every version answers a prediction
  and the gateway's /readyz is 200, and leaves it running (``starrating serve``, the demo);
  ``stop(paths)`` stops it (``starrating stop``).
- ``running_stack(plan)`` is the same as a context manager that stops on exit (benchmarks, the
  soak run, tests).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from serving.addresses import url_host
from serving.archives import ArchiveInfo, discover_archives
from serving.errors import GatewayWontBeReadyError, LifecycleError
from serving.gateway_process import gateway_env, start_gateway, stop_gateway
from serving.paths import ServingPaths
from serving.sizing import ServingLayout, serving_layout
from serving.torchserve import TorchServeSyncClient
from serving.torchserve_config import TorchServeOptions
from serving.torchserve_process import (
    Progress,
    register_versions,
    start_torchserve,
    stop_torchserve,
)
from starrating.service import LOOPBACK

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewayOptions:
    """How the gateway process runs: address, uvicorn workers, its base environment."""

    port: int
    host: str = LOOPBACK
    workers: int = 1
    env: Mapping[str, str] | None = None
    """The gateway's settings (``STARRATING_*``) and the rest of its environment; None: this
    process's. Where TorchServe is and the in-flight bound from the layout are added to it."""
    give_up_on: Collection[str] = ()
    """/readyz error codes after which waiting cannot help (``start_gateway``)."""
    checkout: Path | None = None
    """Run the gateway of this checkout (a ``git worktree``); None: the installed one."""

    @property
    def url(self) -> str:
        return f"http://{url_host(self.host)}:{self.port}"


@dataclass(frozen=True)
class StackPlan:
    """What to start, decided once by the caller."""

    paths: ServingPaths
    torchserve: TorchServeOptions
    """TorchServe's configuration, or, without ``start_torchserve``, where the gateway finds
    a TorchServe (or a fake of one) that is already answering."""
    gateway: GatewayOptions | None = None
    """None: TorchServe alone."""
    start_torchserve: bool = True
    default_version: str | None = None
    """The version unversioned requests get; None: the newest."""
    layout: ServingLayout | None = None
    """Workers per version and threads per worker; None: ``serving_layout`` for the archives on
    this process's CPUs."""
    handler_env: Mapping[str, str] = field(default_factory=dict)
    """``STARRATING_HANDLER_*`` for TorchServe's workers, over this process's environment."""
    batch_size: int | None = None
    """TorchServe's batch size and delay per version; None: the archive's model-config.yaml."""
    max_batch_delay_ms: int | None = None


@dataclass(frozen=True)
class RunningGateway:
    """The gateway process a launch started."""

    url: str
    pid: int
    env: dict[str, str]
    """The environment it was started with (to start it again the same way)."""


@dataclass(frozen=True)
class ServingStack:
    """What ``launch`` started and where it answers."""

    plan: StackPlan
    versions: list[str]
    default_version: str | None
    """None when the plan started no TorchServe."""
    layout: ServingLayout | None
    torchserve_pid: int | None
    gateway: RunningGateway | None

    def started_gateway(self) -> RunningGateway:
        """The gateway, for a caller whose plan has one."""
        if self.gateway is None:
            raise LifecycleError("this stack's plan started no gateway")
        return self.gateway

    @property
    def paths(self) -> ServingPaths:
        return self.plan.paths

    @property
    def options(self) -> TorchServeOptions:
        return self.plan.torchserve

    @property
    def inference_url(self) -> str:
        return self.options.inference_url

    @property
    def management_url(self) -> str:
        return self.options.management_url

    @property
    def metrics_url(self) -> str:
        return self.options.metrics_url

    @property
    def key_file(self) -> Path | None:
        return self.paths.key_file if self.options.token_auth else None


def launch(plan: StackPlan, *, progress: Progress | None = None) -> ServingStack:
    """Start TorchServe with every archived version (unless the plan says it runs already),
    then the gateway (if the plan has one); return once all answer and leave them running.

    On failure whatever was started is stopped again, except after
    ``GatewayWontBeReadyError``: then both stay up to be fixed through the gateway."""
    options = plan.torchserve
    archives: list[ArchiveInfo] = []
    layout = plan.layout
    torchserve_pid: int | None = None
    default: str | None = None
    gateway: RunningGateway | None = None
    if plan.start_torchserve:
        archives = discover_archives(options.model_store, options.model_name)
        if not archives:
            raise LifecycleError(
                f"no {options.model_name} archives in {options.model_store}; "
                "run `starrating archive --run RUN --version V` first"
            )
        if layout is None:
            layout = serving_layout(len(archives))
        if progress:
            progress(f"starting TorchServe ({len(archives)} versions)")
        torchserve_pid = start_torchserve(
            plan.paths, options, archives, layout=layout, handler_env=plan.handler_env
        )
    try:
        if plan.start_torchserve:
            default = _register(plan, archives, layout, progress)
        if plan.gateway is not None:
            if progress:
                progress("starting the gateway")
            base = plan.gateway.env if plan.gateway.env is not None else os.environ
            env = gateway_env(base, plan.paths, options, layout=layout)
            pid = start_gateway(
                plan.paths,
                env,
                host=plan.gateway.host,
                port=plan.gateway.port,
                workers=plan.gateway.workers,
                give_up_on=plan.gateway.give_up_on,
                cwd=plan.gateway.checkout,
            )
            gateway = RunningGateway(plan.gateway.url, pid, env)
    except GatewayWontBeReadyError:
        raise
    except BaseException:
        if plan.start_torchserve:
            stop_torchserve(plan.paths)
        raise
    return ServingStack(
        plan=plan,
        versions=[a.version for a in archives],
        default_version=default,
        layout=layout,
        torchserve_pid=torchserve_pid,
        gateway=gateway,
    )


def _register(
    plan: StackPlan,
    archives: list[ArchiveInfo],
    layout: ServingLayout | None,
    progress: Progress | None,
) -> str:
    options = plan.torchserve
    with TorchServeSyncClient(
        options.inference_url,
        options.management_url,
        model_name=options.model_name,
        key_file=plan.paths.key_file if options.token_auth else None,
        timeout=300.0,
    ) as client:
        return register_versions(
            client,
            archives,
            default_version=plan.default_version,
            register=options.model_api_enabled,
            workers=None if layout is None else layout.workers_per_version,
            batch_size=plan.batch_size,
            max_batch_delay_ms=plan.max_batch_delay_ms,
            progress=progress,
        )


def stop(paths: ServingPaths) -> tuple[bool, bool]:
    """Stop the gateway, then TorchServe: (gateway was running, TorchServe was running)."""
    return stop_gateway(paths), stop_torchserve(paths)


@contextmanager
def running_stack(plan: StackPlan, *, progress: Progress | None = None) -> Iterator[ServingStack]:
    """``launch(plan)``, and on exit ``stop`` what it started."""
    try:
        stack = launch(plan, progress=progress)
    except GatewayWontBeReadyError:
        stop(plan.paths)
        raise
    try:
        yield stack
    finally:
        stop(plan.paths)
