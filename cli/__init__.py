"""The ``starrating`` command line. Each module registers its commands on ``app``; heavy
libraries (torch, the gateway, TorchServe tooling) are imported inside the commands."""

from __future__ import annotations

from cli import (  # noqa: F401  (registers commands)
    bench,
    data,
    demo,
    sagemaker,
    serving,
    training,
)
from cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
