"""What the store takes and gives back (plain records), and the errors it raises."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args


class StoreError(Exception):
    """Base of the store's domain errors."""


class UnknownRequest(StoreError, LookupError):
    """Feedback names a request id (or item) the store has no prediction for."""


class DuplicateRequest(StoreError):
    """A prediction with this request id is already stored."""


class FeedbackConflict(StoreError):
    """A different rating was already recorded for this prediction."""


@dataclass(frozen=True)
class PredictionRecord:
    """One answered prediction request as the store keeps it."""

    request_id: str
    experiment: str | None
    revision: int | None
    variant: str
    version: str
    user_hash: str | None
    stars: tuple[int, ...]
    probabilities: tuple[Mapping[str, float], ...]
    latency_s: float
    created_at: datetime


@dataclass(frozen=True)
class FeedbackRecord:
    """A true rating for one predicted item, joined with what was predicted for it."""

    request_id: str
    item: int
    stars: int
    predicted: int
    variant: str
    version: str
    recorded_now: bool = False
    """True only for the call that stored it (not for a retry, nor when listed later)."""


@dataclass(frozen=True)
class ShadowPair:
    """A shadow answer next to the live answer it copied."""

    variant: str
    live_stars: tuple[int, ...]
    shadow_version: str
    shadow_stars: tuple[int, ...] | None
    error: str | None


@dataclass(frozen=True)
class StoredExperiment:
    revision: int
    config: dict[str, Any]
    status: ExperimentStatus = "running"


ExperimentStatus = Literal["running", "promoted", "rolled_back"]
EXPERIMENT_STATUSES: tuple[ExperimentStatus, ...] = get_args(ExperimentStatus)
STATUS_KEY = "status"
"""Where a stored revision's JSON keeps its status (absent in older rows: running)."""


@dataclass(frozen=True)
class FailureRecord:
    """A prediction request TorchServe did not answer (error or timeout); never the text."""

    request_id: str
    experiment: str | None
    revision: int | None
    variant: str
    version: str | None
    user_hash: str | None
    error: str
    latency_s: float
    created_at: datetime


@dataclass(frozen=True)
class DecisionRecord:
    """One autopilot decision, applied (mode "on") or only proposed (mode "dry-run")."""

    revision: int
    at: datetime
    mode: str
    action: str
    candidate: str
    weight_before: float
    weight_after: float
    feedbacks: int
    reason: str
    numbers: dict[str, Any]
    applied: bool
    applied_revision: int | None = None
