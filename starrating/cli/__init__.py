"""The ``starrating`` command line. Each module registers its commands on ``app``; heavy
libraries (torch, the gateway, TorchServe tooling) are imported inside the commands."""

from __future__ import annotations

from starrating.cli import bench, data, demo, serving  # noqa: F401  (registers commands)
from starrating.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
