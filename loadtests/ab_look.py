"""``python -m loadtests.ab_look``: what one look of the A/B autopilot costs as history grows.

For each backend and size N, a fresh store is filled with N prediction requests, as a gateway
in front of a two-variant experiment leaves them (bulk inserts, so 10^6 rows take a minute or
two): about N/8 sticky users, 80/20 split, a few percent failed (recorded apart), a true rating
for every answered one, shadow copies of a 5 % sample (some of them failed). Then:

* **incremental**: the autopilot (dry-run) takes its first look, which reads the whole history
  into its running assessment (``first_look_s``, not the number this is about); then, ``rounds``
  times, a realistic batch arrives through the store's own write methods (100 requests with
  their feedback, failures and shadow copies among them) and one autopilot look is timed
  (``Autopilot.step``: reload the experiment, take what arrived, assess, decide). The median.
* **full**: the same assessment recomputed from everything, the way each look worked before
  (``observe`` + ``assess_experiment``), once.

SQLite in a temporary directory, or PostgreSQL 15 started for the run
(``loadtests.throwaway_postgres``) and stopped after. Run::

    python -m loadtests.ab_look --backend sqlite --backend postgresql \\
        --sizes 10000,100000,1000000 --json var/ab-look.json --markdown docs/ab-look.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shlex
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine, insert, text

from abtesting.assignment import ExperimentRouter
from abtesting.autopilot import Autopilot, assess_experiment, observe
from abtesting.experiment import ExperimentConfig
from abtesting.store import ExperimentStore, FailureRecord, PredictionRecord
from abtesting.store.tables import (
    FailedPredictionRow,
    FeedbackRow,
    PredictionRow,
    ShadowPredictionRow,
)
from loadtests import throwaway_postgres
from serving.torchserve import TorchServeClient

MODULE = "loadtests.ab_look"
BACKENDS = ("sqlite", "postgresql")
NAME = "look-bench"
VERSIONS = {"control": "1.0", "candidate": "2.0"}
SHADOW = "3.0"
WEIGHTS = {"control": 0.8, "candidate": 0.2}
FAILURE_RATE = {"control": 0.02, "candidate": 0.04}
ACCURACY = {"control": 0.6, "candidate": 0.62}
LATENCY_S = {"control": 0.020, "candidate": 0.022}
USERS_PER_REQUEST = 1 / 8
SHADOW_SAMPLE = 0.05
BATCH = 100  # requests arriving between two looks
CHUNK = 50_000  # rows per bulk insert
T0 = datetime(2026, 12, 1, tzinfo=UTC)


@dataclass(frozen=True)
class LookResult:
    backend: str
    size: int
    fill_s: float
    first_look_s: float
    incremental_ms: float
    incremental_ms_rounds: list[float]
    full_ms: float
    ratio: float


def _config() -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "name": NAME,
            "variants": [
                {"name": v, "version": VERSIONS[v], "weight": w} for v, w in WEIGHTS.items()
            ],
            "shadow": {"version": SHADOW, "sample": SHADOW_SAMPLE},
            "autopilot": {"mode": "dry-run"},
        }
    )


class Traffic:
    """Requests of the experiment, generated as the gateway would record them."""

    def __init__(self, size: int, revision: int, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.users = [
            f"{u:064x}" for u in self.rng.integers(0, 2**62, max(1, int(size * USERS_PER_REQUEST)))
        ]
        self.revision = revision
        self.count = 0

    def requests(self, n: int) -> Iterator[dict[str, Any]]:
        """``n`` requests: request id, user, variant, whether it failed, stars, true stars,
        latency, time, and whether (and how) a shadow copy answered."""
        rng = self.rng
        users = rng.integers(0, len(self.users), n)
        # Sticky: a user's variant is a function of the user (a point in [0, 1)).
        points = (users * 0.6180339887) % 1.0
        candidate = points >= WEIGHTS["control"]
        draws = rng.random((n, 5))
        stars = rng.integers(1, 6, n)
        for i in range(n):
            self.count += 1
            variant = "candidate" if candidate[i] else "control"
            right = draws[i, 1] < ACCURACY[variant]
            true = int(stars[i]) if right else int((stars[i] + rng.integers(1, 5) - 1) % 5 + 1)
            yield {
                "id": f"req-{self.count}",
                "user": self.users[users[i]],
                "variant": variant,
                "failed": bool(draws[i, 0] < FAILURE_RATE[variant]),
                "stars": int(stars[i]),
                "true": true,
                "latency_s": float(LATENCY_S[variant] * np.exp(0.3 * rng.standard_normal())),
                "at": T0 + timedelta(milliseconds=self.count),
                "shadow": bool(draws[i, 2] < SHADOW_SAMPLE),
                "shadow_failed": bool(draws[i, 3] < 0.05),
                "shadow_agrees": bool(draws[i, 4] < 0.8),
            }


def _request(r: dict[str, Any], revision: int) -> dict[str, Any]:
    """What a prediction row and a failure row both hold of request ``r``."""
    return {
        "request_id": r["id"],
        "experiment": NAME,
        "revision": revision,
        "variant": r["variant"],
        "version": VERSIONS[r["variant"]],
        "user_hash": r["user"],
        "created_at": r["at"],
    }


def _prediction(r: dict[str, Any], revision: int) -> dict[str, Any]:
    answer = {"stars": (r["stars"],), "probabilities": ({str(r["stars"]): 0.9},)}
    return _request(r, revision) | answer | {"latency_s": r["latency_s"]}


def _failure(r: dict[str, Any], revision: int) -> dict[str, Any]:
    return _request(r, revision) | {"error": "upstream_timeout", "latency_s": 5.0}


def _shadow_stars(r: dict[str, Any]) -> list[int] | None:
    if r["shadow_failed"]:
        return None
    return [r["stars"] if r["shadow_agrees"] else r["stars"] % 5 + 1]


def fill(store: ExperimentStore, traffic: Traffic, size: int) -> None:
    """``size`` requests in bulk (Core inserts, ``CHUNK`` rows per transaction)."""
    sqlite = store.engine.dialect.name == "sqlite"
    seq = 0
    for start in range(0, size, CHUNK):
        batch = list(traffic.requests(min(CHUNK, size - start)))
        answered = [r for r in batch if not r["failed"]]
        predictions = [_prediction(r, traffic.revision) for r in answered]
        if sqlite:  # numbered as the trigger would (rowid order), without its extra update
            for row in predictions:
                seq += 1
                row["seq"] = seq
        with store.engine.begin() as connection:
            connection.execute(insert(PredictionRow), predictions)
            failures = [_failure(r, traffic.revision) for r in batch if r["failed"]]
            if failures:
                connection.execute(insert(FailedPredictionRow), failures)
            feedback = [
                {"request_id": r["id"], "item": 0, "stars": r["true"], "created_at": r["at"]}
                for r in answered
            ]
            connection.execute(insert(FeedbackRow), feedback)
            shadows = [
                {
                    "request_id": r["id"], "version": SHADOW, "stars": _shadow_stars(r),
                    "latency_s": 0.03, "error": "timeout" if r["shadow_failed"] else None,
                    "created_at": r["at"],
                }
                for r in answered
                if r["shadow"]
            ]  # fmt: skip
            if shadows:
                connection.execute(insert(ShadowPredictionRow), shadows)
    if not sqlite:
        with store.engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))


def arrive(store: ExperimentStore, traffic: Traffic, n: int = BATCH) -> None:
    """``n`` requests through the store's own writes, as the gateway records them."""
    batch = list(traffic.requests(n))
    answered = [r for r in batch if not r["failed"]]
    store.add_predictions([PredictionRecord(**_prediction(r, traffic.revision)) for r in answered])
    store.add_failures(
        [FailureRecord(**_failure(r, traffic.revision)) for r in batch if r["failed"]]
    )
    for r in answered:
        if r["shadow"]:
            error = "timeout" if r["shadow_failed"] else None
            store.add_shadow(r["id"], SHADOW, _shadow_stars(r), 0.03, error)
    for r in answered:
        store.add_feedback(r["id"], r["true"])


