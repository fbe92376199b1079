"""``starrating demo``: the main job end to end on the embedded default data set."""

from __future__ import annotations

from pathlib import Path

import typer

from starrating.cli.app import app, console
from starrating.cli.data import prepare_command


@app.command()
def demo(
    workdir: Path = typer.Option(Path("var/demo"), help="Where data, runs and logs go."),
) -> None:
    """Prepare the embedded data set, train, archive, serve and A/B test two versions."""
    data_dir = workdir / "data"
    console.rule("1. data: the embedded Amazon review sentences")
    prepare_command(
        out=data_dir,
        source="default",
        text_col=None,
        label_col=None,
        seed=42,
        validation_fraction=0.1,
        test_fraction=0.1,
    )
