"""The A/B autopilot: reads the experiment from the store, asks the policy, applies its decision.

A background task of the gateway's lifespan (``Autopilot.run``), never on a request's path. Every
``interval_s`` it takes what arrived since its last look into the experiment's running
assessment (``abtesting.live_assessment``, the one the report reads too: a look costs what
arrived, not the history); if something did, and if it holds the store's lease (one replica
decides at a time), it runs ``abtesting.policy.decide`` on the assessment and acts on the first
decision:

- **ramp**: a new experiment revision with the candidate's weight raised one step (the control
  gets the rest);
- **rollback**: the candidate's weight 0 at once, status ``rolled_back``;
- **promote**: TorchServe's default version set to the candidate's (``set-default``), then the
  experiment ended with all traffic on the candidate, status ``promoted``; the control stays
  registered.

In ``dry-run`` the decision is only stored (``applied`` false). Each decision is stored with its
reason and numbers (idempotent: keyed by experiment revision, action and mode), counted in
``starrating_ab_autopilot_decisions_total`` and logged as one JSON line (never review text).
Decisions live in the store, so they survive a restart and are shared by replicas; the running
assessment is rebuilt from the store by the first look after a start.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from abtesting import metrics as m
from abtesting import stats
from abtesting.assessment import (
    Assessment,
    FeedbackObs,
    PairedObs,
    RequestObs,
    ShadowObs,
    assess,
)
from abtesting.assignment import ExperimentRouter
from abtesting.experiment import ExperimentConfig
from abtesting.live_assessment import (
    ExperimentSettings,
    LiveAssessment,
    split_check,
    traffic_shares,
)
from abtesting.policy import Decision, decide
from abtesting.store import DecisionRecord, ExperimentStatus, ExperimentStore
from serving.torchserve import TorchServeClient

logger = logging.getLogger(__name__)

LEASE = "autopilot"
ACTION_STATUS: dict[str, ExperimentStatus] = {
    "ramp": "running",
    "rollback": "rolled_back",
    "promote": "promoted",
}
"""The experiment's status after each action is applied."""


@dataclass(frozen=True)
class Observations:
    """What the assessment reads, taken from the store in one go (blocking)."""

    srm: stats.SampleRatioCheck
    """Units per variant against the weights of the revisions they were assigned under."""
    shares: dict[str, float]
    """The traffic share of each variant in the revision in force."""
    requests: list[RequestObs]
    feedback: list[FeedbackObs]
    shadows: list[ShadowObs]
    paired: list[PairedObs]
    """Feedback on requests a shadow version answered too; empty when the experiment has no
    shadow or turns paired evaluation off."""


def observe(store: ExperimentStore, config: ExperimentConfig) -> Observations:
    """The experiment's sample-ratio check, requests (answered and failed), feedback and shadow
    answers, all of them, read afresh (blocking): with ``assess_experiment``, the reference
    the running assessment (``LiveAssessment``) is tested against."""
    name = config.name
    srm = split_check(store.assigned_units(name), store.experiment_weights(name))
    requests = store.request_observations(name)
    feedback = store.feedback_observations(name)
    shadows = store.shadow_observations(name)
    pairs = config.shadow is not None and config.shadow.paired
    paired = store.paired_observations(name) if pairs else []
    return Observations(srm, traffic_shares(config), requests, feedback, shadows, paired)


def assess_experiment(config: ExperimentConfig, seen: Observations) -> Assessment:
    """``assess`` with the experiment's own settings."""
    settings = ExperimentSettings.of(config)
    return assess(
        settings.control,
        settings.candidates,
        seen.srm,
        seen.requests,
        seen.feedback,
        seen.shadows,
        paired=seen.paired,
        primary_metric=settings.primary_metric,
        limits=settings.limits,
        shadow_versions=settings.versions,
        weights=settings.weights,
    )


def applied_config(config: ExperimentConfig, decision: Decision) -> ExperimentConfig:
    """The experiment after ``decision``: the candidate at ``weight_after``, control the rest."""
    weights = {config.control.name: 1.0 - decision.weight_after}
    weights[decision.candidate] = decision.weight_after
    variants = [
        v.model_copy(update={"weight": round(weights.get(v.name, 0.0), 12)})
        for v in config.variants
    ]
    return config.model_copy(update={"variants": variants})


