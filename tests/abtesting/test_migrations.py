"""The store's schema under Alembic, on SQLite and a real PostgreSQL 15 server."""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, create_engine, inspect, select
from sqlalchemy.engine import Engine

from abtesting.store import ExperimentStore, make_engine
from abtesting.store.migrations import config
from abtesting.store.tables import Base, PredictionRow
from tests.abtesting.test_store import (  # noqa: F401 - fixtures
    REPO,
    _prediction,
    database_url,
    postgres_url,
)

PRE_ALEMBIC_SCHEMA = Path(__file__).parent / "pre_alembic_schema"
AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SALT = "5a" * 32
# A row or two in every table the gateway wrote before Alembic, in foreign-key order.
PRE_ALEMBIC_ROWS: dict[str, list[dict[str, Any]]] = {
    "meta": [{"key": "user_hash_salt", "value": SALT}],
    "predictions": [
        {
            "request_id": "r1",
            "experiment": "exp",
            "revision": 1,
            "variant": "A",
            "version": "1.0",
            "user_hash": "h1",
            "stars": [4, 2],
            "probabilities": [{"4": 0.9, "5": 0.1}, {"2": 1.0}],
            "latency_s": 0.012,
            "created_at": AT,
        },
        {
            "request_id": "r2",
            "experiment": "exp",
            "revision": 1,
            "variant": "B",
            "version": "2.0",
            "user_hash": None,
            "stars": [5],
            "probabilities": [{"5": 1.0}],
            "latency_s": 0.02,
            "created_at": AT + timedelta(seconds=1),
        },
    ],
    "feedback": [
        {"request_id": "r1", "item": 0, "stars": 5, "created_at": AT},
        {"request_id": "r2", "item": 0, "stars": 5, "created_at": AT},
    ],
    "shadow_predictions": [
        {
            "request_id": "r1",
            "version": "3.0",
            "stars": [4, 1],
            "latency_s": 0.03,
            "error": None,
            "created_at": AT,
        },
        {
            "request_id": "r2",
            "version": "3.0",
            "stars": None,
            "latency_s": 0.5,
            "error": "upstream_timeout",
            "created_at": AT,
        },
    ],
    "experiment_configs": [
        {"name": "exp", "config": {"name": "exp", "variants": []}, "created_at": AT},
        {
            "name": "exp",
            "config": {"name": "exp", "variants": [], "status": "rolled_back"},
            "created_at": AT,
        },
    ],
    "failed_predictions": [
        {
            "request_id": "f1",
            "experiment": "exp",
            "revision": 1,
            "variant": "B",
            "version": "2.0",
            "user_hash": "h2",
            "error": "ModelNotReady",
            "latency_s": 0.03,
            "created_at": AT,
        }
    ],
    "autopilot_decisions": [
        {
            "experiment": "exp",
            "revision": 1,
            "mode": "on",
            "action": "rollback",
            "candidate": "B",
            "weight_before": 0.1,
            "weight_after": 0.0,
            "feedbacks": 2,
            "reason": "guardrail worse than tolerated",
            "numbers": {"error_rate_p_value": 0.001},
            "applied": True,
            "applied_revision": 2,
            "created_at": AT,
        }
    ],
    "leases": [{"name": "autopilot", "owner": "replica-1", "expires_at": AT + timedelta(days=999)}],
}


def _write_pre_alembic_database(url: str) -> None:
    """The tables as the gateway made them before Alembic (its DDL, kept as fixture data), with
    ``PRE_ALEMBIC_ROWS`` in them."""
    engine = make_engine(url)  # as the old gateway made it: SQLite's directory and pragmas
    ddl = (PRE_ALEMBIC_SCHEMA / f"{engine.dialect.name}.sql").read_text()
    code = "\n".join(line for line in ddl.splitlines() if not line.startswith("--"))
    with engine.begin() as connection:
        for statement in filter(str.strip, code.split(";")):
            connection.exec_driver_sql(statement)
        tables = MetaData()
        tables.reflect(connection)
        for name, rows in PRE_ALEMBIC_ROWS.items():
            connection.execute(tables.tables[name].insert(), rows)
    engine.dispose()


def _contents(engine: Engine, added: Any = ()) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table but Alembic's own, in primary-key order, without the columns
    ``added`` names as (table, column) pairs (those a later revision adds)."""
    tables = MetaData()
    tables.reflect(engine)
    with engine.connect() as connection:
        return {
            table.name: [
                tuple(row)
                for row in connection.execute(
                    select(
                        *(c for c in table.columns if (table.name, c.name) not in added)
                    ).order_by(*table.primary_key.columns)
                )
            ]
            for table in tables.sorted_tables
            if table.name != "alembic_version"
        }


# The columns the revisions after 0001 add (rows stored before have them filled in).
ADDED_AFTER_0001 = {("predictions", "seq")}


def _revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _head() -> str | None:
    return ScriptDirectory.from_config(config()).get_current_head()


def _differences(engine: Engine) -> list[Any]:
    """What Alembic's autogenerate finds between the database and the ORM tables."""
    with engine.connect() as connection:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


