"""The decision lease: with several gateway replicas on one database, one decides at a time."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from abtesting.store.tables import LeaseRow, now, transaction


def acquire_lease(sessions: sessionmaker[Session], name: str, owner: str, ttl_s: float) -> bool:
    """Take or renew the lease ``name`` for ``ttl_s`` seconds; True when ``owner`` holds it.

    One atomic ``UPDATE ... WHERE expired OR owner = me``: of replicas racing for an
    expired lease exactly one sees its row updated."""
    start = now()
    expires = datetime.fromtimestamp(start.timestamp() + ttl_s, UTC)
    with contextlib.suppress(IntegrityError), transaction(sessions) as session:
        if session.get(LeaseRow, name) is None:
            session.add(LeaseRow(name=name, owner=owner, expires_at=expires))
            session.flush()
            return True
    with transaction(sessions) as session:
        result = session.connection().execute(
            update(LeaseRow)
            .where(
                LeaseRow.name == name,
                or_(LeaseRow.expires_at < start, LeaseRow.owner == owner),
            )
            .values(owner=owner, expires_at=expires)
        )
        return bool(result.rowcount == 1)
