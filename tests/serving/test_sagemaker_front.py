"""SageMaker hosting's front (serving/sagemaker_front.py) in front of a fake TorchServe process
that behaves as TorchServe 0.12 does while it starts: its port opens late, its /ping says
Healthy at once, and /invocations waits in the queue until the worker has loaded the model.

The front runs in this process's main thread (it handles SIGTERM there); a client thread asks
/ping and, at its first 200, one /invocations, the way SageMaker does."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from serving.addresses import free_port
from serving.sagemaker_front import inference_url, serve

LOAD_S = 2.0
FAKE_TORCHSERVE = textwrap.dedent(
    """
    import json, os, sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    started = time.monotonic()
    time.sleep(0.5)  # the JVM starting: nothing listens yet
    loaded_at = started + float(sys.argv[2])

    class TorchServe(BaseHTTPRequestHandler):
        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/ping":
                self.answer(200, {"status": "Healthy"})  # workers started, model not loaded
            elif self.path == "/stop":
                self.answer(200, {})
                self.wfile.flush()
                os._exit(3)
            else:
                self.answer(404, {"code": 404})

        def do_POST(self):
            length = int(self.headers["Content-Length"])
            text = json.loads(self.rfile.read(length))["text"]
            time.sleep(max(0.0, loaded_at - time.monotonic()))  # queued until loaded
            stars = len(text) % 5 + 1
            self.answer(200, {"stars": stars, "probabilities": {}, "model_version": "1.0"})

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), TorchServe)
    server.serve_forever()
    """
)


def sagemaker_calls(url: str) -> tuple[list[tuple[float, int | None]], int, dict[str, object]]:
    """/ping every 0.1 s until 200 (seconds, status), then one /invocations at once."""
    start = time.monotonic()
    pings: list[tuple[float, int | None]] = []
    while time.monotonic() - start < 30:
        try:
            status: int | None = httpx.get(f"{url}/ping", timeout=2).status_code
        except httpx.TransportError:
            status = None
        pings.append((time.monotonic() - start, status))
        if status == 200:
            break
        time.sleep(0.1)
    invoked = httpx.post(f"{url}/invocations", json={"text": "It's OK."}, timeout=2)
    return pings, invoked.status_code, invoked.json()


def test_ping_says_200_only_once_a_prediction_works(tmp_path: Path) -> None:
    script = tmp_path / "fake_torchserve.py"
    script.write_text(FAKE_TORCHSERVE)
    upstream_port, front_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    command = [sys.executable, str(script), str(upstream_port), str(LOAD_S)]
    with ThreadPoolExecutor(1) as pool:
        calls = pool.submit(sagemaker_calls, f"http://127.0.0.1:{front_port}")

        async def run() -> int:
            serving = asyncio.create_task(serve(command, upstream, front_port))
            pings, status, body = await asyncio.to_thread(calls.result)
            await asyncio.to_thread(httpx.get, f"{upstream}/stop")  # TorchServe exits (3)
            exit_code = await serving
            assert status == 200 and body["stars"] == len("It's OK.") % 5 + 1, body
            first_ok = next(at for at, code in pings if code == 200)
            # SageMaker saw "not ready" while the model loaded, and the first 200 came after it.
            assert any(code == 503 for _, code in pings)
            assert first_ok >= LOAD_S - 0.5
            return exit_code

        assert asyncio.run(run()) == 3  # the front ends with TorchServe's exit status


def test_the_upstream_address_is_the_configs_inference_address(tmp_path: Path) -> None:
    config = tmp_path / "sagemaker.properties"
    config.write_text("# comment\ninference_address=http://127.0.0.1:8090/\nmetrics_mode=x\n")
    assert inference_url(config) == "http://127.0.0.1:8090"
    config.write_text("metrics_mode=prometheus\n")
    with pytest.raises(ValueError, match="inference_address"):
        inference_url(config)


def test_the_shipped_sagemaker_config_keeps_torchserve_off_the_public_port() -> None:
    repo = Path(__file__).resolve().parents[2]
    upstream = inference_url(repo / "deploy" / "torchserve" / "sagemaker.properties")
    assert upstream.startswith("http://127.0.0.1:") and not upstream.endswith(":8080")