def _jsonable(numbers: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: v if isinstance(v, (int, float, str)) or v is None else str(v)
        for k, v in numbers.items()
    }


class Autopilot:
    """Runs the policy on the experiment in force and applies (or, dry-run, records) it."""

    def __init__(
        self,
        store: ExperimentStore,
        router: ExperimentRouter,
        client: TorchServeClient,
        *,
        interval_s: float = 10.0,
        owner: str | None = None,
        assessment: LiveAssessment | None = None,
    ) -> None:
        """``assessment``: the experiment's running assessment, shared with the report (by
        default one of its own)."""
        self.store = store
        self.assessment = assessment or LiveAssessment(store)
        self.router = router
        self.client = client
        self.interval_s = interval_s
        # A lease outlives a few missed looks, so a replica that stalls briefly keeps it.
        self.lease_ttl_s = max(3 * interval_s, 5.0)
        self.owner = owner or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self._seen: tuple[int, int] | None = None

    async def run(self) -> None:
        """Look every ``interval_s`` until cancelled; a failing look is logged, not fatal."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("the autopilot's look at the experiment failed")

    async def step(self) -> list[DecisionRecord]:
        """One look: the decisions stored by it (empty when nothing was decided)."""
        await self.store.run(self.router.reload, self.store)
        config, revision = self.router.config, self.router.revision
        if config is None or revision is None or config.autopilot.mode == "off":
            return []
        if self.router.status != "running" or config.candidate is None:
            return []
        # What arrived since the last look, added to the running assessment (the report's).
        reading = await self.store.run(self.assessment.read, config)
        if (revision, reading.version) == self._seen:
            return []  # nothing new since the last look
        if not await self.store.run(self.store.acquire_lease, LEASE, self.owner, self.lease_ttl_s):
            return []  # another replica decides
        # All feedbacks so far: the policy's ramp counts from the total (stateless).
        feedbacks = reading.feedbacks
        settings = config.autopilot.settings()
        decisions = decide(reading.assessment, settings, reading.shares, feedbacks)
        self._seen = (revision, reading.version)
        if not decisions:
            return []
        # Rollback before promote before ramp: the first is the one that counts; the others
        # are decided afresh on the next revision.
        stored = await self._apply(config, revision, decisions[0], feedbacks)
        return [] if stored is None else [stored]

    async def _apply(
        self, config: ExperimentConfig, revision: int, decision: Decision, feedbacks: int
    ) -> DecisionRecord | None:
        mode = config.autopilot.mode
        apply = mode == "on"
        record = DecisionRecord(
            revision=revision,
            at=datetime.now(UTC),
            mode=mode,
            action=decision.action,
            candidate=decision.candidate,
            weight_before=decision.weight_before,
            weight_after=decision.weight_after,
            feedbacks=feedbacks,
            reason=decision.reason,
            numbers=_jsonable(decision.numbers),
            applied=apply,
        )
        new_config: ExperimentConfig | None = None
        if apply:
            new_config = applied_config(config, decision)
            if decision.action == "promote":
                # Before the record: if set-default fails nothing is stored and the next look
                # tries again; set-default twice is harmless.
                candidate = next(v for v in config.variants if v.name == decision.candidate)
                await self.client.set_default(candidate.version)
        stored = await self.store.run(
            self.store.record_decision,
            config.name,
            record,
            None if new_config is None else new_config.model_dump(mode="json"),
            ACTION_STATUS[decision.action] if apply else "running",
        )
        if stored is None:
            return None  # already decided on this revision (by us or another replica)
        if new_config is not None and stored.applied_revision is not None:
            self.router.update(new_config, stored.applied_revision, ACTION_STATUS[decision.action])
        m.AB_DECISIONS.labels(action=decision.action, mode=mode).inc()
        logger.info(
            "autopilot %s %s: %s",
            "applied" if apply else "would apply (dry-run)",
            decision.action,
            decision.reason,
            extra={
                "fields": {
                    "experiment": config.name,
                    "revision": revision,
                    "applied_revision": stored.applied_revision,
                    "mode": mode,
                    "action": decision.action,
                    "candidate": decision.candidate,
                    "weight_before": decision.weight_before,
                    "weight_after": decision.weight_after,
                    "feedbacks": feedbacks,
                    "numbers": record.numbers,
                }
            },
        )
        return stored
