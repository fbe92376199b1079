"""The store's reads: what the report, the router and the assessment ask of an experiment.

``Reads`` is the half of ``ExperimentStore`` that only reads; the store supplies its sessions.
The assessment's observations (``abtesting.observations``) carry each request's unit: the
hashed user, else the request id.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Float, func, literal, null, select, union_all
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Subquery

from abtesting.observations import FeedbackObs, Increment, PairedObs, RequestObs, ShadowObs
from abtesting.store.increments import Cursors, read_increment
from abtesting.store.records import (
    EXPERIMENT_STATUSES,
    STATUS_KEY,
    DecisionRecord,
    ExperimentStatus,
    FailureRecord,
    FeedbackRecord,
    PredictionRecord,
    ShadowPair,
    StoredExperiment,
)
from abtesting.store.tables import (
    DecisionRow,
    ExperimentConfigRow,
    FailedPredictionRow,
    FeedbackRow,
    PredictionRow,
    ShadowPredictionRow,
    aware,
    transaction,
)


def _stored_experiment(row: ExperimentConfigRow) -> StoredExperiment:
    config = dict(row.config)
    status = config.pop(STATUS_KEY, "running")
    if status not in EXPERIMENT_STATUSES:
        raise ValueError(f"stored experiment revision {row.revision} has status {status!r}")
    return StoredExperiment(row.revision, config, cast(ExperimentStatus, status))


def _unit(user_hash: str | None, request_id: str) -> str:
    return user_hash if user_hash is not None else request_id


def _split_requests(experiment: str) -> Subquery:
    """The requests of ``experiment`` the split assigned (forced versions have no revision),
    answered and failed: revision, variant, user_hash, request_id, latency_s (NULL when
    failed), created_at, and kind (0 answered, 1 failed) and position (``seq``, the failure's
    id), which order requests stored at the same time."""
    answered = select(
        PredictionRow.revision,
        PredictionRow.variant,
        PredictionRow.user_hash,
        PredictionRow.request_id,
        PredictionRow.latency_s,
        PredictionRow.created_at,
        literal(0).label("kind"),
        PredictionRow.seq.label("position"),
    ).where(PredictionRow.experiment == experiment, PredictionRow.revision.is_not(None))
    failed = select(
        FailedPredictionRow.revision,
        FailedPredictionRow.variant,
        FailedPredictionRow.user_hash,
        FailedPredictionRow.request_id,
        null().cast(Float),  # a failed request has no latency
        FailedPredictionRow.created_at,
        literal(1),
        FailedPredictionRow.id,
    ).where(FailedPredictionRow.experiment == experiment, FailedPredictionRow.revision.is_not(None))
    return union_all(answered, failed).subquery()


class Reads:
    """The reads of ``ExperimentStore``."""

    _sessions: sessionmaker[Session]

    def latest_experiment(self) -> StoredExperiment | None:
        with transaction(self._sessions) as session:
            row = session.scalar(
                select(ExperimentConfigRow).order_by(ExperimentConfigRow.revision.desc()).limit(1)
            )
            return None if row is None else _stored_experiment(row)

    def experiment_weights(self, name: str) -> dict[int, dict[str, float]]:
        """Variant weights of every stored revision of experiment ``name``."""
        with transaction(self._sessions) as session:
            rows = session.execute(
                select(ExperimentConfigRow.revision, ExperimentConfigRow.config).where(
                    ExperimentConfigRow.name == name
                )
            ).all()
        return {
            revision: {v["name"]: float(v["weight"]) for v in config["variants"]}
            for revision, config in rows
        }

    def get_prediction(self, request_id: str) -> PredictionRecord | None:
        with transaction(self._sessions) as session:
            row = session.get(PredictionRow, request_id)
            if row is None:
                return None
            return PredictionRecord(
                request_id=row.request_id,
                experiment=row.experiment,
                revision=row.revision,
                variant=row.variant,
                version=row.version,
                user_hash=row.user_hash,
                stars=tuple(row.stars),
                probabilities=tuple(row.probabilities),
                latency_s=row.latency_s,
                created_at=row.created_at,
            )

    def predictions(self, experiment: str) -> list[tuple[str, str, list[int], float]]:
        """(variant, version, predicted stars, latency) of every prediction of ``experiment``."""
        with transaction(self._sessions) as session:
            rows = session.execute(
                select(
                    PredictionRow.variant,
                    PredictionRow.version,
                    PredictionRow.stars,
                    PredictionRow.latency_s,
                ).where(PredictionRow.experiment == experiment)
            ).all()
        return [(v, ver, list(s), lat) for v, ver, s, lat in rows]

    def assigned_units(self, experiment: str) -> dict[int, dict[str, int]]:
        """Distinct assignment units (hashed user, else request) per revision and variant, of
        answered and failed requests alike.

        Units rather than requests: a sticky user sends many requests to one variant, so
        counting requests would make a busy user look like a broken split. Failed requests
        too: a user whose every request failed was still assigned, and leaving them out would
        make a failing variant look like a broken split (the error-rate guardrail's finding).
        """
        both = _split_requests(experiment)
        unit = func.coalesce(both.c.user_hash, both.c.request_id)
        with transaction(self._sessions) as session:
            rows = session.execute(
                select(both.c.revision, both.c.variant, func.count(unit.distinct())).group_by(
                    both.c.revision, both.c.variant
                )
            ).all()
        counts: dict[int, dict[str, int]] = {}
        for revision, variant, n in rows:
            if revision is not None:
                counts.setdefault(revision, {})[variant] = int(n)
        return counts

    def _feedback_rows(self, experiment: str) -> Sequence[Any]:
        """Feedback of ``experiment`` joined with its prediction, in arrival order."""
        with transaction(self._sessions) as session:
            return session.execute(
                select(
                    FeedbackRow.request_id,
                    FeedbackRow.item,
                    FeedbackRow.stars,
                    FeedbackRow.created_at,
                    PredictionRow.stars,
                    PredictionRow.variant,
                    PredictionRow.version,
                    PredictionRow.user_hash,
                )
                .join(PredictionRow, PredictionRow.request_id == FeedbackRow.request_id)
                .where(PredictionRow.experiment == experiment)
                .order_by(FeedbackRow.id)
            ).all()

    def feedback(self, experiment: str) -> list[FeedbackRecord]:
        """Every feedback of ``experiment`` joined with its prediction, in arrival order."""
        return [
            FeedbackRecord(rid, item, stars, predicted[item], variant, version)
            for rid, item, stars, _, predicted, variant, version, _ in self._feedback_rows(
                experiment
            )
        ]

    def feedback_observations(self, experiment: str) -> list[FeedbackObs]:
        """Feedback of ``experiment`` with its unit and arrival time, in arrival order."""
        return [
            FeedbackObs(variant, _unit(h, rid), stars, predicted[item], aware(at))
            for rid, item, stars, at, predicted, variant, _, h in self._feedback_rows(experiment)
        ]

    def _shadow_rows(self, experiment: str) -> Sequence[Any]:
        with transaction(self._sessions) as session:
            return session.execute(
                select(
                    PredictionRow.variant,
                    PredictionRow.stars,
                    PredictionRow.user_hash,
                    PredictionRow.request_id,
                    ShadowPredictionRow.version,
                    ShadowPredictionRow.stars,
                    ShadowPredictionRow.error,
                )
                .join(PredictionRow, PredictionRow.request_id == ShadowPredictionRow.request_id)
                .where(PredictionRow.experiment == experiment)
                .order_by(ShadowPredictionRow.id)
            ).all()

    def shadow_pairs(self, experiment: str) -> list[ShadowPair]:
        return [
            ShadowPair(variant, tuple(live), version, None if shadow is None else tuple(shadow), e)
            for variant, live, _, _, version, shadow, e in self._shadow_rows(experiment)
        ]

    def shadow_observations(self, experiment: str) -> list[ShadowObs]:
        """Each shadow copy, in the order stored: does its answer differ from the live one
        (None: it failed)?"""
        return [
            ShadowObs(version, _unit(h, rid), None if shadow is None else list(shadow) != live)
            for _, live, h, rid, version, shadow, _ in self._shadow_rows(experiment)
        ]

    def paired_observations(self, experiment: str) -> list[PairedObs]:
        """Each feedback on a request a shadow version answered too, with both answers for the
        rated item, in the feedback's arrival order."""
        with transaction(self._sessions) as session:
            rows = session.execute(
                select(
                    ShadowPredictionRow.version,
                    PredictionRow.variant,
                    PredictionRow.user_hash,
                    PredictionRow.request_id,
                    FeedbackRow.item,
                    FeedbackRow.stars,
                    PredictionRow.stars,
                    ShadowPredictionRow.stars,
                )
                .join(PredictionRow, PredictionRow.request_id == FeedbackRow.request_id)
                .join(
                    ShadowPredictionRow,
                    ShadowPredictionRow.request_id == FeedbackRow.request_id,
                )
                .where(PredictionRow.experiment == experiment)
                .order_by(FeedbackRow.id, ShadowPredictionRow.id)
            ).all()
        return [
            PairedObs(version, variant, _unit(h, rid), stars, live[item], shadow[item])
            for version, variant, h, rid, item, stars, live, shadow in rows
            if shadow is not None and item < len(shadow)  # a failed shadow copy has no answer
        ]

    def failures(self, experiment: str) -> list[FailureRecord]:
        with transaction(self._sessions) as session:
            rows = session.scalars(
                select(FailedPredictionRow)
                .where(FailedPredictionRow.experiment == experiment)
                .order_by(FailedPredictionRow.id)
            ).all()
        return [
            FailureRecord(
                r.request_id,
                r.experiment,
                r.revision,
                r.variant,
                r.version,
                r.user_hash,
                r.error,
                r.latency_s,
                r.created_at,
            )
            for r in rows
        ]

    def request_observations(self, experiment: str) -> list[RequestObs]:
        """Every request of ``experiment`` assigned by the split (forced versions left out),
        answered and failed, with its unit (hashed user, else the request id) and revision, in
        arrival order (time stored; at the same time answered first, then in the order stored):
        the guardrails' sequential tests read them as a sequence."""
        both = _split_requests(experiment)
        with transaction(self._sessions) as session:
            rows = session.execute(
                select(
                    both.c.variant,
                    both.c.user_hash,
                    both.c.request_id,
                    both.c.latency_s,
                    both.c.revision,
                ).order_by(both.c.created_at, both.c.kind, both.c.position)
            ).all()
        return [
            RequestObs(v, _unit(h, rid), lat is None, None if lat is None else lat * 1000.0, rev)
            for v, h, rid, lat, rev in rows
        ]

    def increment(
        self, experiment: str, cursors: Cursors, *, paired: bool, now: float | None = None
    ) -> Increment:
        """What ``experiment`` received since ``cursors``, which move on past it
        (``increments.read_increment``); ``now``: monotonic seconds, default the clock's."""
        with transaction(self._sessions) as session:
            return read_increment(
                session,
                experiment,
                cursors,
                paired=paired,
                now=time.monotonic() if now is None else now,
            )

    def decisions(self, experiment: str) -> list[DecisionRecord]:
        """The autopilot's decisions on ``experiment``, oldest first."""
        with transaction(self._sessions) as session:
            rows = session.scalars(
                select(DecisionRow)
                .where(DecisionRow.experiment == experiment)
                .order_by(DecisionRow.id)
            ).all()
        return [
            DecisionRecord(
                revision=r.revision,
                at=aware(r.created_at),
                mode=r.mode,
                action=r.action,
                candidate=r.candidate,
                weight_before=r.weight_before,
                weight_after=r.weight_after,
                feedbacks=r.feedbacks,
                reason=r.reason,
                numbers=dict(r.numbers),
                applied=r.applied,
                applied_revision=r.applied_revision,
            )
            for r in rows
        ]
