"""What starting or stopping the local stack raises."""

from __future__ import annotations


class LifecycleError(RuntimeError):
    """The stack could not be started or stopped; the message says what to look at."""


class GatewayWontBeReadyError(LifecycleError):
    """The gateway started, but /readyz answers a code its caller said waiting cannot fix (a
    stored experiment routing to a version TorchServe does not have). The stack is left running
    so that it can be fixed through it."""
