"""``starrating train``, ``starrating evaluate`` and ``starrating runs``.

``train`` runs in this process for one process, and launches torchrun itself for
``--nproc-per-node N`` (the same ``python -m training`` entry point that SageMaker and a manual
``torchrun`` use). Its command line is that of ``python -m training`` (``training.config``'s
``HfArgumentParser`` over ``TrainConfig``) with ``Launch``'s options added.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from cli.app import app, console, fail, needs_extra
from training.config import ConfigError, TrainConfig, build_parser, parse_dataclasses

if TYPE_CHECKING:
    from transformers import HfArgumentParser


@dataclass
class Launch:
    """How ``starrating train`` runs the training: its options beside ``TrainConfig``'s."""

    nproc_per_node: int = field(
        default=1, metadata={"help": "Training processes (DDP); >1 launches torchrun."}
    )


def train_parser() -> HfArgumentParser:
    """The command line of ``starrating train``."""
    return build_parser("starrating train", Launch)


def parse_train_args(args: list[str]) -> tuple[TrainConfig, Launch]:
    """The config and launch of ``starrating train ARGS``; a bad combination stops here, before
    torchrun starts, with the reason and the usage (exit status 2)."""
    parser = train_parser()
    config, launch = parse_dataclasses(parser, args)
    try:
        if launch.nproc_per_node < 1:
            raise ConfigError(f"--nproc-per-node must be at least 1, got {launch.nproc_per_node}")
        config.local_batch_size(launch.nproc_per_node)
    except ConfigError as exc:
        parser.error(str(exc))
    return config, launch


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,  # --help is the training options' parser's
)
@needs_extra("train")
def train(ctx: typer.Context) -> None:
    """Fine-tune a model to predict 1-5 stars; writes the run directory OUT (model/,
    metrics.json, config.json, plots/, MLflow store)."""
    config, launch = parse_train_args(ctx.args)
    started = time.monotonic()
    code = _launch(config, launch.nproc_per_node)
    if code != 0:
        from training.run import INTERRUPTED_EXIT_CODE

        if code == INTERRUPTED_EXIT_CODE:
            raise fail(
                f"training stopped by SIGTERM after writing a checkpoint in {config.checkpoints}; "
                "run the same command with --resume to continue",
                code,
            )
        raise fail(f"training failed (exit status {code}); see the log above", code)
    print_run_summary(config.out, time.monotonic() - started)


def _launch(config: TrainConfig, nproc_per_node: int) -> int:
    if nproc_per_node == 1:
        from training.run import run_training

        return run_training(config)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free local rendezvous port: several runs can share a machine
        f"--nproc-per-node={nproc_per_node}",
        "-m",
        "training",
        *config.to_args(),
    ]
    console.print(f"launching {nproc_per_node} training processes with torchrun")
    process = subprocess.Popen(command)

    terminated = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal terminated
        terminated = True
        process.send_signal(signum)  # torchrun passes it on to every training process

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        code = process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        code = process.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if terminated and code != 0:
        from training.run import INTERRUPTED_EXIT_CODE

        # torchrun itself exits 1 on SIGTERM; the trainers wrote their checkpoint first.
        return INTERRUPTED_EXIT_CODE
    return code


def _metrics_table(title: str, rows: dict[str, dict[str, Any]]) -> Table:
    table = Table(title=title)
    table.add_column("split")
    for name in ("reviews", "accuracy", "macro-F1", "MAE", "off-by-one", "QWK", "ECE"):
        table.add_column(name, justify="right")
    for split, m in rows.items():
        ece = (
            f"{m['ece_before']:.3f} → {m['ece_after']:.3f}"
            if "ece_before" in m
            else f"{m.get('ece', float('nan')):.3f}"
        )
        table.add_row(
            split,
            f"{m['n']:,}",
            f"{m['accuracy']:.3f}",
            f"{m['macro_f1']:.3f}",
            f"{m['mae']:.3f}",
            f"{m['off_by_one']:.3f}",
            f"{m['qwk']:.3f}",
            ece,
        )
        human = m.get("human")
        if human:
            # People who rated the same sentences, on the same rows: where the model stands.
            for name, key in (("· rater", "single_rater"), ("· panel", "half_panel")):
                table.add_row(
                    name,
                    f"{human['n']:,}",
                    f"{human[key]['accuracy']:.3f}",
                    "",
                    f"{human[key]['mae']:.3f}",
                    *[""] * 3,
                )
            table.caption = (
                "humans on the same reviews: rater = one rater vs the mean of the others; "
                "panel = half the raters vs the other half"
            )
    return table


