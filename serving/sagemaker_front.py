"""SageMaker hosting's front on port 8080: ``GET /ping`` answers 200 only once the model has
answered a real prediction; every other request goes to TorchServe on loopback as it came.

SageMaker sends traffic to a container from its first ``/ping`` 200. TorchServe's own ``/ping``
says Healthy once its workers have *started*, while they still load the model (here 11-12 s
before the first prediction, with two containers starting together), so the serve image in
``serve`` mode runs this in front of it (``starrating-sagemaker-front``, see
deploy/torchserve/entrypoint.sh): it starts TorchServe with the given config (whose
``inference_address`` is a loopback port), sends one prediction through ``/invocations`` until
one comes back with stars, and from then on answers ``/ping`` with TorchServe's own. It exits
with TorchServe's exit status, and on SIGTERM stops TorchServe and then itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from starrating.service import INFERENCE_PORT

logger = logging.getLogger(__name__)

WARM_UP_TEXT = "It's OK."
"""What the warm-up prediction rates (one of the project's sample reviews; never logged)."""
WARM_UP_RETRY_S = 0.25
UPSTREAM_TIMEOUT_S = 120.0  # above InvokeEndpoint's 60 s: SageMaker gives up first
# Hop-by-hop and framing headers: each side of the proxy sets its own.
_NOT_FORWARDED = frozenset(
    {"connection", "content-length", "host", "keep-alive", "transfer-encoding", "upgrade"}
)

READY = web.AppKey("ready", asyncio.Event)
UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)


def inference_url(ts_config: Path) -> str:
    """TorchServe's ``inference_address`` in a config.properties."""
    for line in ts_config.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "inference_address":
            return value.strip().rstrip("/")
    raise ValueError(f"{ts_config} sets no inference_address")


async def warm_up(session: aiohttp.ClientSession, upstream: str) -> int:
    """Send one prediction until TorchServe answers it with stars; the attempts it took."""
    attempts = 0
    while True:
        attempts += 1
        try:
            async with session.post(
                f"{upstream}/invocations", json={"text": WARM_UP_TEXT}
            ) as response:
                body: Any = await response.json(content_type=None) if response.ok else None
                if isinstance(body, dict) and "stars" in body:
                    return attempts
                logger.info("warm-up prediction: TorchServe answered %d", response.status)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            logger.debug("warm-up prediction: %r", exc)
        await asyncio.sleep(WARM_UP_RETRY_S)


async def ping(request: web.Request) -> web.StreamResponse:
    if not request.app[READY].is_set():
        return web.json_response({"status": "loading the model"}, status=503)
    return await forward(request)


async def forward(request: web.Request) -> web.StreamResponse:
    """The request to TorchServe and its answer back, headers and status as they are."""
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
    try:
        async with request.app[SESSION].request(
            request.method,
            request.app[UPSTREAM] + request.rel_url.path_qs,
            headers=headers,
            data=await request.read() if request.can_read_body else None,
        ) as upstream:
            body = await upstream.read()
            answer = {k: v for k, v in upstream.headers.items() if k.lower() not in _NOT_FORWARDED}
            return web.Response(status=upstream.status, body=body, headers=answer)
    except (aiohttp.ClientError, TimeoutError) as exc:
        logger.warning("TorchServe did not answer %s %s: %r", request.method, request.path, exc)
        return web.json_response(
            {"code": 503, "message": "the model server is not answering"}, status=503
        )


def front_app(upstream: str) -> web.Application:
    """The front's routes; ``app[READY]`` is set once a prediction has come back."""
    # Above InvokeEndpoint's 6 MB payload limit: whatever SageMaker passes on reaches TorchServe,
    # whose own max_request_size then applies.
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[READY] = asyncio.Event()
    app[UPSTREAM] = upstream

    async def session(app: web.Application) -> Any:
        timeout = aiohttp.ClientTimeout(total=UPSTREAM_TIMEOUT_S, sock_connect=2.0)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as client:
            app[SESSION] = client
            yield

    app.cleanup_ctx.append(session)
    app.router.add_get("/ping", ping)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def serve(torchserve: Sequence[str], upstream: str, port: int) -> int:
    """Run TorchServe (``torchserve`` is its command) behind the front; its exit status."""
    process = await asyncio.create_subprocess_exec(*torchserve)
    app = front_app(upstream)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    # All interfaces: SageMaker calls the container from outside.
    await web.TCPSite(runner, "0.0.0.0", port).start()

    def stop_torchserve() -> None:
        # tini -g has sent SIGTERM to TorchServe too; the front stops once TorchServe is gone.
        if process.returncode is None:
            process.terminate()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_torchserve)

    async def gate() -> None:
        attempts = await warm_up(app[SESSION], upstream)
        app[READY].set()
        logger.info("the model answered a prediction (%d attempts): /ping says 200", attempts)

    warming = asyncio.create_task(gate())
    try:
        return await process.wait()
    finally:
        warming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await warming
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="starrating-sagemaker-front",
        description="SageMaker hosting: TorchServe behind a /ping that waits for a prediction.",
    )
    parser.add_argument(
        "--ts-config", type=Path, required=True, help="TorchServe config.properties"
    )
    parser.add_argument("--model-store", type=Path, required=True, help="folder of .mar archives")
    parser.add_argument("--port", type=int, default=INFERENCE_PORT, help="SageMaker's port")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    upstream = inference_url(args.ts_config)
    command = [
        "torchserve",
        "--foreground",
        "--ts-config",
        str(args.ts_config),
        "--model-store",
        str(args.model_store),
    ]
    logger.info("TorchServe at %s; /ping and /invocations on port %d", upstream, args.port)
    return asyncio.run(serve(command, upstream, args.port))


if __name__ == "__main__":
    sys.exit(main())
