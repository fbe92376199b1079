"""User ids are stored only as salted hashes: HMAC-SHA256 with a random salt kept in the
database (the ``meta`` table), so every replica on one database hashes alike, another database
hashes differently, and the raw id is never written."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from abtesting.store.tables import MetaRow, transaction

SALT_KEY = "user_hash_salt"


def load_or_create_salt(sessions: sessionmaker[Session]) -> bytes:
    """The database's salt, created on first use (the first replica to store one wins)."""
    with transaction(sessions) as session:
        row = session.get(MetaRow, SALT_KEY)
        if row is not None:
            return bytes.fromhex(row.value)
    try:
        with transaction(sessions) as session:
            session.add(MetaRow(key=SALT_KEY, value=secrets.token_hex(32)))
    except IntegrityError:
        pass  # another replica created it first: use theirs
    with transaction(sessions) as session:
        row = session.get(MetaRow, SALT_KEY)
        assert row is not None
        return bytes.fromhex(row.value)


def hash_user(salt: bytes, user_id: str | None) -> str | None:
    """The salted hash stored in place of a user id."""
    if user_id is None:
        return None
    return hmac.new(salt, user_id.encode(), hashlib.sha256).hexdigest()
