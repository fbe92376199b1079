"""``starrating demo``: the main job end to end on the embedded default data set.

Prepare the embedded reviews, train two versions (a quick control and a longer candidate),
archive both, start TorchServe and the gateway, split traffic between them with an A/B
experiment, replay test reviews as simulated users who rate what they got, print the stars of
the three sample reviews, and leave the stack running for the dashboard.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.app import app, console, fail, needs_extra
from cli.data import prepare_command
from starrating.models import DEFAULT_MODEL

if TYPE_CHECKING:
    import httpx

    from training.config import TrainConfig

SAMPLE_REVIEWS = (
    "I loved it! I will recommend this to everyone.",
    "It's OK.",
    "Really bad. I hope they don't make this anymore.",
)


@dataclass(frozen=True)
class DemoVersion:
    """One model version the demo trains and serves."""

    version: str
    variant: str
    epochs: int


def _train(data_dir: Path, run_dir: Path, model: str, epochs: int, retrain: bool) -> None:
    from cli.training import print_run_summary
    from training.config import TrainConfig
    from training.run import run_training

    # No checkpoints: a demo run is short, and each one is ~260 MB on disk.
    config = TrainConfig(out=run_dir, data=data_dir, model=model, epochs=epochs, checkpoint_every=0)
    if not retrain and _trained_with(run_dir, config):
        console.print(f"reusing the trained run {run_dir} (--retrain to train again)")
        print_run_summary(run_dir)
        return
    config.validate()
    if run_training(config) != 0:
        raise fail(f"training {run_dir} failed; see the log above")
    print_run_summary(run_dir)


def _trained_with(run_dir: Path, config: TrainConfig) -> bool:
    """True when ``run_dir`` holds a finished run of the same model and epoch count."""
    try:
        used = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    finished = (run_dir / "metrics.json").is_file()
    return finished and (used.get("model"), used.get("epochs")) == (config.model, config.epochs)


def _admin_token(home: Path) -> tuple[str, str]:
    """The gateway's admin token and where it is: STARRATING_ADMIN_TOKEN, else a token
    generated once and kept (mode 0600) in HOME/admin_token."""
    configured = os.environ.get("STARRATING_ADMIN_TOKEN", "").strip()
    if configured:
        return configured, "STARRATING_ADMIN_TOKEN"
    path = home / "admin_token"
    if not path.is_file():
        home.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip(), str(path)


def _read_split(path: Path, limit: int) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for _, line in zip(range(limit), handle, strict=False)]


def _simulate_users(client: httpx.Client, reviews: list[dict[str, Any]]) -> None:
    """Each simulated user rates one test review and sends its true stars back as feedback."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        task = progress.add_task("simulated users: predict, then rate", total=len(reviews))
        for number, review in enumerate(reviews):
            answer = client.post(
                "/v1/predictions", json={"text": review["text"], "user_id": f"demo-{number}"}
            )
            answer.raise_for_status()
            feedback = {"request_id": answer.json()["request_id"], "stars": review["stars"]}
            client.post("/v1/feedback", json=feedback).raise_for_status()
            progress.advance(task)


def _sample_reviews_table(client: httpx.Client, versions: list[DemoVersion]) -> Table:
    table = Table(title="the three sample reviews")
    table.add_column("review")
    for v in versions:
        table.add_column(f"{v.variant} ({v.version})", justify="center")
    answers: dict[str, list[dict[str, Any]]] = {}
    for v in versions:
        response = client.post(
            "/v1/predictions",
            json={"texts": list(SAMPLE_REVIEWS)},
            headers={"X-Model-Version": v.version},
        )
        response.raise_for_status()
        answers[v.version] = response.json()["predictions"]
    for i, text in enumerate(SAMPLE_REVIEWS):
        cells = []
        for v in versions:
            p = answers[v.version][i]
            stars = p["stars"]
            cells.append(f"{'★' * stars}{'☆' * (5 - stars)} {p['probabilities'][str(stars)]:.0%}")
        table.add_row(text, *cells)
    return table


