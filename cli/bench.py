"""``starrating bench serving|training``: benchmarks against baselines run in the same call."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from cli.app import app, console, fail, needs_extra

if TYPE_CHECKING:
    from loadtests.bench_serving import ServingBenchReport

bench_app = typer.Typer(
    help="Benchmarks: the serving stack and the training loop against their baselines.",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")

# The performance goals (docs/performance.md, "Goals"), printed beside each ratio.
GOAL_STACK_OVER_LIMIT = 0.70
GOAL_STACK_OVER_NAIVE = 3.0
GOAL_GATEWAY_OVERHEAD_MS = 1.5
GOAL_STACK_OVER_BEST_PEER = 1.0
GOAL_ACCURACY_POINTS = 0.5
GOAL_LOOP_OVER_TRAINER = 1.0
GOAL_FIRST_STEP_RATIO = 1.2


def _verdict(ok: bool) -> str:
    return "[green]meets goal[/]" if ok else "[red]misses goal[/]"


def _write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"results written to {path}")


@bench_app.command("serving")
@needs_extra("bench")
def serving_command(
    model: Path | None = typer.Option(
        None,
        "--model",
        help="A .mar, a run directory or a saved model directory. Default: the newest .mar "
        "in the model store, else the bundled encoder with an untrained head.",
    ),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="Review texts: a `starrating data prepare` directory or a .jsonl file with "
        "text/stars. Default: the embedded data set.",
    ),
    duration: float = typer.Option(20.0, "--duration", min=1.0, help="Seconds per load run."),
    users: int = typer.Option(16, "--users", min=1, help="Concurrent users of the load runs."),
    texts_per_request: int = typer.Option(
        1,
        "--texts-per-request",
        min=1,
        help="Reviews per request of the saturating runs (the one-user runs always send one).",
    ),
    precision: str = typer.Option(
        "auto",
        "--precision",
        help="Numerics of the stack and the limit: auto (what the handler serves by default: "
        "the archive's choice for this CPU), fp32, bf16 or int8 (dynamic, CPU).",
    ),
    setup: list[str] = typer.Option(
        [],
        "--setup",
        "--setups",
        help="Run only these setups (repeatable or comma-separated): limit, naive, stack, "
        "direct, and the peers ray-serve, bentoml, litserve, torchserve-hf. Default: all.",
    ),
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="TorchServe workers (default: the archive's)."
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="torch threads per worker (default: the archive's)."
    ),
    strategy: str | None = typer.Option(
        None, "--strategy", help="Handler batching: padded or sorted (default: the archive's)."
    ),
    sub_batch_size: int | None = typer.Option(
        None, "--sub-batch-size", min=1, help="Texts per forward pass with --strategy sorted."
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=1, help="TorchServe batch size (default: the archive's)."
    ),
    max_batch_delay: int | None = typer.Option(
        None, "--max-batch-delay", min=0, help="TorchServe batch delay in ms."
    ),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the results here."),
) -> None:
    """Reviews/s and p50/p95/p99 of the stack, the in-process limit, the naive server,
    TorchServe direct and the peers (Ray Serve, BentoML, LitServe, TorchServe with a Hugging
    Face example handler), with the ratios stack/limit, stack/naive, stack/best peer and the
    gateway overhead."""
    from handlers.config import STRATEGIES
    from handlers.numerics import PRECISION_CHOICES
    from loadtests.bench_serving import (
        SETUPS,
        BenchError,
        ServingBenchConfig,
        run_serving_bench,
    )
    from loadtests.loadgen import LoadError
    from loadtests.reviews import ReviewSourceError
    from loadtests.servers import ServerStartError
    from loadtests.stack import StackTuning
    from serving.errors import LifecycleError
    from training.archive import ArchiveError

    if precision not in PRECISION_CHOICES:
        raise fail(f"--precision must be one of {', '.join(PRECISION_CHOICES)}, not {precision!r}")
    if strategy is not None and strategy not in STRATEGIES:
        raise fail(f"--strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    setup = [name.strip() for names in setup for name in names.split(",") if name.strip()]
    unknown = sorted(set(setup) - set(SETUPS))
    if unknown:
        raise fail(f"unknown --setup {', '.join(unknown)}; choose from {', '.join(SETUPS)}")
    config = ServingBenchConfig(
        model=model,
        data=data,
        duration=duration,
        users=users,
        texts_per_request=texts_per_request,
        precision=precision,
        setups=tuple(s for s in SETUPS if s in setup) if setup else SETUPS,
        tuning=StackTuning(
            precision=precision,
            strategy=strategy,
            sub_batch_size=sub_batch_size,
            threads=threads,
            workers=workers,
            batch_size=batch_size,
            max_batch_delay_ms=max_batch_delay,
        ),
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # readiness polls are noise here
    try:
        with console.status("benchmarking (see the log for each step)…"):
            report = run_serving_bench(config)
    except (
        ArchiveError,
        BenchError,
        LifecycleError,
        LoadError,
        ReviewSourceError,
        ServerStartError,
    ) as exc:
        raise fail(str(exc)) from exc

    console.print(_serving_table(report))
    _print_serving_goals(report)
    _write_json(json_path, report.to_json())


def _serving_table(report: ServingBenchReport) -> Table:
    """Reviews/s and latency percentiles of every setup, saturated and at one user."""
    table = Table(
        title=f"serving: {report.model}, {report.precision}, {report.users} users, "
        f"{report.texts_per_request} review(s) per request"
    )
    for column in ("setup", "reviews/s", "p50 ms", "p95 ms", "p99 ms", "notes"):
        table.add_column(column, justify="left" if column in ("setup", "notes") else "right")
    rows = [(name, result) for name, result in report.setups.items()]
    rows += [(f"{name} (1 user)", result) for name, result in report.low_load.items()]
    rows += [(f"{name} (peer)", result) for name, result in report.peers.items()]
    for name, result in rows:
        notes = ", ".join(f"{k}={v}" for k, v in result.detail.items())
        table.add_row(
            name,
            f"{result.rps:,.1f}",
            f"{result.p50_ms:,.1f}",
            f"{result.p95_ms:,.1f}",
            f"{result.p99_ms:,.1f}",
            notes,
        )
    return table


def _print_serving_goals(report: ServingBenchReport) -> None:
    """The ratios of the performance goals, each with its verdict, and the accuracy change."""
    if report.stack_over_limit is not None:
        console.print(
            f"stack/limit  = {report.stack_over_limit:.2f}  (goal ≥ {GOAL_STACK_OVER_LIMIT}) "
            + _verdict(report.stack_over_limit >= GOAL_STACK_OVER_LIMIT)
        )
    if report.stack_over_naive is not None:
        stack, naive = report.setups["stack"], report.setups["naive"]
        console.print(
            f"stack/naive  = {report.stack_over_naive:.2f}  (goal ≥ {GOAL_STACK_OVER_NAIVE} at "
            f"equal or better p95: {stack.p95_ms:.0f} vs {naive.p95_ms:.0f} ms) "
            + _verdict(
                report.stack_over_naive >= GOAL_STACK_OVER_NAIVE and stack.p95_ms <= naive.p95_ms
            )
        )
    if report.stack_over_best_peer is not None and report.best_peer is not None:
        stack, peer = report.setups["stack"], report.peers[report.best_peer]
        console.print(
            f"stack/best peer = {report.stack_over_best_peer:.2f}  ({report.best_peer}; goal ≥ "
            f"{GOAL_STACK_OVER_BEST_PEER} at equal or better p95: {stack.p95_ms:.0f} vs "
            f"{peer.p95_ms:.0f} ms) "
            + _verdict(
                report.stack_over_best_peer >= GOAL_STACK_OVER_BEST_PEER
                and stack.p95_ms <= peer.p95_ms
            )
        )
    if report.gateway_overhead_ms is not None:
        console.print(
            f"gateway overhead = {report.gateway_overhead_ms:.2f} ms at p50, 1 user "
            f"(goal ≤ {GOAL_GATEWAY_OVERHEAD_MS}) "
            + _verdict(report.gateway_overhead_ms <= GOAL_GATEWAY_OVERHEAD_MS)
        )
    console.print(
        f"numerics {report.precision} (--precision {report.precision_requested}): "
        f"{report.precision_reason}",
        markup=False,
    )
    for name, value in report.accuracy.items():
        console.print(f"test accuracy {name}: {100 * value:.2f}%")
    change = report.accuracy_change_points
    if change is not None and report.precision != "fp32":
        console.print(
            f"accuracy change {report.precision} vs fp32 = {change:+.2f} points "
            f"(goal within ±{GOAL_ACCURACY_POINTS}) "
            + _verdict(abs(change) <= GOAL_ACCURACY_POINTS)
        )


@bench_app.command("training")
@needs_extra("bench")
def training_command(
    data: Path | None = typer.Option(
        None,
        "--data",
        help="A `starrating data prepare` directory. Default: the embedded data set.",
    ),
    model: str | None = typer.Option(
        None, "--model", help="Model to train (default: the bundled minilm encoder)."
    ),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Global batch size."),
    steps: int = typer.Option(15, "--steps", min=2, help="Timed steps after the warm-up."),
    warmup_steps: int = typer.Option(3, "--warmup-steps", min=0, help="Untimed first steps."),
    num_workers: int = typer.Option(1, "--num-workers", min=0, help="Data-loader workers."),
    repeats: int = typer.Option(
        2, "--repeats", min=1, help="Alternating timings of loop and Trainer; the best counts."
    ),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the results here."),
) -> None:
    """Samples/s of the training loop vs transformers.Trainer (fp32 and bf16 autocast) and
    the time to the first optimizer step on the data and on a 10x larger copy."""
    from loadtests.bench_training import (
        LARGER_FACTOR,
        TrainingBenchConfig,
        run_training_bench,
    )
    from training.config import ConfigError

    config = TrainingBenchConfig(
        data=data,
        model=model,
        batch_size=batch_size,
        warmup_steps=warmup_steps,
        steps=steps,
        num_workers=num_workers,
        repeats=repeats,
    )
    try:
        with console.status("benchmarking training (see the log for each step)…"):
            report = run_training_bench(config)
    except (ConfigError, FileNotFoundError, OSError) as exc:
        raise fail(str(exc)) from exc

    table = Table(title=f"training: {report.model}, batch {report.batch_size}, CPU threads")
    table.add_column("implementation")
    precisions = list(dict.fromkeys(p for values in report.samples_per_s.values() for p in values))
    for precision in precisions:
        table.add_column(f"{precision} samples/s", justify="right")
    for name, values in report.samples_per_s.items():
        label = "training loop" if name == "loop" else "transformers.Trainer"
        table.add_row(label, *(f"{values.get(p, float('nan')):,.1f}" for p in precisions))
    console.print(table)
    loop = report.samples_per_s.get("loop", {})
    if "fp32" in loop and "bf16" in loop:
        console.print(f"loop bf16/fp32 = {loop['bf16'] / loop['fp32']:.2f}")
    if report.loop_over_trainer is not None:
        console.print(
            f"loop/Trainer = {report.loop_over_trainer:.2f} (fp32; goal ≥ "
            f"{GOAL_LOOP_OVER_TRAINER}) "
            + _verdict(report.loop_over_trainer >= GOAL_LOOP_OVER_TRAINER)
        )
    large = f"{LARGER_FACTOR}x"
    if report.first_step_ratio_10x is not None:
        console.print(
            f"time to first step: {report.first_step_s['1x']:.2f} s ({report.rows['1x']:,} rows) "
            f"vs {report.first_step_s[large]:.2f} s ({report.rows[large]:,} rows) = "
            f"{report.first_step_ratio_10x:.2f}x (goal ≤ {GOAL_FIRST_STEP_RATIO}) "
            + _verdict(report.first_step_ratio_10x <= GOAL_FIRST_STEP_RATIO)
        )
    _write_json(json_path, report.to_json())
