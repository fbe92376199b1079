"""The two seams where A/B testing plugs into the prediction path.

- ``VariantChooser`` decides, before a prediction, which model version a request goes to and
  under which variant name it is counted. ``abtesting.assignment.ExperimentRouter`` implements it.
- ``PredictionRecorder`` hears about every answered prediction after the response has been
  sent. The A/B store implements it; the gateway never waits for it and survives its failures.

``STALE_EXPERIMENT`` is the code /readyz answers, and the A/B engine logs, when the chooser's
experiment routes to a version TorchServe does not have.

The defaults below are what the gateway does without an experiment: the version the client
forces with ``X-Model-Version``, otherwise TorchServe's default version, as variant "default";
and nothing recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

DEFAULT_VARIANT = "default"

STALE_EXPERIMENT = "stale_experiment"
"""The error code of ``/readyz`` when the chooser's experiment routes to a version TorchServe
does not have (it will not fix itself); the A/B engine logs its warning at start with the same
code."""


@dataclass(frozen=True)
class Assignment:
    """Where one request goes."""

    variant: str
    version: str | None
    """The TorchServe version to ask; None asks TorchServe's default version."""
    experiment: str | None = None


@dataclass(frozen=True)
class PredictionEvent:
    """What the gateway knows about an answered prediction request."""

    request_id: str
    assignment: Assignment
    version: str
    """The version that actually answered (TorchServe's, also when the assignment said None)."""
    user_id: str | None
    stars: tuple[int, ...]
    probabilities: tuple[dict[str, float], ...]
    latency_s: float
    """Upstream latency: time spent waiting for TorchServe."""
    texts: tuple[str, ...] = field(repr=False)
    """Only for resending (shadow traffic); never store or log them."""


class VariantChooser(Protocol):
    """Picks the variant and version of a prediction request; must be fast and not block."""

    def choose(self, user_id: str | None, forced_version: str | None) -> Assignment:
        """``forced_version`` is the client's X-Model-Version; honour it when it is set."""
        ...

    def served_versions(self) -> Sequence[str | None]:
        """The versions /readyz requires to be ready (None: TorchServe's default version)."""
        ...


class PredictionRecorder(Protocol):
    """Hears about each answered prediction, after the response was sent.

    Runs on the event loop: push blocking work (database writes) to a worker thread.
    """

    async def record(self, event: PredictionEvent) -> None: ...


class DefaultChooser:
    """No experiment: the forced version, else TorchServe's default, as variant "default"."""

    def choose(self, user_id: str | None, forced_version: str | None) -> Assignment:
        return Assignment(variant=DEFAULT_VARIANT, version=forced_version)

    def served_versions(self) -> Sequence[str | None]:
        return (None,)


class NoRecorder:
    """No A/B store: predictions are counted in metrics and logged, not recorded."""

    async def record(self, event: PredictionEvent) -> None:
        return None