@app.command()
@needs_extra("gateway,serve,train")
def demo(
    workdir: Path = typer.Option(Path("var/demo"), help="Where data, runs and archives go."),
    control_epochs: int = typer.Option(1, min=1, help="Epochs of version 1.0 (the control)."),
    candidate_epochs: int = typer.Option(
        2, min=1, help="Epochs of version 2.0 (the candidate); the rest of the default recipe."
    ),
    users: int = typer.Option(
        300, min=0, help="Simulated users: each rates one test review and sends feedback."
    ),
    retrain: bool = typer.Option(False, help="Train again even if the runs exist."),
    model: str = typer.Option(
        DEFAULT_MODEL,
        help="Encoder to fine-tune: 'minilm' (bundled, offline), a hub id or a local folder.",
    ),
) -> None:
    """Prepare the embedded data, train two versions, archive, serve, A/B test them, and rate
    the three sample reviews. The service stays up until `starrating stop`."""
    # One line per HTTP call would drown the progress bars.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    versions = [
        DemoVersion("1.0", "control", control_epochs),
        DemoVersion("2.0", "candidate", candidate_epochs),
    ]
    data_dir, store = workdir / "data", workdir / "model_store"

    console.rule("1/5  data: the embedded Amazon review sentences")
    prepare_command(
        out=data_dir,
        source="default",
        text_col=None,
        label_col=None,
        seed=42,
        validation_fraction=0.1,
        test_fraction=0.1,
        with_extra_corpora=False,
        extra_corpora_ratio=None,
    )

    for v in versions:
        console.rule(f"2/5  train version {v.version}: {model}, {v.epochs} epoch(s)")
        _train(data_dir, workdir / "runs" / v.version, model, v.epochs, retrain)

    console.rule("3/5  archive")
    _archive(workdir / "runs", versions, store)

    console.rule("4/5  serve: TorchServe + gateway")
    stack = _serve(store, default_version=versions[0].version)

    console.rule("5/5  A/B test: control 1.0 vs candidate 2.0, 50/50, sticky per user")
    verdict = _ab_test(stack, versions, _read_split(data_dir / "test.jsonl", users))
    console.print(f"[bold]verdict:[/] {verdict}")
    console.print(
        f"dashboard: [bold]{stack.gateway}/dashboard[/]   "
        f"report: {stack.gateway}/v1/experiment/report\n"
        f"admin token for PUT /v1/experiment: {stack.token_source}\n"
        f"logs: {stack.logs}   stop everything with `starrating stop`"
    )


def _archive(runs: Path, versions: list[DemoVersion], store: Path) -> None:
    from training.archive import ArchiveError, archive_run

    for v in versions:
        try:
            result = archive_run(runs / v.version, v.version, store, force=True)
        except ArchiveError as exc:
            raise fail(str(exc)) from exc
        console.print(f"wrote {result.path} ({result.size_bytes / 1e6:.0f} MB)")
        console.print(f"  {result.numerics.summary()}", markup=False)


@dataclass(frozen=True)
class DemoStack:
    """The running demo stack: where the gateway answers, its admin token, where logs go."""

    gateway: str
    token: str
    token_source: str
    logs: Path
    gateway_log: Path


def _serve(store: Path, default_version: str) -> DemoStack:
    """Stop a stack already running, then start TorchServe and the gateway on ``store``."""
    from api.settings import Settings
    from cli.serving import stack_plan
    from serving.errors import LifecycleError
    from serving.launcher import launch, stop
    from serving.torchserve import TorchServeError

    settings = Settings()
    token, token_source = _admin_token(settings.home)
    plan = stack_plan(
        settings,
        model_store=store,
        gateway_env={**os.environ, "STARRATING_ADMIN_TOKEN": token},
        default_version=default_version,
    )
    paths = plan.paths
    if any(stop(paths)):
        console.print("stopped the stack that was already running")
    try:
        with console.status("starting") as status:
            stack = launch(plan, progress=lambda message: status.update(message))
    except (LifecycleError, TorchServeError) as exc:
        raise fail(f"{exc}\nlogs: {paths.home / 'logs'}") from exc
    gateway = stack.started_gateway().url
    console.print(f"gateway {gateway}, TorchServe {stack.inference_url} (token auth on)")
    return DemoStack(gateway, token, token_source, paths.home / "logs", paths.gateway_log)


def _ab_test(stack: DemoStack, versions: list[DemoVersion], reviews: list[dict[str, Any]]) -> str:
    """Put a 50/50 sticky experiment in place, let simulated users rate ``reviews``, print the
    sample reviews' stars; the report's verdict."""
    import httpx

    experiment = {
        "name": "demo-minilm-epochs",
        "variants": [{"name": v.variant, "version": v.version, "weight": 0.5} for v in versions],
        "sticky": True,
        "shadow": None,
    }
    try:
        with httpx.Client(base_url=stack.gateway, timeout=30.0) as client:
            client.put(
                "/v1/experiment",
                json=experiment,
                headers={"Authorization": f"Bearer {stack.token}"},
            ).raise_for_status()
            _simulate_users(client, reviews)
            console.print(_sample_reviews_table(client, versions))
            report = client.get("/v1/experiment/report").json()
    except httpx.HTTPError as exc:
        raise fail(
            f"the gateway did not answer as expected: {exc}; logs: {stack.gateway_log}"
        ) from exc
    return str(report["verdict"])
