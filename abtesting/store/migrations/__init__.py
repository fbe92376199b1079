"""The store's schema, made and changed by the Alembic revisions in ``versions/``.

``upgrade(engine)`` brings a database to the newest revision (head); ``ExperimentStore`` calls
it on opening. Alembic is configured from code (``config``): no ``alembic.ini``. A new revision:
change ``tables``, then ``alembic.command.revision(config(connection), message,
autogenerate=True)`` on a database at head writes its first draft into ``versions/``.

A database written before Alembic (tables made by ``create_all``, no ``alembic_version``) goes
through revision 0001 like a fresh one: 0001 keeps every table it finds, rows untouched, and
creates only the missing ones, and the database is at 0001 from then on.

Several gateway replicas may start on one PostgreSQL database at once (and several uvicorn
workers on one SQLite file): the upgrade runs in one transaction that first takes a lock (a
PostgreSQL advisory lock; SQLite's write lock), so one upgrades and the others wait for its
commit, then find the database at head.
"""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine

# pg_advisory_xact_lock's key for this schema's upgrades (any bigint that nothing else uses).
_UPGRADE_LOCK = 0x5354_4152_5241_5447  # "STARRATG"

# Alembic keeps the running migration context in module globals: one upgrade at a time per
# process (replicas and uvicorn workers are processes: the locks in upgrade order them).
_in_process = threading.Lock()


def config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the store's revisions, run on ``connection``."""
    alembic_config = Config()
    # ConfigParser reads "%" as interpolation: a literal one is "%%".
    alembic_config.set_main_option("script_location", str(Path(__file__).parent).replace("%", "%%"))
    alembic_config.attributes["connection"] = connection
    return alembic_config


def upgrade(engine: Engine) -> None:
    """Bring the database behind ``engine`` to the newest revision (committed on return)."""
    with _in_process, engine.begin() as connection:
        # Held until this transaction ends: the next replica (or uvicorn worker) waits, then
        # reads what this one committed.
        if connection.dialect.name == "postgresql":
            connection.execute(select(func.pg_advisory_xact_lock(_UPGRADE_LOCK)))
        elif connection.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")  # the database's write lock, now
        command.upgrade(config(connection), "head")