def print_run_summary(out: Path, wall_s: float | None = None) -> None:
    """The results of a finished run (its metrics.json) as a table and a few lines."""
    summary = json.loads((out / "metrics.json").read_text())
    rows = {"validation": summary["validation"], summary["split"]: summary}
    console.print(_metrics_table(f"{out.name}: {summary['steps']} steps", rows))
    rules = ", ".join(f"{name} {r['status']}" for name, r in summary["rules"].items())
    wall = f" ({wall_s:.0f} s in all)" if wall_s is not None else ""
    console.print(
        f"rules: {rules}. Temperature {summary['temperature']:.2f}. "
        f"Trained in {summary['train_time_s']:.0f} s{wall}.\n"
        f"model: {out / 'model'}  metrics: {out / 'metrics.json'}  plots: {out / 'plots'}"
    )


@app.command()
@needs_extra("train")
def evaluate(
    run: Path = typer.Option(..., "--run", help="A run directory written by `starrating train`."),
    data: Path = typer.Option(
        ..., "--data", help="A prepared data directory (or one split's .jsonl file)."
    ),
    split: str = typer.Option("test", help="Which split of DATA to evaluate."),
    out: Path | None = typer.Option(None, help="Where to write results (default RUN/evaluation)."),
    batch_size: int = typer.Option(64, min=1, help="Reviews per forward pass."),
) -> None:
    """Accuracy, macro-F1, MAE, off-by-one accuracy, QWK and the confusion matrix (JSON + PNG)
    of a trained run on a data split."""
    from starrating.artifacts import ArtifactError
    from training.data.readers import DataFormatError
    from training.evaluate import evaluate_run

    if not (run / "model").is_dir():
        raise fail(f"{run} has no model/ directory; train one with `starrating train --out {run}`")
    try:
        metrics, written = evaluate_run(run, data, split=split, batch_size=batch_size, out_dir=out)
    except (ArtifactError, DataFormatError, ValueError) as exc:
        raise fail(str(exc)) from exc
    console.print(_metrics_table(f"{run.name} on {data}", {split: metrics}))
    matrix = Table(title="confusion matrix (rows: true, columns: predicted)")
    matrix.add_column("")
    for star in range(1, 6):
        matrix.add_column(f"{star}★", justify="right")
    for star, row in enumerate(metrics["confusion_matrix"], start=1):
        matrix.add_row(f"{star}★", *(str(v) for v in row))
    console.print(matrix)
    console.print("wrote " + ", ".join(str(p) for p in written))


def _fmt(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "-"
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return str(value)


@app.command()
@needs_extra("train")
def runs(
    root: Path = typer.Option(
        Path("."), "--root", help="Search this directory for run directories (RUN/mlflow.db)."
    ),
    tracking_uri: str | None = typer.Option(
        None,
        "--tracking-uri",
        envvar="MLFLOW_TRACKING_URI",
        help="Also list the runs of this MLflow server.",
    ),
) -> None:
    """The lineage table of tracked training runs: parameters, data, results and time."""
    from training.tracking import list_runs

    if not root.is_dir():
        raise fail(f"{root} is not a directory")
    records = list_runs(root, tracking_uri)
    if not records:
        console.print(f"no tracked runs under {root}; train one with `starrating train`")
        return
    table = Table(title=f"training runs ({len(records)})")
    columns = [
        *("run", "started", "status", "model", "data", "epochs", "lr", "batch", "procs"),
        *("val acc", "val MAE", "test acc", "test MAE", "test QWK", "rules", "time"),
    ]
    for name in columns:
        table.add_column(name, justify="left" if name in ("run", "model", "data") else "right")
    for r in records:
        p, m = r.params, r.metrics
        final = "test" if "test_accuracy" in m else "validation"
        rules = [v for k, v in r.tags.items() if k.startswith("rule.")]
        issues = sum(v == "IssuesFound" for v in rules)
        train_time = m.get("train_time_s", r.duration_s)
        table.add_row(
            r.name,
            datetime.fromtimestamp(r.started).strftime("%Y-%m-%d %H:%M") if r.started else "-",
            r.status.lower(),
            Path(p.get("model", "-")).name,
            p.get("data") or p.get("train", "-"),
            p.get("epochs", "-")
            if p.get("max_steps", "None") == "None"
            else f"{p['max_steps']} st",
            _fmt(p.get("lr"), ".0e"),
            p.get("batch_size", "-"),
            p.get("world_size", "-"),
            _fmt(m.get("validation_accuracy")),
            _fmt(m.get("validation_mae")),
            _fmt(m.get(f"{final}_accuracy")) if final == "test" else "-",
            _fmt(m.get("test_mae")),
            _fmt(m.get("test_qwk")),
            ("ok" if not issues else f"{issues} issue(s)") if rules else "-",
            f"{train_time:.0f} s" if train_time else "-",
        )
    console.print(table)
