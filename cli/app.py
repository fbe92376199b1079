"""The typer application that every ``starrating`` command registers on."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

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
Command = TypeVar("Command", bound=Callable[..., Any])
# The project's own packages: a missing one of these is a broken install, not a missing extra.
_PROJECT_PACKAGES = frozenset(
    {"starrating", "cli", "training", "handlers", "api", "abtesting", "serving", "loadtests"}
)
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


def needs_extra(extra: str) -> Callable[[Command], Command]:
    """Mark a command as needing the optional dependency group ``extra`` (pyproject.toml): when
    one of its libraries is not installed, the command says which extra to install."""

    def decorate(command: Command) -> Command:
        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return command(*args, **kwargs)
            except ModuleNotFoundError as exc:
                missing = (exc.name or "").partition(".")[0]
                if not missing or missing in _PROJECT_PACKAGES:
                    raise
                raise fail(
                    escape(
                        f"this command needs the '{extra}' extra ({missing} is not installed): "
                        f"pip install 'starrating[{extra}]'"
                    )
                ) from exc

        return run  # type: ignore[return-value]

    return decorate
