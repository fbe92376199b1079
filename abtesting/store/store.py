"""``ExperimentStore``: the store's writes, and the async facade the gateway calls it through.

The methods are synchronous; the gateway calls them through ``asyncio.to_thread`` (see
``run``) so a write never blocks the event loop. The reads are ``queries.Reads``.

Feedback: one true rating per predicted item (``item`` is the position in a ``texts`` batch, 0
for a single text). A repeat with the same stars is accepted as a retry and changes nothing; a
repeat with different stars is refused (``FeedbackConflict``): each observation enters the
sequential test once, in arrival order, and letting labels change after people have seen the
report would let them steer it.

Opening a store brings its database's schema to the newest migration (``migrations``); a
database written by an older gateway, before Alembic too, keeps its rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from abtesting.store import migrations, users
from abtesting.store.lease import acquire_lease
from abtesting.store.queries import Reads
from abtesting.store.records import (
    EXPERIMENT_STATUSES,
    STATUS_KEY,
    DecisionRecord,
    DuplicateRequest,
    ExperimentStatus,
    FailureRecord,
    FeedbackConflict,
    FeedbackRecord,
    PredictionRecord,
    UnknownRequest,
)
from abtesting.store.tables import (
    DecisionRow,
    ExperimentConfigRow,
    FailedPredictionRow,
    FeedbackRow,
    PredictionRow,
    ShadowPredictionRow,
    make_engine,
    now,
    transaction,
)
from starrating.labels import STARS

P = ParamSpec("P")
T = TypeVar("T")


def _prediction_row(record: PredictionRecord) -> dict[str, Any]:
    return {
        "request_id": record.request_id,
        "experiment": record.experiment,
        "revision": record.revision,
        "variant": record.variant,
        "version": record.version,
        "user_hash": record.user_hash,
        "stars": list(record.stars),
        "probabilities": [dict(p) for p in record.probabilities],
        "latency_s": record.latency_s,
        "created_at": record.created_at,
    }


class ExperimentStore(Reads):
    """Predictions, feedback, shadow answers and experiment configs in one database."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        migrations.upgrade(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._salt = users.load_or_create_salt(self._sessions)

    def close(self) -> None:
        self.engine.dispose()

    def hash_user(self, user_id: str | None) -> str | None:
        """The salted hash stored in place of a user id."""
        return users.hash_user(self._salt, user_id)

    # -- writes ---------------------------------------------------------------------------

    def add_prediction(self, record: PredictionRecord) -> None:
        if self.add_predictions([record]):
            raise DuplicateRequest(f"request id {record.request_id!r} is already recorded")

    def add_predictions(self, records: Sequence[PredictionRecord]) -> list[str]:
        """Store many predictions in one transaction; the request ids refused as duplicates.

        One commit (one fsync) for the lot is what lets the gateway record hundreds of
        predictions a second; if the batch holds a duplicate id, each is stored on its own so
        only the duplicate is refused. A Core ``INSERT`` (executemany) rather than ORM objects:
        the ORM's unit of work cost ~0.4 ms of gateway CPU per prediction.
        """
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(PredictionRow), [_prediction_row(r) for r in records])
            return []
        except IntegrityError:
            if len(records) == 1:
                return [records[0].request_id]
        refused: list[str] = []
        for record in records:
            refused += self.add_predictions([record])
        return refused

    def add_shadow(
        self,
        request_id: str,
        version: str,
        stars: Sequence[int] | None,
        latency_s: float,
        error: str | None = None,
    ) -> None:
        with transaction(self._sessions) as session:
            session.add(
                ShadowPredictionRow(
                    request_id=request_id,
                    version=version,
                    stars=None if stars is None else list(stars),
                    latency_s=latency_s,
                    error=error,
                    created_at=now(),
                )
            )

    def add_feedback(self, request_id: str, stars: int, item: int = 0) -> FeedbackRecord:
        """Record the true rating of one predicted item; returns it joined with the prediction.

        Raises ``UnknownRequest`` for an unknown request id or item, ``FeedbackConflict`` when a
        different rating is already recorded, ``ValueError`` for stars outside 1-5.
        """
        if isinstance(stars, bool) or stars not in STARS:
            raise ValueError(f"stars must be one of {STARS}, got {stars!r}")
        try:
            with transaction(self._sessions) as session:
                prediction = session.get(PredictionRow, request_id)
                if prediction is None:
                    raise UnknownRequest(f"no prediction with request id {request_id!r}")
                if not 0 <= item < len(prediction.stars):
                    raise UnknownRequest(
                        f"request {request_id!r} has {len(prediction.stars)} predictions, "
                        f"no item {item}"
                    )
                existing = session.scalar(
                    select(FeedbackRow).where(
                        FeedbackRow.request_id == request_id, FeedbackRow.item == item
                    )
                )
                if existing is None:
                    session.add(
                        FeedbackRow(request_id=request_id, item=item, stars=stars, created_at=now())
                    )
                elif existing.stars != stars:
                    raise FeedbackConflict(
                        f"request {request_id!r} item {item} already has feedback "
                        f"({existing.stars} stars); feedback cannot be changed"
                    )
                return FeedbackRecord(
                    request_id=request_id,
                    item=item,
                    stars=stars,
                    predicted=prediction.stars[item],
                    variant=prediction.variant,
                    version=prediction.version,
                    recorded_now=existing is None,
                )
        except IntegrityError:
            # A concurrent duplicate won the race: answer as if it had come first.
            with transaction(self._sessions) as session:
                existing = session.scalar(
                    select(FeedbackRow).where(
                        FeedbackRow.request_id == request_id, FeedbackRow.item == item
                    )
                )
                prediction = session.get(PredictionRow, request_id)
            if existing is None or prediction is None:
                raise
            if existing.stars != stars:
                raise FeedbackConflict(
                    f"request {request_id!r} item {item} already has feedback "
                    f"({existing.stars} stars); feedback cannot be changed"
                ) from None
            return FeedbackRecord(
                request_id,
                item,
                stars,
                prediction.stars[item],
                prediction.variant,
                prediction.version,
            )

    def save_experiment(
        self, name: str, config: Mapping[str, Any], status: ExperimentStatus = "running"
    ) -> int:
        """Store a new experiment config; returns its revision (increasing)."""
        with transaction(self._sessions) as session:
            return self._save_experiment(session, name, config, status)

    @staticmethod
    def _save_experiment(
        session: Session, name: str, config: Mapping[str, Any], status: ExperimentStatus
    ) -> int:
        if status not in EXPERIMENT_STATUSES:
            raise ValueError(f"status must be one of {EXPERIMENT_STATUSES}, got {status!r}")
        stored = {**config, STATUS_KEY: status}
        row = ExperimentConfigRow(name=name, config=stored, created_at=now())
        session.add(row)
        session.flush()
        return row.revision

    def add_failures(self, records: Sequence[FailureRecord]) -> None:
        """Store failed prediction requests (one transaction)."""
        if not records:
            return
        with self.engine.begin() as connection:
            connection.execute(insert(FailedPredictionRow), [r.__dict__.copy() for r in records])

    def record_decision(
        self,
        experiment: str,
        decision: DecisionRecord,
        new_config: Mapping[str, Any] | None = None,
        new_status: ExperimentStatus = "running",
    ) -> DecisionRecord | None:
        """Store a decision and, for an applied one, the experiment revision it makes, in one
        transaction. Idempotent: a decision already stored for the same experiment revision,
        action and mode changes nothing and answers None."""
        try:
            with transaction(self._sessions) as session:
                exists = session.scalar(
                    select(DecisionRow.id).where(
                        DecisionRow.experiment == experiment,
                        DecisionRow.revision == decision.revision,
                        DecisionRow.action == decision.action,
                        DecisionRow.mode == decision.mode,
                    )
                )
                if exists is not None:
                    return None
                applied_revision = None
                if new_config is not None:
                    applied_revision = self._save_experiment(
                        session, experiment, new_config, new_status
                    )
                stored = DecisionRecord(
                    **{**decision.__dict__, "applied_revision": applied_revision}
                )
                session.add(
                    DecisionRow(
                        experiment=experiment,
                        created_at=decision.at,
                        **{k: v for k, v in stored.__dict__.items() if k != "at"},
                    )
                )
                return stored
        except IntegrityError:
            return None  # another replica stored the same decision first

    def acquire_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take or renew the autopilot's lease ``name`` (``lease.acquire_lease``)."""
        return acquire_lease(self._sessions, name, owner, ttl_s)

    # -- async facade: the same calls on a worker thread ------------------------------------

    async def run(self, func_: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one of the methods above off the event loop."""
        return await asyncio.to_thread(func_, *args, **kwargs)
