"""The typer application that every ``starrating`` command registers on."""

from __future__ import annotations

import logging

import typer
from rich.console import Console
from rich.logging import RichHandler

app = typer.Typer(
    name="starrating",
    help=(
        "Star ratings (1-5) for customer reviews: prepare data, fine-tune, archive, serve, "
        "A/B test."
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
)
console = Console(stderr=False)
err_console = Console(stderr=True)


@app.callback()
def _configure(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logs."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=True)],
        force=True,
    )


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print an error that says what to do next and return the exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)
