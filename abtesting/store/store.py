"""The durable A/B store: predictions, feedback, shadow answers and the experiment config.

SQLAlchemy 2 over SQLite (default, WAL journal with ``synchronous=FULL`` so an acknowledged
write survives a crash) or PostgreSQL (``postgresql+psycopg://…``). The methods are synchronous;
the gateway calls them through ``asyncio.to_thread`` (see the ``a``-prefixed methods) so a write
never blocks the event loop.

What is stored: request id, experiment, revision, variant, version, a salted hash of the user id
(HMAC-SHA256 with a random salt kept in the database, so every replica on one database hashes
alike and the raw id is never written), predicted stars and probabilities, latency and time.
Never the review text.

Feedback: one true rating per predicted item (``item`` is the position in a ``texts`` batch, 0
for a single text). A repeat with the same stars is accepted as a retry and changes nothing; a
repeat with different stars is refused (``FeedbackConflict``): each observation enters the
sequential test once, in arrival order, and letting labels change after people have seen the
report would let them steer it.

Failed predictions (TorchServe errors and timeouts, per variant, never the text) sit in a table
of their own, so the error rate per variant exists for the autopilot's guardrails. So do the
autopilot's decisions and its lease (one replica decides at a time). Schema changes are new
tables only: ``create_all`` adds a missing table to an existing SQLite or PostgreSQL database
and leaves the others as they are, so a database written by an older gateway keeps working.
The experiment's ``status`` (running, promoted, rolled back) travels inside each stored
revision's JSON (absent in older rows: running).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar, cast, get_args

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    event,
    func,
    insert,
    null,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.sql import Subquery

from abtesting.observations import FeedbackObs, RequestObs, ShadowObs
from starrating.labels import STARS

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_SALT_KEY = "user_hash_salt"


class StoreError(Exception):
    """Base of the store's domain errors."""


class UnknownRequest(StoreError, LookupError):
    """Feedback names a request id (or item) the store has no prediction for."""


class DuplicateRequest(StoreError):
    """A prediction with this request id is already stored."""


class FeedbackConflict(StoreError):
    """A different rating was already recorded for this prediction."""


class _Base(DeclarativeBase):
    pass


