"""Predictions get ``seq``, the order they were stored in, so a look reads only new ones.

The other tables the assessment reads have an autoincrement id for that; ``predictions`` is keyed
by its request id. PostgreSQL: an identity column (existing rows are numbered as the column is
added). SQLite, whose only autoincrement is the primary key: the column, existing rows numbered
by their rowid, and a trigger that gives each new row its rowid (SQLite writers are serialised,
so the rowid grows with every insert; a writer may also set ``seq`` itself, as the benchmark's
bulk fill does). A unique index either way: the look reads ``seq > cursor``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-12
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TRIGGER = "predictions_seq_from_rowid"
INDEX = "ix_predictions_seq"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.add_column("predictions", sa.Column("seq", sa.BigInteger(), nullable=True))
        op.execute("UPDATE predictions SET seq = rowid")
        op.execute(
            f"CREATE TRIGGER {TRIGGER} AFTER INSERT ON predictions WHEN NEW.seq IS NULL "
            "BEGIN UPDATE predictions SET seq = NEW.rowid WHERE rowid = NEW.rowid; END"
        )
    else:
        op.add_column(
            "predictions", sa.Column("seq", sa.BigInteger(), sa.Identity(), nullable=False)
        )
    op.create_index(INDEX, "predictions", ["seq"], unique=True)


def downgrade() -> None:
    op.drop_index(INDEX, "predictions")
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"DROP TRIGGER {TRIGGER}")
    op.drop_column("predictions", "seq")
