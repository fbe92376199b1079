"""``starrating archive``, ``starrating serve`` and ``starrating stop``: from a trained run to a
running TorchServe + gateway and back."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import typer

from cli.app import app, console, fail, needs_extra
from starrating.service import METRICS_PORT
from starrating.settings import CoreSettings

if TYPE_CHECKING:
    from api.settings import Settings
    from serving.launcher import StackPlan


@app.command()
@needs_extra("train")
def archive(
    run: Path = typer.Option(..., "--run", help="Run directory written by `starrating train`."),
    version: str = typer.Option(..., "--version", help="Model version, e.g. 1.0."),
    model_store: Path | None = typer.Option(
        None, "--model-store", help="Where .mar files go.", show_default="STARRATING_MODEL_STORE"
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing version."),
    precision: str = typer.Option(
        "auto",
        "--precision",
        help="Numerics the handler serves in: auto (the fastest the serving device runs "
        "natively among those that lose at most 0.5 validation-accuracy points against fp32 "
        "and change at most 0.5% of its answers, measured now), "
        "fp32, bf16 or int8 (CPU only).",
    ),
    validation: Path | None = typer.Option(
        None,
        "--validation",
        help="Split to measure the numerics on.",
        show_default="the run's validation split",
    ),
) -> None:
    """Pack a trained run into model_store/stars-VERSION.mar (handler, core, model, metrics).

    The accuracy of fp32, bf16 and int8 on the validation split is measured and packed with it.
    """
    from handlers.numerics import PRECISION_CHOICES
    from training.archive import ArchiveError, archive_run

    if precision not in PRECISION_CHOICES:
        raise fail(f"--precision must be one of {', '.join(PRECISION_CHOICES)}, not {precision!r}")
    store = model_store if model_store is not None else CoreSettings().model_store
    try:
        with console.status("measuring numerics on the validation split, then archiving"):
            result = archive_run(
                run,
                version,
                store,
                force=force,
                precision=precision,  # type: ignore[arg-type]
                validation=validation,
            )
    except ArchiveError as exc:
        raise fail(str(exc)) from exc
    extras = f" with {', '.join(result.run_files)}" if result.run_files else ""
    console.print(
        f"wrote [bold]{result.path}[/] (version {result.version}, "
        f"{result.size_bytes / 1e6:.1f} MB){extras}"
    )
    console.print(result.numerics.summary(), markup=False)


@app.command()
@needs_extra("gateway,serve")
def serve(
    model_store: Path | None = typer.Option(
        None, "--model-store", help="Archives to serve.", show_default="STARRATING_MODEL_STORE"
    ),
    insecure_dev: bool = typer.Option(
        False,
        "--insecure-dev",
        help="Turn TorchServe token authorization off (local work only, never deployed).",
    ),
    default_version: str | None = typer.Option(
        None, "--default-version", help="Version for unversioned requests.", show_default="newest"
    ),
    metrics_port: int = typer.Option(METRICS_PORT, help="TorchServe's Prometheus metrics port."),
    grpc_ports: tuple[int, int] = typer.Option(
        (7070, 7071), help="TorchServe's gRPC inference and management ports (always opened)."
    ),
    gateway: bool = typer.Option(True, "--gateway/--no-gateway", help="Start the gateway too."),
) -> None:
    """Start TorchServe with every archived version, then the gateway; return once both answer.

    Addresses come from STARRATING_TORCHSERVE_URL, STARRATING_TORCHSERVE_MANAGEMENT_URL,
    STARRATING_HOST and STARRATING_PORT; logs and pid files go under STARRATING_HOME.
    """
    from api.settings import Settings
    from serving.addresses import LOOPBACK_HOSTS
    from serving.errors import LifecycleError
    from serving.launcher import launch
    from serving.torchserve import TorchServeError

    # One line per polling request would drown the progress shown while the stack starts.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    plan = stack_plan(
        Settings(),
        model_store=model_store,
        token_auth=not insecure_dev,
        metrics_port=metrics_port,
        grpc_ports=grpc_ports,
        gateway=gateway,
        default_version=default_version,
    )
    paths = plan.paths
    for url in (plan.torchserve.inference_url, plan.torchserve.management_url):
        if urlsplit(url).hostname not in LOOPBACK_HOSTS:
            console.print(f"[yellow]note:[/] TorchServe will listen beyond loopback at {url}")
    try:
        with console.status("starting") as status:
            stack = launch(plan, progress=lambda message: status.update(message))
    except (LifecycleError, TorchServeError) as exc:
        raise fail(
            f"{exc}\nlogs: {paths.torchserve_logs} (model_log.log for the handler), "
            f"{paths.gateway_log}"
        ) from exc
    if insecure_dev:
        console.print("[yellow]TorchServe token authorization is OFF (--insecure-dev)[/]")
    console.print(
        f"TorchServe: {stack.inference_url} (versions {', '.join(stack.versions)}; "
        f"default {stack.default_version}), management {stack.management_url}, "
        f"metrics {stack.metrics_url}/metrics"
    )
    if stack.key_file is not None:
        console.print(f"TorchServe tokens: {stack.key_file}")
    if stack.gateway is not None:
        url = stack.gateway.url
        console.print(f"gateway: [bold]{url}[/] (dashboard {url}/dashboard)")
    console.print(f"logs: {paths.home / 'logs'}; stop with `starrating stop`")


def stack_plan(
    settings: Settings,
    *,
    model_store: Path | None = None,
    token_auth: bool = True,
    metrics_port: int = METRICS_PORT,
    grpc_ports: tuple[int, int] = (7070, 7071),
    gateway: bool = True,
    gateway_env: Mapping[str, str] | None = None,
    default_version: str | None = None,
) -> StackPlan:
    """The stack the gateway's ``settings`` describe (home, TorchServe's addresses, the
    gateway's address and workers), decided once: ``starrating serve`` and the demo launch it.
    ``gateway_env``: the gateway's environment (None: this process's)."""
    from api.seams import STALE_EXPERIMENT
    from serving.launcher import GatewayOptions, StackPlan
    from serving.paths import ServingPaths
    from serving.torchserve_config import TorchServeOptions

    return StackPlan(
        paths=ServingPaths.under(settings.home),
        torchserve=TorchServeOptions(
            model_store=model_store if model_store is not None else settings.model_store,
            inference_url=settings.torchserve_url,
            management_url=settings.torchserve_management_url,
            metrics_port=metrics_port,
            grpc_inference_port=grpc_ports[0],
            grpc_management_port=grpc_ports[1],
            token_auth=token_auth,
            model_name=settings.model_name,
        ),
        gateway=GatewayOptions(
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            env=gateway_env,
            # A stored experiment routing to a version this store lacks: say so at once.
            give_up_on={STALE_EXPERIMENT},
        )
        if gateway
        else None,
        default_version=default_version,
    )


@app.command()
@needs_extra("serve")
def stop() -> None:
    """Stop the gateway and TorchServe started by `starrating serve` (same STARRATING_HOME)."""
    from serving.launcher import stop as stop_stack
    from serving.paths import ServingPaths

    paths = ServingPaths.under(CoreSettings().home)
    gateway_was_up, torchserve_was_up = stop_stack(paths)
    for name, was_up in (("gateway", gateway_was_up), ("TorchServe", torchserve_was_up)):
        console.print(f"{name}: {'stopped' if was_up else 'was not running'}")
