"""Alembic's environment for the store: ``abtesting.store.migrations.upgrade`` runs it on the
connection (and in the transaction) it holds, passed in ``config.attributes["connection"]``."""

from __future__ import annotations

from alembic import context

from abtesting.store.tables import Base

context.configure(connection=context.config.attributes["connection"], target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
