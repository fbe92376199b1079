"""``make soak``: minutes of realistic traffic against the whole stack, then a verdict.

Starts TorchServe and the gateway with ``loadtests.stack.running_stack`` (token authorization
on, its own ``STARRATING_HOME``, model store and free loopback ports, none of the caller's
``STARRATING_*`` settings), drives it with the project's locust
users (``loadtests/locustfile.py``: single reviews, batches, feedback) at a rate this machine can
hold, and records:

- requests, failures and the error rate (the goal is 0), p50/p95/p99 per endpoint (locust);
- the resident memory (RSS) of every process of the stack (TorchServe's frontend JVM, each
  worker, the gateway) after a warm-up and at the end, against a stated growth bound;
- what else was running on the machine (load average and the busiest other processes).

The report is Markdown (``--report``, e.g. ``docs/soak.md``) with the command that produced it;
``--json`` writes the raw numbers. Exit status 1 when an error occurred or memory grew past the
bound. Run::

    python -m loadtests.soak --duration 300 --users 6 --report docs/soak.md
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from serving.processes import descendants

if TYPE_CHECKING:
    from loadtests.stack import StackEndpoints

logger = logging.getLogger(__name__)

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
MIB = 1024 * 1024
# Memory bound: after the warm-up, no process of the stack may grow by more than this share of
# its warmed-up size plus a fixed allowance (allocator arenas, JIT, caches settling).
GROWTH_SHARE = 0.20
GROWTH_ALLOWANCE_MIB = 32.0


class SoakError(RuntimeError):
    """The soak could not run; the message says why."""


@dataclass(frozen=True)
class EndpointStats:
    """One row of locust's ``*_stats.csv``."""

    name: str
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


@dataclass
class ProcessMemory:
    """RSS of one process of the stack over the run, in MiB."""

    role: str
    pid: int
    start_mib: float | None = None
    end_mib: float | None = None
    max_mib: float = 0.0

    @property
    def bound_mib(self) -> float | None:
        if self.start_mib is None:
            return None
        return self.start_mib * (1 + GROWTH_SHARE) + GROWTH_ALLOWANCE_MIB

    @property
    def within_bound(self) -> bool:
        """False when the process grew past the bound or vanished (a crash is not "stable")."""
        bound = self.bound_mib
        return bound is not None and self.end_mib is not None and self.end_mib <= bound