@contextlib.contextmanager
def database(backend: str, server: str | None, workdir: Path, size: int) -> Iterator[str]:
    """A fresh, empty database of ``backend`` (on ``server`` for PostgreSQL)."""
    if backend == "sqlite":
        yield f"sqlite:///{workdir / f'ab-{size}.db'}"
        return
    assert server is not None
    with throwaway_postgres.fresh_database(server, f"ab_look_{size}") as url:
        yield url


def measure(backend: str, url: str, size: int, rounds: int) -> LookResult:
    store = ExperimentStore(url)
    try:
        config = _config()
        revision = store.save_experiment(NAME, config.model_dump(mode="json"))
        traffic = Traffic(size, revision)
        started = time.perf_counter()
        fill(store, traffic, size)
        fill_s = time.perf_counter() - started

        router = ExperimentRouter()
        router.reload(store)
        client = TorchServeClient("http://127.0.0.1:9", "http://127.0.0.1:9")  # never called
        autopilot = Autopilot(store, router, client, owner="bench")
        started = time.perf_counter()
        asyncio.run(autopilot.step())
        first_look_s = time.perf_counter() - started
        looks = []
        for _ in range(rounds):
            arrive(store, traffic)
            started = time.perf_counter()
            asyncio.run(autopilot.step())
            looks.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        assess_experiment(config, observe(store, config))
        full_ms = (time.perf_counter() - started) * 1000
    finally:
        store.close()
    incremental_ms = statistics.median(looks)
    return LookResult(
        backend, size, round(fill_s, 2), round(first_look_s, 2), round(incremental_ms, 1),
        [round(x, 1) for x in looks], round(full_ms, 1), round(full_ms / incremental_ms, 1),
    )  # fmt: skip


