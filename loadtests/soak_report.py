"""The soak's result and its Markdown report (``docs/soak.md``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from loadtests.locust_stats import EndpointStats
from loadtests.soak_memory import GROWTH_ALLOWANCE_MIB, GROWTH_SHARE, ProcessMemory


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