@dataclass
class SoakResult:
    command: str
    started: str
    duration_s: float
    warmup_s: float
    users: int
    spawn_rate: float
    model: str
    machine: dict[str, Any]
    endpoints: list[EndpointStats] = field(default_factory=list)
    memory: list[ProcessMemory] = field(default_factory=list)
    load_average: dict[str, list[float]] = field(default_factory=dict)
    other_processes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> EndpointStats | None:
        return next((e for e in self.endpoints if e.name == "Aggregated"), None)

    @property
    def passed(self) -> bool:
        total = self.total
        return (
            total is not None
            and total.requests > 0
            and total.failures == 0
            and all(m.within_bound for m in self.memory)
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        for memory, entry in zip(self.memory, data["memory"], strict=True):
            entry["bound_mib"] = memory.bound_mib
            entry["within_bound"] = memory.within_bound
        return data


def read_locust_stats(path: Path) -> list[EndpointStats]:
    """Rows of locust's ``--csv`` stats file, the ``Aggregated`` row included."""
    rows = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            rows.append(
                EndpointStats(
                    name=row["Name"],
                    requests=int(row["Request Count"]),
                    failures=int(row["Failure Count"]),
                    rps=float(row["Requests/s"]),
                    p50_ms=_number(row["50%"]),
                    p95_ms=_number(row["95%"]),
                    p99_ms=_number(row["99%"]),
                )
            )
    if not rows:
        raise SoakError(f"{path} holds no locust statistics")
    return rows


def _number(value: str) -> float:
    return float(value) if value not in ("", "N/A") else float("nan")


def stack_processes(torchserve_pid: int, gateway_pid: int) -> dict[int, str]:
    """Role of each process of the stack: the frontend JVM, its workers, the gateway."""
    roles = {torchserve_pid: "TorchServe frontend (JVM)", gateway_pid: "gateway (uvicorn)"}
    try:
        children = psutil.Process(torchserve_pid).children(recursive=True)
    except psutil.Error:
        children = []
    for child in children:
        try:
            if any("model_service_worker" in part for part in child.cmdline()):
                roles[child.pid] = "TorchServe worker"
        except psutil.Error:
            continue
    return roles


def rss_mib(pid: int) -> float | None:
    try:
        rss: int = psutil.Process(pid).memory_info().rss
        return rss / MIB
    except psutil.Error:
        return None


class MemorySampler:
    """Samples the RSS of the stack's processes every ``interval_s`` until stopped."""

    def __init__(self, torchserve_pid: int, gateway_pid: int, interval_s: float = 2.0) -> None:
        self.torchserve_pid = torchserve_pid
        self.gateway_pid = gateway_pid
        self.interval_s = interval_s
        self.memory: dict[int, ProcessMemory] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        for pid, role in stack_processes(self.torchserve_pid, self.gateway_pid).items():
            memory = self.memory.setdefault(pid, ProcessMemory(role, pid))
            rss = rss_mib(pid)
            if rss is not None:
                memory.max_mib = max(memory.max_mib, rss)
        for pid, memory in self.memory.items():
            memory.end_mib = rss_mib(pid)  # None once a process is gone

    def mark_warm(self) -> None:
        """The warmed-up sizes the growth bound is measured from."""
        self.sample()
        for memory in self.memory.values():
            memory.start_mib = rss_mib(memory.pid)


def other_busy_processes(
    own: set[int], since: dict[int, float], top: int = 8
) -> list[dict[str, Any]]:
    """The processes outside the soak that used the most CPU during it."""
    busy = []
    for process in psutil.process_iter(["pid", "name", "cmdline", "cpu_times"]):
        if process.pid in own:
            continue
        times = process.info["cpu_times"]
        if times is None:
            continue
        used = times.user + times.system - since.get(process.pid, 0.0)
        if used > 1.0:
            command = " ".join(process.info["cmdline"] or [process.info["name"] or "?"])
            busy.append({"pid": process.pid, "cpu_s": round(used, 1), "command": command[:120]})
    return sorted(busy, key=lambda p: p["cpu_s"], reverse=True)[:top]


def cpu_times_now() -> dict[int, float]:
    times = {}
    for process in psutil.process_iter(["pid", "cpu_times"]):
        if process.info["cpu_times"] is not None:
            times[process.pid] = process.info["cpu_times"].user + process.info["cpu_times"].system
    return times


@contextmanager
def running_stack(model: Path | None, workdir: Path) -> Iterator[tuple[StackEndpoints, str]]:
    """TorchServe + gateway for the model, on the gateway's default settings; yields where it
    answers and the model's label."""
    from loadtests.bench_serving import model_under_test
    from loadtests.stack import StackTuning, archive_for_bench
    from loadtests.stack import running_stack as bench_stack
    from serving.gateway_process import without_settings

    with model_under_test(model) as chosen:
        mar = chosen.mar or archive_for_bench(chosen.model_dir, workdir)
        label = chosen.label
        with bench_stack(
            mar, workdir / "home", StackTuning(), gateway_env=without_settings(os.environ)
        ) as stack:
            yield stack, label


def run_locust(
    url: str, users: int, spawn_rate: float, duration_s: float, data: Path, out: Path
) -> Path:
    """The locustfile's users against ``url``; returns the stats CSV."""
    prefix = out / "locust"
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        url,
        "--users",
        str(users),
        "--spawn-rate",
        str(spawn_rate),
        "--run-time",
        f"{int(duration_s)}s",
        "--stop-timeout",
        "30",
        "--csv",
        str(prefix),
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    env = {**os.environ, "STARRATING_LOADTEST_DATA": str(data)}
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=duration_s + 120, check=False
    )
    stats = prefix.with_name("locust_stats.csv")
    # locust exits 1 when any request failed: the numbers tell, not the exit status.
    if not stats.is_file():
        raise SoakError(
            f"locust wrote no statistics (exit {result.returncode}):\n{result.stderr[-3000:]}"
        )
    return stats


def soak(
    *,
    duration_s: float,
    users: int,
    spawn_rate: float,
    warmup_s: float,
    model: Path | None,
    data: Path | None,
    command: str,
) -> SoakResult:
    from loadtests.reviews import prepare_embedded

    with tempfile.TemporaryDirectory(prefix="starrating-soak-") as tmp:
        work = Path(tmp)
        reviews = data if data is not None else prepare_embedded(work / "data")
        with running_stack(model, work) as (stack, label):
            result = SoakResult(
                command=command,
                started=datetime.now(UTC).isoformat(timespec="seconds"),
                duration_s=duration_s,
                warmup_s=warmup_s,
                users=users,
                spawn_rate=spawn_rate,
                model=label,
                machine=machine(),
            )
            before = cpu_times_now()
            result.load_average["start"] = list(os.getloadavg())
            with MemorySampler(stack.torchserve_pid, stack.gateway_pid) as sampler:
                warm = threading.Timer(warmup_s, sampler.mark_warm)
                warm.start()
                try:
                    stats = run_locust(
                        stack.gateway_url, users, spawn_rate, duration_s, reviews, work
                    )
                finally:
                    warm.cancel()
                sampler.sample()
            result.load_average["end"] = list(os.getloadavg())
            own = {os.getpid(), *sampler.memory, *descendants(os.getpid())}
            result.other_processes = other_busy_processes(own, before)
            result.endpoints = read_locust_stats(stats)
            result.memory = sorted(sampler.memory.values(), key=lambda m: (m.role, m.pid))
    return result


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _ms(value: float) -> str:
    return "–" if value != value else f"{value:.0f}"  # NaN: no requests of that kind


def _mib(value: float | None) -> str:
    return "gone" if value is None else f"{value:.0f}"