def machine(server: str | None) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    described: dict[str, Any] = {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }
    if server is not None:
        engine = create_engine(server)
        with engine.connect() as connection:
            described["postgresql"] = connection.execute(text("SHOW server_version")).scalar()
        engine.dispose()
    return described


def render(results: Sequence[LookResult]) -> Table:
    table = Table(title="One autopilot look: incremental vs full recompute")
    for column in ("size", "backend", "incremental ms", "full ms", "ratio", "first look s"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            f"{r.size:,}", r.backend, f"{r.incremental_ms:.1f}", f"{r.full_ms:,.0f}",
            f"{r.ratio:,.0f}x", f"{r.first_look_s:.1f}",
        )  # fmt: skip
    return table


def markdown(results: Sequence[LookResult], command: str, described: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {r.size:,} | {r.backend} | {r.incremental_ms:.1f} | "
        f"{min(r.incremental_ms_rounds):.0f}-{max(r.incremental_ms_rounds):.0f} | "
        f"{r.full_ms:,.0f} | {r.ratio:,.0f}x | {r.first_look_s:.1f} | {r.fill_s:.0f} |"
        for r in results
    )
    pg = f", PostgreSQL {described['postgresql']}" if "postgresql" in described else ""
    return f"""# One A/B autopilot look: incremental vs full recompute

Generated by `make bench-ab`:

```
{command}
```

Machine: {described["cpu"]}, {described["cpus"]} CPUs, {described["memory_gib"]} GiB; Python
{described["python"]}, SQLite {described["sqlite"]}{pg} (fsync off, a throwaway server). Load
average {described["load_average_1_5_15"]} (1, 5, 15 min) at the start: where the machine is
shared the rounds spread with the other jobs' load (the **rounds** column, each round in the JSON).

Each store holds N prediction requests of a two-variant experiment (about N/8 sticky users,
80/20, a few percent failed, a true rating for every answered one, shadow copies of 5 %).
**incremental**: one autopilot look (`Autopilot.step`: take what arrived since the last look
into the running assessment, assess, decide) after a batch of {BATCH} new requests with their
feedback; the median of the rounds, after a first look that read the whole history (**first
look**). **full**: the same assessment recomputed from everything (`observe` +
`assess_experiment`), the way every look worked before (once). Times in milliseconds; the first
look and the fill (bulk inserts) in seconds.

| size | backend | incremental ms | rounds ms | full ms | ratio | first look s | fill s |
|---:|---|---:|---:|---:|---:|---:|---:|
{rows}
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--backend", action="append", choices=BACKENDS, help="repeatable")
    parser.add_argument(
        "--sizes", default="10000,100000,1000000", help="requests in the store, comma-separated"
    )
    parser.add_argument("--rounds", type=int, default=5, help="timed looks per size")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown", type=Path, help="write the results as a page here")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if any(s < 1 for s in args.sizes):
        parser.error("--sizes must be >= 1")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    args.backend = args.backend or ["sqlite"]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    shown = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python", "-m", MODULE, *map(shlex.quote, shown)])
    console = Console(stderr=True)
    results: list[LookResult] = []
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        server = None
        if "postgresql" in args.backend:
            server = stack.enter_context(throwaway_postgres.throwaway_postgres())
        described = machine(server)
        for backend in args.backend:
            for size in args.sizes:
                console.print(f"{backend}: {size:,} requests …")
                with database(backend, server, Path(tmp), size) as url:
                    results.append(measure(backend, url, size, args.rounds))
                console.print(render(results[-1:]))
    out = Console()
    out.print(render(results))
    if args.json is not None:
        report = {"command": command, "machine": described, "results": [asdict(r) for r in results]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        out.print(f"results written to {args.json}", soft_wrap=True)
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(results, command, described))
        out.print(f"page written to {args.markdown}", soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
