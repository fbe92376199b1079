"""``python -m loadtests.gateway_overhead``: what the gateway itself adds to one prediction.

The goal of one-user gateway overhead <= 1.5 ms p50 (docs/performance.md) cannot be read off the
real stack on a small CPU: TorchServe's own noise swamps a millisecond. Here TorchServe is
replaced by a fake (aiohttp, TorchServe's wire format) that answers after a fixed delay, and in
front of it runs the real gateway (``uvicorn api.app:create_app --factory`` as ``starrating
serve`` starts it, SQLite under a temporary ``STARRATING_HOME``, no experiment). For each
upstream delay, each user sends one-review predictions one after another, alternating between
the gateway and the same request straight to the fake, so both are measured side by side; the
overhead is the difference of the two p50s (the fake's own service time is in both). The gateway
process's CPU time per request comes from psutil. ``--gateway-source DIR`` runs another
checkout's gateway (a ``git worktree`` of an older commit) against the same harness.
Run::

    python -m loadtests.gateway_overhead --requests 500 --json docs/bench/gateway-overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from loadtests.servers import stop_process, wait_until_ready
from loadtests.stack import process_tree_cpu
from serving.addresses import free_port
from serving.gateway_process import without_settings
from serving.launcher import GatewayOptions, StackPlan, running_stack
from serving.paths import ServingPaths
from serving.torchserve_config import TorchServeOptions
from starrating.service import LOOPBACK, MODEL_NAME

MODULE = "loadtests.gateway_overhead"
DEFAULT_DELAYS_MS = (0.0, 30.0)
WARMUP_REQUESTS = 30  # per user and path, not measured: connections, caches, lazy imports
REVIEW = "Sturdy, quiet and easy to clean. It does what it says and nothing breaks."
PREDICTIONS_PATH = f"/predictions/{MODEL_NAME}"  # where the gateway sends one with no experiment
FAKE_VERSION = "1.0"
CHECKOUT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class OverheadResult:
    """One upstream delay: round trips through the gateway and straight to the fake (ms)."""

    upstream_delay_ms: float
    users: int
    requests: int
    gateway_p50_ms: float
    gateway_p95_ms: float
    direct_p50_ms: float
    direct_p95_ms: float
    overhead_p50_ms: float
    gateway_cpu_ms_per_request: float


def serve_upstream(inference_port: int, management_port: int, delay_ms: float) -> None:
    """The fake TorchServe (its own process): one ready default version answering after
    ``delay_ms``, in the wire format of ``tests/api/conftest.py``'s ``FakeTorchServe``."""
    from aiohttp import web

    version = {
        "modelName": MODEL_NAME,
        "modelVersion": FAKE_VERSION,
        "modelUrl": f"{MODEL_NAME}-{FAKE_VERSION}.mar",
        "batchSize": 8,
        "maxBatchDelay": 5,
        "isDefault": True,
        "workers": [{"id": "9000", "status": "READY"}],
    }
    probabilities = {"1": 0.05, "2": 0.05, "3": 0.1, "4": 0.6, "5": 0.2}
    answer = {"stars": 4, "probabilities": probabilities, "model_version": FAKE_VERSION}

    async def predict(request: web.Request) -> web.Response:
        texts = (await request.json())["texts"]
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        return web.json_response([answer] * len(texts))

    async def ping(_: web.Request) -> web.Response:
        return web.json_response({"status": "Healthy"})

    async def describe(_: web.Request) -> web.Response:
        return web.json_response([version])

    inference, management = web.Application(), web.Application()
    inference.router.add_post(PREDICTIONS_PATH, predict)
    inference.router.add_post(PREDICTIONS_PATH + "/{v}", predict)
    inference.router.add_get("/ping", ping)
    management.router.add_get(f"/models/{MODEL_NAME}", describe)
    management.router.add_get(f"/models/{MODEL_NAME}/{{v}}", describe)

    async def run() -> None:
        for app, port in ((inference, inference_port), (management, management_port)):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, LOOPBACK, port).start()
        await asyncio.Event().wait()

    asyncio.run(run())


@contextlib.contextmanager
def bench_stack(home: Path, delay_ms: float, source: Path) -> Iterator[tuple[str, str, int]]:
    """The fake upstream and, in front of it, the gateway of the checkout ``source`` as
    ``starrating serve`` starts it, with default settings: (gateway URL, fake URL, gateway pid).
    """
    paths = ServingPaths.under(home)
    paths.make_dirs()
    ports = (free_port(), free_port())
    plan = StackPlan(
        paths=paths,
        torchserve=TorchServeOptions(
            model_store=home / "model_store",
            inference_url=f"http://{LOOPBACK}:{ports[0]}",
            management_url=f"http://{LOOPBACK}:{ports[1]}",
            token_auth=False,
        ),
        start_torchserve=False,
        # No STARRATING_* of the caller's (a database, a log level): the defaults, SQLite in home.
        gateway=GatewayOptions(port=free_port(), env=without_settings(os.environ), checkout=source),
    )
    plan.torchserve.model_store.mkdir()
    log = paths.home / "logs" / "upstream.log"
    cmd = [sys.executable, "-m", MODULE, "--serve-upstream", *map(str, ports)]
    with log.open("wb") as handle:
        cmd += ["--upstream-delay-ms", str(delay_ms)]
        fake = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT)
    try:
        wait_until_ready(f"{plan.torchserve.inference_url}/ping", fake, log, timeout=30.0)
        with running_stack(plan) as stack:
            gateway = stack.started_gateway()
            yield gateway.url, stack.inference_url, gateway.pid
    finally:
        stop_process(fake)