def test_a_fresh_database_is_at_head(database_url: str) -> None:  # noqa: F811
    store = ExperimentStore(database_url)
    assert _head() == "0002"
    assert _revision(store.engine) == _head()
    store.close()


def test_the_head_schema_is_the_orm_tables(database_url: str) -> None:  # noqa: F811
    store = ExperimentStore(database_url)
    assert _differences(store.engine) == []
    store.close()


def test_a_database_written_before_alembic_keeps_every_row_and_its_salt(
    database_url: str,  # noqa: F811
) -> None:
    _write_pre_alembic_database(database_url)
    before = make_engine(database_url)
    assert _revision(before) is None
    written = _contents(before)
    assert {name: len(rows) for name, rows in written.items()} == {
        name: len(rows) for name, rows in PRE_ALEMBIC_ROWS.items()
    }
    before.dispose()

    store = ExperimentStore(database_url)
    assert _revision(store.engine) == _head()
    assert _contents(store.engine, ADDED_AFTER_0001) == written
    assert _differences(store.engine) == []
    alice = hmac.new(bytes.fromhex(SALT), b"alice", hashlib.sha256).hexdigest()
    assert store.hash_user("alice") == alice
    # The store reads the old rows and goes on writing next to them.
    latest = store.latest_experiment()
    assert latest is not None and (latest.revision, latest.status) == (2, "rolled_back")
    assert [d.applied_revision for d in store.decisions("exp")] == [2]
    assert not store.acquire_lease("autopilot", "replica-2", ttl_s=30)
    assert store.acquire_lease("autopilot", "replica-1", ttl_s=30)
    store.add_feedback("r1", 2, item=1)
    assert [(f.request_id, f.item) for f in store.feedback("exp")] == [
        ("r1", 0),
        ("r2", 0),
        ("r1", 1),
    ]
    store.close()


def _at_0001_with_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """A database at revision 0001 (as the gateway left it before 0002) holding
    ``PRE_ALEMBIC_ROWS``; what it holds."""
    engine = make_engine(url)
    with engine.begin() as connection:
        command.upgrade(config(connection), "0001")
        tables = MetaData()
        tables.reflect(connection)
        for name, rows in PRE_ALEMBIC_ROWS.items():
            connection.execute(tables.tables[name].insert(), rows)
    assert _revision(engine) == "0001"
    written = _contents(engine)
    engine.dispose()
    return written


def test_upgrade_from_0001_numbers_the_predictions_and_keeps_every_row(
    database_url: str,  # noqa: F811
) -> None:
    written = _at_0001_with_rows(database_url)

    store = ExperimentStore(database_url)
    assert _revision(store.engine) == _head()
    assert _contents(store.engine, ADDED_AFTER_0001) == written
    assert _differences(store.engine) == []
    with store.engine.connect() as connection:
        numbered = connection.execute(select(PredictionRow.seq)).scalars().all()
    assert len(set(numbered)) == len(PRE_ALEMBIC_ROWS["predictions"]) and None not in numbered
    # New predictions are numbered after them, in the order they are stored.
    store.add_predictions([_prediction("r3"), _prediction("r4")])
    store.add_prediction(_prediction("r5"))
    with store.engine.connect() as connection:
        order = (
            connection.execute(select(PredictionRow.request_id).order_by(PredictionRow.seq))
            .scalars()
            .all()
        )
    assert order[-3:] == ["r3", "r4", "r5"]
    store.close()


def test_downgrade_to_0001_drops_the_sequence_and_upgrade_numbers_again(
    database_url: str,  # noqa: F811
) -> None:
    written = _at_0001_with_rows(database_url)
    store = ExperimentStore(database_url)
    with store.engine.begin() as connection:
        command.downgrade(config(connection), "0001")
    assert _contents(store.engine) == written
    store.close()
    store = ExperimentStore(database_url)
    assert _contents(store.engine, ADDED_AFTER_0001) == written
    assert _differences(store.engine) == []
    store.close()


def test_downgrade_to_base_drops_the_schema_and_upgrade_makes_it_again(
    database_url: str,  # noqa: F811
) -> None:
    store = ExperimentStore(database_url)
    with store.engine.begin() as connection:
        command.downgrade(config(connection), "base")
    assert set(inspect(store.engine).get_table_names()) == {"alembic_version"}
    store.close()
    store = ExperimentStore(database_url)
    assert _revision(store.engine) == _head()
    assert _differences(store.engine) == []
    store.close()


OPENER = """
import sys, time
from pathlib import Path
from abtesting.store import ExperimentStore, make_engine

go = Path(sys.argv[2])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
ExperimentStore(sys.argv[1]).close()
"""


def test_replicas_opening_one_fresh_database_at_once_all_succeed(
    database_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    go = tmp_path / "go"
    replicas = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, database_url, str(go)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for replica in replicas:
        assert replica.stdout is not None and replica.stdout.readline() == "ready\n"
    go.touch()  # all four open the store together
    errors = [replica.communicate(timeout=120)[1] for replica in replicas]
    assert [replica.returncode for replica in replicas] == [0] * 4, errors
    engine = create_engine(database_url)
    assert _revision(engine) == _head()
    assert _differences(engine) == []
    engine.dispose()
