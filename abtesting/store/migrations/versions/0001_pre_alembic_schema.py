"""The schema as the gateway made it before Alembic, with ``create_all``.

A database written before Alembic has no ``alembic_version`` and these tables, or some of them
(a gateway older still made fewer): each table found is kept as it is, rows untouched, and only
the missing ones are created, with their indexes, exactly as ``create_all`` made them.

Revision ID: 0001
Revises:
Create Date: 2026-12-08
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

logger = logging.getLogger("abtesting.store.migrations")


def _predictions() -> None:
    op.create_table(
        "predictions",
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("experiment", sa.String(128), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=True),
        sa.Column("variant", sa.String(128), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("user_hash", sa.String(64), nullable=True),
        sa.Column("stars", sa.JSON(), nullable=False),
        sa.Column("probabilities", sa.JSON(), nullable=False),
        sa.Column("latency_s", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("request_id"),
    )
    op.create_index("ix_predictions_experiment", "predictions", ["experiment"])


def _feedback() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("item", sa.Integer(), nullable=False),
        sa.Column("stars", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("request_id", "item"),
        sa.ForeignKeyConstraint(["request_id"], ["predictions.request_id"]),
    )
    op.create_index("ix_feedback_request_id", "feedback", ["request_id"])


def _shadow_predictions() -> None:
    op.create_table(
        "shadow_predictions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("stars", sa.JSON(), nullable=True),
        sa.Column("latency_s", sa.Float(), nullable=False),
        sa.Column("error", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(["request_id"], ["predictions.request_id"]),
    )
    op.create_index("ix_shadow_predictions_request_id", "shadow_predictions", ["request_id"])


def _experiment_configs() -> None:
    op.create_table(
        "experiment_configs",
        sa.Column("revision", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("revision"),
    )


def _failed_predictions() -> None:
    op.create_table(
        "failed_predictions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("experiment", sa.String(128), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=True),
        sa.Column("variant", sa.String(128), nullable=False),
        sa.Column("version", sa.String(64), nullable=True),
        sa.Column("user_hash", sa.String(64), nullable=True),
        sa.Column("error", sa.String(64), nullable=False),
        sa.Column("latency_s", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_failed_predictions_experiment", "failed_predictions", ["experiment"])
    op.create_index("ix_failed_predictions_request_id", "failed_predictions", ["request_id"])


def _autopilot_decisions() -> None:
    op.create_table(
        "autopilot_decisions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("experiment", sa.String(128), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("candidate", sa.String(128), nullable=False),
        sa.Column("weight_before", sa.Float(), nullable=False),
        sa.Column("weight_after", sa.Float(), nullable=False),
        sa.Column("feedbacks", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(1024), nullable=False),
        sa.Column("numbers", sa.JSON(), nullable=False),
        sa.Column("applied", sa.Boolean(), nullable=False),
        sa.Column("applied_revision", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("experiment", "revision", "action", "mode"),
    )
    op.create_index("ix_autopilot_decisions_experiment", "autopilot_decisions", ["experiment"])


def _leases() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def _meta() -> None:
    op.create_table(
        "meta",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.String(256), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


# In dependency order: predictions before the tables whose foreign keys name it.
_TABLES: dict[str, Callable[[], None]] = {
    "predictions": _predictions,
    "feedback": _feedback,
    "shadow_predictions": _shadow_predictions,
    "experiment_configs": _experiment_configs,
    "failed_predictions": _failed_predictions,
    "autopilot_decisions": _autopilot_decisions,
    "leases": _leases,
    "meta": _meta,
}


def upgrade() -> None:
    found = set(sa.inspect(op.get_bind()).get_table_names()) & _TABLES.keys()
    if found:
        logger.info("a database written before Alembic: keeping its tables %s", sorted(found))
    for name, create in _TABLES.items():
        if name not in found:
            create()


def downgrade() -> None:
    for name in reversed(_TABLES):
        op.drop_table(name)