async def drive(
    gateway_url: str,
    upstream_url: str,
    gateway_pid: int,
    users: int,
    requests: int,
    on_pair: Callable[[], None],
) -> tuple[dict[str, list[float]], float]:
    """Round trips in ms (``gateway``, ``direct``) of ``requests`` pairs after a warm-up, and
    the gateway's CPU seconds over them; each user sends its share one after another."""
    timings: dict[str, list[float]] = {"gateway": [], "direct": []}
    limits = httpx.Limits(max_connections=users, max_keepalive_connections=users)
    async with (
        httpx.AsyncClient(base_url=gateway_url, limits=limits) as gateway,
        httpx.AsyncClient(base_url=upstream_url, limits=limits) as upstream,
    ):
        calls = (
            ("gateway", gateway, "/v1/predictions", {"text": REVIEW}),
            ("direct", upstream, PREDICTIONS_PATH, {"texts": [REVIEW]}),
        )

        async def user(count: int, measured: bool) -> None:
            for i in range(count):
                # Alternate which goes first, so that neither always follows the other.
                for name, client, path, body in calls[:: -1 if i % 2 else 1]:
                    start = time.perf_counter()
                    response = await client.post(path, json=body)
                    elapsed_ms = (time.perf_counter() - start) * 1000
                    response.raise_for_status()
                    if measured:
                        timings[name].append(elapsed_ms)
                if measured:
                    on_pair()

        await asyncio.gather(*(user(WARMUP_REQUESTS, False) for _ in range(users)))
        cpu_before = process_tree_cpu(gateway_pid)
        shares = [requests // users + (u < requests % users) for u in range(users)]
        await asyncio.gather(*(user(share, True) for share in shares))
        cpu_seconds = process_tree_cpu(gateway_pid) - cpu_before
    return timings, cpu_seconds


def measure(
    delay_ms: float, users: int, requests: int, source: Path, on_pair: Callable[[], None]
) -> OverheadResult:
    """One upstream delay, on a fresh fake and gateway."""
    with (
        tempfile.TemporaryDirectory(prefix="gateway-overhead-") as tmp,
        bench_stack(Path(tmp), delay_ms, source) as (gateway_url, upstream_url, pid),
    ):
        timings, cpu_seconds = asyncio.run(
            drive(gateway_url, upstream_url, pid, users, requests, on_pair)
        )
    (g50, g95), (d50, d95) = (np.percentile(timings[k], [50, 95]).tolist() for k in timings)
    cpu_ms = cpu_seconds * 1000 / requests
    return OverheadResult(delay_ms, users, requests, g50, g95, d50, d95, g50 - d50, cpu_ms)


def git_commit(checkout: Path) -> str | None:
    """The commit checked out in ``checkout``; None outside a git checkout."""
    cmd = ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"]
    return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip() or None


def render(results: Sequence[OverheadResult]) -> Table:
    first = results[0]
    title = f"gateway overhead (ms): {first.users} user(s), {first.requests} requests a path"
    table = Table(title=title)
    headers = ("upstream delay", "p50", "p95", "direct p50", "direct p95", "overhead p50")
    for header in (*headers, "gateway CPU a request"):
        table.add_column(header, justify="right")
    for r in results:
        values = [r.gateway_p50_ms, r.gateway_p95_ms, r.direct_p50_ms, r.direct_p95_ms]
        values += [r.overhead_p50_ms, r.gateway_cpu_ms_per_request]
        table.add_row(f"{r.upstream_delay_ms:g}", *(f"{v:.2f}" for v in values))
    return table


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="per path and delay (500)")
    parser.add_argument(
        "--upstream-delay-ms",
        type=float,
        nargs="+",
        default=list(DEFAULT_DELAYS_MS),
        help="the fake TorchServe's answer delays, one measurement each (default 0 30)",
    )
    parser.add_argument("--users", type=int, default=1, help="concurrent users (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--gateway-source",
        type=Path,
        default=CHECKOUT,
        help="run the gateway of this checkout, e.g. a git worktree (default: this one)",
    )
    # The fake upstream's own process: ... --serve-upstream INFERENCE_PORT MANAGEMENT_PORT
    parser.add_argument("--serve-upstream", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.users < 1 or args.requests < args.users:
        parser.error("--users must be >= 1 and --requests >= --users")
    if any(not 0 <= d <= 10_000 for d in args.upstream_delay_ms):
        parser.error("--upstream-delay-ms must be between 0 and 10000")
    args.gateway_source = args.gateway_source.resolve()
    if not (args.gateway_source / "api" / "app.py").is_file():
        parser.error(f"--gateway-source {args.gateway_source} is not a checkout (no api/app.py)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_upstream:
        inference_port, management_port = args.serve_upstream
        serve_upstream(inference_port, management_port, args.upstream_delay_ms[0])
        return 0
    shown = sys.argv[1:] if argv is None else argv
    load = os.getloadavg()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    progress = Progress(*columns, TimeElapsedColumn(), console=Console(stderr=True), transient=True)
    results = []
    with progress:
        for delay in args.upstream_delay_ms:
            task = progress.add_task(f"upstream delay {delay:g} ms", total=args.requests)
            advance = functools.partial(progress.advance, task)
            results.append(measure(delay, args.users, args.requests, args.gateway_source, advance))
    console = Console()
    console.print(render(results))
    if args.json is not None:
        report: dict[str, Any] = {
            "command": " ".join(["python", "-m", MODULE, *map(shlex.quote, shown)]),
            "gateway_source": str(args.gateway_source),
            "gateway_commit": git_commit(args.gateway_source),
            "load_average_1_5_15": [round(v, 2) for v in load],
            "cpus": os.cpu_count(),
            "results": [asdict(r) for r in results],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"results written to {args.json}", soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
