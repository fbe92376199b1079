"""What the store hands the analysis: plain observations of an experiment, no text, no analysis.

The store reads them (``abtesting.store``) and the assessment, guardrails and history compute on
them; neither side needs the other's types.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class RequestObs:
    """One prediction request as the gateway saw it (no text). ``latency_ms`` None: failed."""

    variant: str
    unit: str
    failed: bool
    latency_ms: float | None


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
