"""What the store hands the analysis: plain observations of an experiment, no text, no analysis.

The store reads them (``abtesting.store``) and the assessment, guardrails and history compute on
them; neither side needs the other's types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class RequestObs:
    """One prediction request as the gateway saw it (no text). ``latency_ms`` None: failed."""

    variant: str
    unit: str
    failed: bool
    latency_ms: float | None
    revision: int | None = None
    """The experiment revision whose weights assigned it (the sample-ratio check's units)."""


@dataclass(frozen=True)
class ShadowObs:
    """One shadow copy: does ``version``'s answer differ from the live one? None: it failed."""

    version: str
    unit: str
    disagree: bool | None


@dataclass(frozen=True)
class FeedbackObs:
    """A true rating for an earlier prediction of ``variant``."""

    variant: str
    unit: str
    true_stars: int
    predicted_stars: int
    at: datetime


@dataclass(frozen=True)
class PairedObs:
    """A true rating for a request that a shadow version scored too: both answers graded by the
    same truth on the same review (``abtesting.assessment``'s paired comparison)."""

    shadow_version: str
    live_variant: str
    unit: str
    true_stars: int
    live_stars: int
    shadow_stars: int


@dataclass(frozen=True)
class PredictionObs:
    """An answered prediction of the experiment, forced versions too: the report's per-variant
    counts, predicted stars and latency."""

    variant: str
    stars: tuple[int, ...]
    latency_s: float


@dataclass(frozen=True)
class ShadowCopyObs:
    """A shadow copy as the report counts it: its answer's items and how many equal the live
    answer's (both 0 when it failed)."""

    version: str
    failed: bool
    items: int
    agreeing: int


@dataclass(frozen=True)
class Increment:
    """What the store received for an experiment since the previous look, each list in arrival
    order (``abtesting.store.increments`` reads it; ``abtesting.running_assessment`` adds it)."""

    requests: list[RequestObs] = field(default_factory=list)
    """Requests the split assigned, answered and failed, with their revision."""
    predictions: list[PredictionObs] = field(default_factory=list)
    feedback: list[FeedbackObs] = field(default_factory=list)
    shadows: list[ShadowObs] = field(default_factory=list)
    copies: list[ShadowCopyObs] = field(default_factory=list)
    paired: list[PairedObs] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any(
            (self.requests, self.predictions, self.feedback, self.shadows, self.copies, self.paired)
        )
