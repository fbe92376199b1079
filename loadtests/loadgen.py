"""A closed-loop load generator built on locust's library API, run in its own process.

``run_load`` starts ``python -m loadtests.loadgen`` so that locust's gevent monkey-patching never
touches the caller (the benchmark also runs torch and manages servers). The child spawns a fixed
number of users that each send one review per request with no wait, discards a warm-up period,
and writes the exact latency of every request completed in the measured window as JSON.
Throughput counts reviews rated successfully per second of that window.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

# The answer formats: the gateway's (the naive server speaks it too) and TorchServe's.
TARGETS = ("gateway", "torchserve")


class LoadError(RuntimeError):
    """The load generator failed, or no request succeeded in the measured window."""


@dataclass(frozen=True)
class LoadResult:
    """Throughput (``rps``: reviews rated per second) and request latency in milliseconds."""

    users: int
    seconds: float
    requests: int
    errors: int
    texts_per_request: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    latencies_ms: Sequence[float],
    errors: int,
    users: int,
    seconds: float,
    texts_per_request: int = 1,
) -> LoadResult:
    """Percentiles and throughput of the successful requests of a ``seconds`` window."""
    if not latencies_ms:
        raise LoadError(f"no request succeeded in {seconds:.1f} s ({errors} errors)")
    p50, p95, p99 = np.percentile(np.asarray(latencies_ms, dtype=float), [50, 95, 99])
    return LoadResult(
        users=users,
        seconds=seconds,
        requests=len(latencies_ms),
        errors=errors,
        texts_per_request=texts_per_request,
        rps=len(latencies_ms) * texts_per_request / seconds,
        p50_ms=float(p50),
        p95_ms=float(p95),
        p99_ms=float(p99),
    )


def run_load(
    url: str,
    path: str,
    texts: Sequence[str],
    *,
    target: str = "gateway",
    users: int = 16,
    duration: float = 20.0,
    warmup: float = 3.0,
    headers: Mapping[str, str] | None = None,
    texts_per_request: int = 1,
    timeout: float | None = None,
) -> LoadResult:
    """Drive ``url + path`` with ``users`` closed-loop users for ``warmup + duration`` seconds,
    each request carrying ``texts_per_request`` reviews."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if users < 1 or duration <= 0 or warmup < 0 or texts_per_request < 1:
        raise ValueError("users and texts_per_request must be >= 1, duration > 0 and warmup >= 0")
    with tempfile.TemporaryDirectory(prefix="starrating-load-") as tmp:
        texts_file = Path(tmp) / "texts.json"
        texts_file.write_text(json.dumps(list(texts)))
        out = Path(tmp) / "latencies.json"
        cmd = [
            sys.executable,
            "-m",
            "loadtests.loadgen",
            "--host",
            url,
            "--path",
            path,
            "--target",
            target,
            "--texts",
            str(texts_file),
            "--users",
            str(users),
            "--duration",
            str(duration),
            "--warmup",
            str(warmup),
            "--texts-per-request",
            str(texts_per_request),
            "--out",
            str(out),
        ]
        for name, value in (headers or {}).items():
            cmd += ["--header", f"{name}: {value}"]
        limit = timeout if timeout is not None else warmup + duration + 60
        try:
            result = subprocess.run(
                cmd, capture_output=True, text=True, timeout=limit, check=False, env=os.environ
            )
        except subprocess.TimeoutExpired as exc:
            raise LoadError(f"load generator did not finish within {limit:.0f} s") from exc
        if result.returncode != 0 or not out.is_file():
            tail = "\n".join(result.stderr.strip().splitlines()[-15:])
            raise LoadError(f"load generator failed (exit {result.returncode}):\n{tail}")
        raw = json.loads(out.read_text())
    return summarize(raw["latencies_ms"], raw["errors"], users, duration, texts_per_request)


def request_body(target: str, texts: Sequence[str]) -> dict[str, Any]:
    """Reviews as each server takes them; TorchServe gets exactly what the gateway sends it."""
    if target == "gateway" and len(texts) == 1:
        return {"text": texts[0]}
    return {"texts": list(texts)}


def stars_of(target: str, body: Any) -> Any:
    """The predicted stars in an answer of ``target``, or None when the answer has none."""
    if target == "torchserve":
        first = body[0] if isinstance(body, list) and body else None
    else:
        predictions = body.get("predictions") if isinstance(body, dict) else None
        first = predictions[0] if isinstance(predictions, list) and predictions else None
    return first.get("stars") if isinstance(first, dict) else None


def _generate(args: argparse.Namespace) -> dict[str, Any]:
    """Runs inside the child process: locust (and its gevent patching) is imported here only."""
    import itertools

    import gevent
    from locust import FastHttpUser, constant, task
    from locust.env import Environment

    texts: list[str] = json.loads(Path(args.texts).read_text())
    if not texts:
        raise SystemExit("no texts to send")
    cycle = itertools.cycle(texts)
    per_request = args.texts_per_request
    headers = dict(h.split(": ", 1) for h in args.header)
    target = args.target

    class Reviewer(FastHttpUser):  # type: ignore[misc]
        host = args.host
        wait_time = constant(0)
        network_timeout = 60.0
        connection_timeout = 60.0

        @task
        def rate(self) -> None:
            with self.client.post(
                args.path,
                json=request_body(target, [next(cycle) for _ in range(per_request)]),
                headers=headers,
                name="rate",
                catch_response=True,
            ) as response:
                if response.status_code != 200:
                    response.failure(f"status {response.status_code}")
                    return
                try:
                    stars = stars_of(target, response.json())
                except ValueError:
                    stars = None
                if stars not in (1, 2, 3, 4, 5):
                    response.failure("answer without stars 1-5")

    latencies: list[float] = []
    errors = 0
    window: list[float] = []

    def on_request(response_time: float, exception: Any = None, **_: Any) -> None:
        nonlocal errors
        now = time.perf_counter()
        if not window or not window[0] <= now <= window[1]:
            return
        if exception is None:
            latencies.append(float(response_time))
        else:
            errors += 1

    env = Environment(user_classes=[Reviewer], catch_exceptions=True)
    env.events.request.add_listener(on_request)  # type: ignore[no-untyped-call]
    runner = env.create_local_runner()
    runner.start(args.users, spawn_rate=max(args.users, 1))
    start = time.perf_counter()
    window[:] = [start + args.warmup, start + args.warmup + args.duration]
    gevent.sleep(args.warmup + args.duration)
    runner.quit()
    return {"latencies_ms": latencies, "errors": errors}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--path", required=True, help="request path, e.g. /v1/predictions")
    parser.add_argument("--target", choices=TARGETS, default="gateway", help="answer format")
    parser.add_argument("--texts", required=True, help="JSON list of review texts to send")
    parser.add_argument("--users", type=int, default=16, help="concurrent closed-loop users")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds discarded first")
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("--texts-per-request", type=int, default=1, help="reviews per request")
    parser.add_argument("--out", required=True, help="where to write the latencies JSON")
    args = parser.parse_args(argv)
    Path(args.out).write_text(json.dumps(_generate(args)))


if __name__ == "__main__":
    main()
