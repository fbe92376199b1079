"""The store's tables (SQLAlchemy ORM), its engine and transactions, and how times are kept.

SQLite (default) runs with a WAL journal and ``synchronous=FULL`` so an acknowledged write
survives a crash; PostgreSQL (``postgresql+psycopg://…``) is used as it comes. Times are stored
timezone-aware in UTC. The schema itself is made and changed by the migrations
(``abtesting.store.migrations``), whose head matches these tables.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


class Base(DeclarativeBase):
    pass


class PredictionRow(Base):
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
    # The order rows were stored in, for reading only what is new (``store.increments``): an
    # identity column on PostgreSQL; on SQLite, whose only autoincrement is the primary key, a
    # trigger copies the rowid (migration 0002). Never written by the store itself.
    seq: Mapped[int] = mapped_column(BigInteger, Identity(), index=True, unique=True)


class FeedbackRow(Base):
    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("request_id", "item"),)

    # The autoincrement id is the arrival order the sequential test reads observations in.
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("predictions.request_id"), index=True)
    item: Mapped[int] = mapped_column(Integer)
    stars: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ShadowPredictionRow(Base):
    __tablename__ = "shadow_predictions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("predictions.request_id"), index=True)
    version: Mapped[str] = mapped_column(String(64))
    stars: Mapped[list[int] | None] = mapped_column(JSON)
    latency_s: Mapped[float] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ExperimentConfigRow(Base):
    __tablename__ = "experiment_configs"

    revision: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class FailedPredictionRow(Base):
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


class DecisionRow(Base):
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


class LeaseRow(Base):
    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class MetaRow(Base):
    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


def now() -> datetime:
    return datetime.now(UTC)


def aware(at: datetime) -> datetime:
    """``at`` in UTC: SQLite hands back naive datetimes for what was written in UTC."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


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


@contextmanager
def transaction(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session in one transaction: committed when the block ends, rolled back on an error."""
    with sessions() as session, session.begin():
        yield session
