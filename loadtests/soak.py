"""``make soak``: minutes of realistic traffic against the whole stack, then a verdict.

Starts TorchServe and the gateway with ``loadtests.stack.running_stack`` (token authorization
on, its own ``STARRATING_HOME``, model store and free loopback ports, none of the caller's
``STARRATING_*`` settings), drives it with the project's locust users
(``loadtests/locustfile.py``: single reviews, batches, feedback) at a rate this machine can
hold, and records:

- requests, failures and the error rate (the goal is 0), p50/p95/p99 per endpoint (locust's
  statistics, read by ``loadtests.locust_stats``);
- the resident memory (RSS) of every process of the stack (TorchServe's frontend JVM, each
  worker, the gateway) after a warm-up and at the end, against a stated growth bound
  (``loadtests.soak_memory``);
- what else was running on the machine (load average and the busiest other processes).

The report is Markdown (``--report``, e.g. ``docs/soak.md``; ``loadtests.soak_report``) with
the command that produced it; ``--json`` writes the raw numbers. Exit status 1 when an error
occurred or memory grew past the bound. Run::

    python -m loadtests.soak --duration 300 --users 6 --report docs/soak.md
"""

from __future__ import annotations

import argparse
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
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from loadtests.locust_stats import LocustStatsError, read_locust_stats
from loadtests.soak_memory import MemorySampler
from loadtests.soak_report import SoakResult, render_markdown
from serving.processes import descendants

if TYPE_CHECKING:
    from loadtests.stack import StackEndpoints

logger = logging.getLogger(__name__)

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


class SoakError(RuntimeError):
    """The soak could not run; the message says why."""


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
    except (SoakError, LocustStatsError) as exc:
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