def render_markdown(result: SoakResult) -> str:
    """The report for ``docs/soak.md``."""
    total = result.total
    verdict = "PASS" if result.passed else "FAIL"
    lines = [
        "# Soak test",
        "",
        "Sustained, realistic traffic against the whole stack (TorchServe with token auth, the",
        "gateway, the A/B store) to catch errors and memory growth that short tests miss.",
        "Written by `loadtests/soak.py`; reproduce with:",
        "",
        "```",
        result.command,
        "```",
        "",
        "`make soak` runs it for 300 s with 6 users (`SOAK_DURATION`, `SOAK_USERS`). Minutes show",
        "errors and fast memory growth; a slow leak needs hours (`make soak SOAK_DURATION=3600`).",
        "",
        f"**{verdict}** — started {result.started}, {result.duration_s:.0f} s of load "
        f"({result.warmup_s:.0f} s warm-up before memory is measured), {result.users} locust "
        f"users (spawn rate {result.spawn_rate}/s) from `loadtests/locustfile.py`: single reviews, "
        "batches of 2-16, feedback on 30% of single answers; think time 0.2-1.5 s per user.",
        "",
        f"Model: {result.model}. Machine: {result.machine['cpus']} CPUs, "
        f"{result.machine['memory_gib']} GiB, Python {result.machine['python']}, "
        f"{result.machine['platform']}.",
        "",
        "## Requests",
        "",
        "| endpoint | requests | failures | error rate | req/s | p50 ms | p95 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in result.endpoints:
        name = "**all**" if e.name == "Aggregated" else f"`{e.name}`"
        lines.append(
            f"| {name} | {e.requests} | {e.failures} | {e.error_rate:.2%} | {e.rps:.1f} | "
            f"{_ms(e.p50_ms)} | {_ms(e.p95_ms)} | {_ms(e.p99_ms)} |"
        )
    lines += [
        "",
        f"Goal: error rate 0. Measured: {total.failures if total else '?'} failures in "
        f"{total.requests if total else '?'} requests.",
        "",
        "## Memory (RSS, MiB)",
        "",
        f"Bound: after the warm-up, no process may grow past warmed-up size × "
        f"{1 + GROWTH_SHARE:.2f} + {GROWTH_ALLOWANCE_MIB:.0f} MiB by the end of the run.",
        "",
        "| process | pid | after warm-up | end | max | bound | within bound |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for m in result.memory:
        bound = "–" if m.bound_mib is None else f"{m.bound_mib:.0f}"
        lines.append(
            f"| {m.role} | {m.pid} | {_mib(m.start_mib)} | {_mib(m.end_mib)} | "
            f"{m.max_mib:.0f} | {bound} | {'yes' if m.within_bound else '**no**'} |"
        )
    start, end = result.load_average.get("start", []), result.load_average.get("end", [])
    lines += [
        "",
        "## What else was running",
        "",
        "The machine is shared; these numbers are only comparable with runs under similar load.",
        f"Load average (1/5/15 min) at start: {', '.join(f'{v:.2f}' for v in start)}; "
        f"at end: {', '.join(f'{v:.2f}' for v in end)}.",
        "",
    ]
    if result.other_processes:
        lines += ["Other processes that used more than 1 s of CPU during the soak:", ""]
        lines += ["| pid | CPU s | command |", "|---:|---:|---|"]
        for p in result.other_processes:
            command = p["command"].replace("|", "\\|")
            lines.append(f"| {p['pid']} | {p['cpu_s']} | `{command}` |")
    else:
        lines.append("No other process used more than 1 s of CPU during the soak.")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--duration", type=float, default=300.0, help="seconds of load (default 300)"
    )
    parser.add_argument("--users", type=int, default=6, help="locust users (default 6)")
    parser.add_argument("--spawn-rate", type=float, default=2.0, help="users started per second")
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds before memory is measured (default: 15%% of the duration)",
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="a .mar, run dir or model dir "
        "(default: newest .mar in the model store, else the bundled encoder)",
    )
    parser.add_argument(
        "--data", type=Path, default=None, help="review source (default: the embedded data set)"
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help="write the Markdown report here (e.g. docs/soak.md)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the raw numbers here")
    args = parser.parse_args(argv)
    if args.duration < 10 or args.users < 1 or args.spawn_rate <= 0:
        parser.error("--duration must be >= 10 s, --users >= 1, --spawn-rate > 0")
    if args.warmup is None:
        args.warmup = max(5.0, 0.15 * args.duration)
    if not 0 <= args.warmup < args.duration:
        parser.error("--warmup must be shorter than --duration")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    shown = list(sys.argv[1:] if argv is None else argv)
    command = "python -m loadtests.soak " + " ".join(shlex.quote(a) for a in shown)
    try:
        result = soak(
            duration_s=args.duration,
            users=args.users,
            spawn_rate=args.spawn_rate,
            warmup_s=args.warmup,
            model=args.model,
            data=args.data,
            command=command.strip(),
        )
    except SoakError as exc:
        logger.error("%s", exc)
        return 2
    report = render_markdown(result)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(report)
        logger.info("report written to %s", args.report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_json(), indent=2, default=str))
    sys.stdout.write(report)
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