class _Prediction(_Base):
    __tablename__ = "predictions"

    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    experiment: Mapped[str | None] = mapped_column(String(128), index=True)
    revision: Mapped[int | None] = mapped_column(Integer)
    variant: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    user_hash: Mapped[str | None] = mapped_column(String(64))
    stars: Mapped[list[int]] = mapped_column(JSON)
    probabilities: Mapped[list[dict[str, float]]] = mapped_column(JSON)
    latency_s: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _Feedback(_Base):
    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("request_id", "item"),)

    # The autoincrement id is the arrival order the sequential test reads observations in.
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("predictions.request_id"), index=True)
    item: Mapped[int] = mapped_column(Integer)
    stars: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _ShadowPrediction(_Base):
    __tablename__ = "shadow_predictions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("predictions.request_id"), index=True)
    version: Mapped[str] = mapped_column(String(64))
    stars: Mapped[list[int] | None] = mapped_column(JSON)
    latency_s: Mapped[float] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _ExperimentConfig(_Base):
    __tablename__ = "experiment_configs"

    revision: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _FailedPrediction(_Base):
    __tablename__ = "failed_predictions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(128), index=True)
    experiment: Mapped[str | None] = mapped_column(String(128), index=True)
    revision: Mapped[int | None] = mapped_column(Integer)
    variant: Mapped[str] = mapped_column(String(128))
    version: Mapped[str | None] = mapped_column(String(64))
    user_hash: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str] = mapped_column(String(64))
    latency_s: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _Decision(_Base):
    __tablename__ = "autopilot_decisions"
    # Idempotency: one decision per experiment revision, action and mode.
    __table_args__ = (UniqueConstraint("experiment", "revision", "action", "mode"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    experiment: Mapped[str] = mapped_column(String(128), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    mode: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(16))
    candidate: Mapped[str] = mapped_column(String(128))
    weight_before: Mapped[float] = mapped_column(Float)
    weight_after: Mapped[float] = mapped_column(Float)
    feedbacks: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(1024))
    numbers: Mapped[dict[str, Any]] = mapped_column(JSON)
    applied: Mapped[bool] = mapped_column(Boolean)
    applied_revision: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _Lease(_Base):
    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _Meta(_Base):
    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


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
_STATUS_KEY = "status"


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


def _now() -> datetime:
    return datetime.now(UTC)


def _stored_experiment(row: _ExperimentConfig) -> StoredExperiment:
    config = dict(row.config)
    status = config.pop(_STATUS_KEY, "running")
    if status not in EXPERIMENT_STATUSES:
        raise ValueError(f"stored experiment revision {row.revision} has status {status!r}")
    return StoredExperiment(row.revision, config, cast(ExperimentStatus, status))


def _aware(at: datetime) -> datetime:
    # SQLite hands back naive datetimes for what was written in UTC.
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _unit(user_hash: str | None, request_id: str) -> str:
    return user_hash if user_hash is not None else request_id


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


def _split_requests(experiment: str) -> Subquery:
    """The requests of ``experiment`` the split assigned (forced versions have no revision),
    answered and failed: revision, variant, user_hash, request_id, latency_s (NULL when
    failed), created_at."""
    answered = select(
        _Prediction.revision,
        _Prediction.variant,
        _Prediction.user_hash,
        _Prediction.request_id,
        _Prediction.latency_s,
        _Prediction.created_at,
    ).where(_Prediction.experiment == experiment, _Prediction.revision.is_not(None))
    failed = select(
        _FailedPrediction.revision,
        _FailedPrediction.variant,
        _FailedPrediction.user_hash,
        _FailedPrediction.request_id,
        null().cast(Float),  # a failed request has no latency
        _FailedPrediction.created_at,
    ).where(_FailedPrediction.experiment == experiment, _FailedPrediction.revision.is_not(None))
    return union_all(answered, failed).subquery()


def _enable_sqlite_durability(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the report read while predictions are written; FULL fsyncs every commit.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets its directory created and its durability pragmas."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _enable_sqlite_durability)
        return engine
    return create_engine(url, pool_pre_ping=True)


class ExperimentStore:
    """Predictions, feedback, shadow answers and experiment configs in one database."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        _Base.metadata.create_all(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._salt = self._load_or_create_salt()

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def _load_or_create_salt(self) -> bytes:
        with self._session() as session:
            row = session.get(_Meta, _SALT_KEY)
            if row is not None:
                return bytes.fromhex(row.value)
        try:
            with self._session() as session:
                session.add(_Meta(key=_SALT_KEY, value=secrets.token_hex(32)))
        except IntegrityError:
            pass  # another replica created it first: use theirs
        with self._session() as session:
            row = session.get(_Meta, _SALT_KEY)
            assert row is not None
            return bytes.fromhex(row.value)

    def hash_user(self, user_id: str | None) -> str | None:
        """The salted hash stored in place of a user id."""
        if user_id is None:
            return None
        return hmac.new(self._salt, user_id.encode(), hashlib.sha256).hexdigest()

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
                connection.execute(insert(_Prediction), [_prediction_row(r) for r in records])
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
        with self._session() as session:
            session.add(
                _ShadowPrediction(
                    request_id=request_id,
                    version=version,
                    stars=None if stars is None else list(stars),
                    latency_s=latency_s,
                    error=error,
                    created_at=_now(),
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
            with self._session() as session:
                prediction = session.get(_Prediction, request_id)
                if prediction is None:
                    raise UnknownRequest(f"no prediction with request id {request_id!r}")
                if not 0 <= item < len(prediction.stars):
                    raise UnknownRequest(
                        f"request {request_id!r} has {len(prediction.stars)} predictions, "
                        f"no item {item}"
                    )
                existing = session.scalar(
                    select(_Feedback).where(
                        _Feedback.request_id == request_id, _Feedback.item == item
                    )
                )
                if existing is None:
                    session.add(
                        _Feedback(request_id=request_id, item=item, stars=stars, created_at=_now())
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
            with self._session() as session:
                existing = session.scalar(
                    select(_Feedback).where(
                        _Feedback.request_id == request_id, _Feedback.item == item
                    )
                )
                prediction = session.get(_Prediction, request_id)
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
        with self._session() as session:
            return self._save_experiment(session, name, config, status)

    @staticmethod
    def _save_experiment(
        session: Session, name: str, config: Mapping[str, Any], status: ExperimentStatus
    ) -> int:
        if status not in EXPERIMENT_STATUSES:
            raise ValueError(f"status must be one of {EXPERIMENT_STATUSES}, got {status!r}")
        stored = {**config, _STATUS_KEY: status}
        row = _ExperimentConfig(name=name, config=stored, created_at=_now())
        session.add(row)
        session.flush()
        return row.revision

    def add_failures(self, records: Sequence[FailureRecord]) -> None:
        """Store failed prediction requests (one transaction)."""
        if not records:
            return
        with self.engine.begin() as connection:
            connection.execute(insert(_FailedPrediction), [r.__dict__.copy() for r in records])

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
            with self._session() as session:
                exists = session.scalar(
                    select(_Decision.id).where(
                        _Decision.experiment == experiment,
                        _Decision.revision == decision.revision,
                        _Decision.action == decision.action,
                        _Decision.mode == decision.mode,
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
                    _Decision(
                        experiment=experiment,
                        created_at=decision.at,
                        **{k: v for k, v in stored.__dict__.items() if k != "at"},
                    )
                )
                return stored
        except IntegrityError:
            return None  # another replica stored the same decision first

    def acquire_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take or renew the lease ``name`` for ``ttl_s`` seconds; True when ``owner`` holds it.

        One atomic ``UPDATE ... WHERE expired OR owner = me``: of replicas racing for an
        expired lease exactly one sees its row updated."""
        now = _now()
        expires = datetime.fromtimestamp(now.timestamp() + ttl_s, UTC)
        with contextlib.suppress(IntegrityError), self._session() as session:
            if session.get(_Lease, name) is None:
                session.add(_Lease(name=name, owner=owner, expires_at=expires))
                session.flush()
                return True
        with self.engine.begin() as connection:
            result = connection.execute(
                update(_Lease)
                .where(
                    _Lease.name == name,
                    or_(_Lease.expires_at < now, _Lease.owner == owner),
                )
                .values(owner=owner, expires_at=expires)
            )
            return bool(result.rowcount == 1)

    # -- reads ----------------------------------------------------------------------------

    def latest_experiment(self) -> StoredExperiment | None:
        with self._session() as session:
            row = session.scalar(
                select(_ExperimentConfig).order_by(_ExperimentConfig.revision.desc()).limit(1)
            )
            return None if row is None else _stored_experiment(row)

    def experiment_weights(self, name: str) -> dict[int, dict[str, float]]:
        """Variant weights of every stored revision of experiment ``name``."""
        with self._session() as session:
            rows = session.execute(
                select(_ExperimentConfig.revision, _ExperimentConfig.config).where(
                    _ExperimentConfig.name == name
                )
            ).all()
        return {
            revision: {v["name"]: float(v["weight"]) for v in config["variants"]}
            for revision, config in rows
        }

    def get_prediction(self, request_id: str) -> PredictionRecord | None:
        with self._session() as session:
            row = session.get(_Prediction, request_id)
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
        with self._session() as session:
            rows = session.execute(
                select(
                    _Prediction.variant,
                    _Prediction.version,
                    _Prediction.stars,
                    _Prediction.latency_s,
                ).where(_Prediction.experiment == experiment)
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
        with self._session() as session:
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
        with self._session() as session:
            return session.execute(
                select(
                    _Feedback.request_id,
                    _Feedback.item,
                    _Feedback.stars,
                    _Feedback.created_at,
                    _Prediction.stars,
                    _Prediction.variant,
                    _Prediction.version,
                    _Prediction.user_hash,
                )
                .join(_Prediction, _Prediction.request_id == _Feedback.request_id)
                .where(_Prediction.experiment == experiment)
                .order_by(_Feedback.id)
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
            FeedbackObs(variant, _unit(h, rid), stars, predicted[item], _aware(at))
            for rid, item, stars, at, predicted, variant, _, h in self._feedback_rows(experiment)
        ]

    def _shadow_rows(self, experiment: str) -> Sequence[Any]:
        with self._session() as session:
            return session.execute(
                select(
                    _Prediction.variant,
                    _Prediction.stars,
                    _Prediction.user_hash,
                    _Prediction.request_id,
                    _ShadowPrediction.version,
                    _ShadowPrediction.stars,
                    _ShadowPrediction.error,
                )
                .join(_Prediction, _Prediction.request_id == _ShadowPrediction.request_id)
                .where(_Prediction.experiment == experiment)
            ).all()

    def shadow_pairs(self, experiment: str) -> list[ShadowPair]:
        return [
            ShadowPair(variant, tuple(live), version, None if shadow is None else tuple(shadow), e)
            for variant, live, _, _, version, shadow, e in self._shadow_rows(experiment)
        ]

    def shadow_observations(self, experiment: str) -> list[ShadowObs]:
        """Each shadow copy: does its answer differ from the live one (None: it failed)?"""
        return [
            ShadowObs(version, _unit(h, rid), None if shadow is None else list(shadow) != live)
            for _, live, h, rid, version, shadow, _ in self._shadow_rows(experiment)
        ]

    def failures(self, experiment: str) -> list[FailureRecord]:
        with self._session() as session:
            rows = session.scalars(
                select(_FailedPrediction)
                .where(_FailedPrediction.experiment == experiment)
                .order_by(_FailedPrediction.id)
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
        answered and failed, with its unit (hashed user, else the request id), in arrival
        order: the guardrails' sequential tests read them as a sequence."""
        both = _split_requests(experiment)
        with self._session() as session:
            rows = session.execute(
                select(
                    both.c.variant, both.c.user_hash, both.c.request_id, both.c.latency_s
                ).order_by(both.c.created_at)
            ).all()
        return [
            RequestObs(v, _unit(h, rid), lat is None, None if lat is None else lat * 1000.0)
            for v, h, rid, lat in rows
        ]

    def feedback_count(self, experiment: str) -> int:
        with self._session() as session:
            n = session.scalar(
                select(func.count(_Feedback.id))
                .join(_Prediction, _Prediction.request_id == _Feedback.request_id)
                .where(_Prediction.experiment == experiment)
            )
        return int(n or 0)

    def activity(self, experiment: str) -> tuple[int, int]:
        """(feedbacks, requests answered or failed) of ``experiment``: what changes when there
        is something new to assess."""
        with self._session() as session:
            answered = session.scalar(
                select(func.count()).where(_Prediction.experiment == experiment)
            )
            failed = session.scalar(
                select(func.count()).where(_FailedPrediction.experiment == experiment)
            )
        return self.feedback_count(experiment), int(answered or 0) + int(failed or 0)

    def decisions(self, experiment: str) -> list[DecisionRecord]:
        """The autopilot's decisions on ``experiment``, oldest first."""
        with self._session() as session:
            rows = session.scalars(
                select(_Decision).where(_Decision.experiment == experiment).order_by(_Decision.id)
            ).all()
        return [
            DecisionRecord(
                revision=r.revision,
                at=_aware(r.created_at),
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

    # -- async facade: the same calls on a worker thread ------------------------------------

    async def run(self, func_: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one of the methods above off the event loop."""
        return await asyncio.to_thread(func_, *args, **kwargs)
