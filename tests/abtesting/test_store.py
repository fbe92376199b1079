"""The A/B store against SQLite and a real PostgreSQL 15 server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text

from abtesting.store import (
    DecisionRecord,
    DuplicateRequest,
    ExperimentStore,
    FailureRecord,
    FeedbackConflict,
    PredictionRecord,
    UnknownRequest,
    migrations,
)
from loadtests import throwaway_postgres

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL 15 server on a free port (``loadtests.throwaway_postgres``)."""
    if not throwaway_postgres.available():
        pytest.fail("PostgreSQL 15 is not installed: apt-get install -y postgresql (.ci/run does)")
    with throwaway_postgres.throwaway_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'starrating.db'}"
        return
    server: str = request.getfixturevalue("postgres_url")
    name = f"t{os.getpid()}_{time.monotonic_ns()}"
    with throwaway_postgres.fresh_database(server, name) as url:
        yield url


def _prediction(
    request_id: str, variant: str = "A", stars: tuple[int, ...] = (4,)
) -> PredictionRecord:
    return PredictionRecord(
        request_id=request_id,
        experiment="exp",
        revision=1,
        variant=variant,
        version="1.0" if variant == "A" else "2.0",
        user_hash=None,
        stars=stars,
        probabilities=tuple(
            {str(s): 1.0 if s == star else 0.0 for s in range(1, 6)} for star in stars
        ),
        latency_s=0.012,
        created_at=datetime.now(UTC),
    )


def test_prediction_and_feedback_round_trip(database_url: str) -> None:
    store = ExperimentStore(database_url)
    store.add_prediction(_prediction("r1", "A", stars=(4, 2)))
    got = store.get_prediction("r1")
    assert got is not None
    assert (got.variant, got.version, got.stars) == ("A", "1.0", (4, 2))
    assert got.probabilities[1]["2"] == 1.0

    first = store.add_feedback("r1", 5)
    second = store.add_feedback("r1", 2, item=1)
    assert (first.predicted, first.stars) == (4, 5)
    assert (second.predicted, second.stars) == (2, 2)
    assert [(f.item, f.stars) for f in store.feedback("exp")] == [(0, 5), (1, 2)]
    store.close()


def test_a_batch_with_a_duplicate_request_id_stores_all_the_others(database_url: str) -> None:
    store = ExperimentStore(database_url)
    store.add_prediction(_prediction("r2"))
    refused = store.add_predictions([_prediction(f"r{i}") for i in range(5)])
    assert refused == ["r2"]
    assert all(store.get_prediction(f"r{i}") is not None for i in range(5))
    with pytest.raises(DuplicateRequest, match="already recorded"):
        store.add_prediction(_prediction("r0"))
    store.close()


def test_feedback_for_unknown_request_or_item_is_refused(database_url: str) -> None:
    store = ExperimentStore(database_url)
    with pytest.raises(UnknownRequest, match="no prediction"):
        store.add_feedback("nope", 3)
    store.add_prediction(_prediction("r1"))
    with pytest.raises(UnknownRequest, match="no item 1"):
        store.add_feedback("r1", 3, item=1)
    with pytest.raises(ValueError, match="stars"):
        store.add_feedback("r1", 6)
    assert store.feedback("exp") == []
    store.close()


def test_second_feedback_same_rating_is_a_retry_different_rating_is_refused(
    database_url: str,
) -> None:
    store = ExperimentStore(database_url)
    store.add_prediction(_prediction("r1"))
    store.add_feedback("r1", 3)
    store.add_feedback("r1", 3)  # a client retry: accepted, nothing changes
    with pytest.raises(FeedbackConflict, match="already has feedback"):
        store.add_feedback("r1", 5)
    assert [f.stars for f in store.feedback("exp")] == [3]
    store.close()


def test_user_ids_are_stored_only_as_salted_hashes_shared_by_replicas(database_url: str) -> None:
    one = ExperimentStore(database_url)
    two = ExperimentStore(database_url)  # a second replica on the same database
    hashed = one.hash_user("alice@example.com")
    assert hashed == two.hash_user("alice@example.com")
    assert hashed is not None and "alice" not in hashed
    assert hashed != one.hash_user("bob@example.com")
    one.close()
    two.close()
    # Another database has another salt: hashes can't be joined across deployments.
    other = ExperimentStore("sqlite://")
    assert other.hash_user("alice@example.com") != hashed
    other.close()


def test_experiment_config_survives_a_restart(database_url: str) -> None:
    store = ExperimentStore(database_url)
    assert store.latest_experiment() is None
    variant = {"name": "A", "version": "1.0", "weight": 0.7}
    first = store.save_experiment("exp", {"name": "exp", "variants": [variant]})
    second = store.save_experiment("exp", {"name": "exp", "variants": [{**variant, "weight": 1}]})
    assert second > first
    store.close()
    reopened = ExperimentStore(database_url)
    latest = reopened.latest_experiment()
    assert latest is not None and latest.revision == second
    assert latest.config["variants"][0]["weight"] == 1
    assert reopened.experiment_weights("exp") == {first: {"A": 0.7}, second: {"A": 1.0}}
    reopened.close()


def test_assigned_units_count_users_once_and_anonymous_requests_each(database_url: str) -> None:
    store = ExperimentStore(database_url)
    for i in range(3):  # one sticky user, three requests
        store.add_prediction(
            PredictionRecord(**{**_prediction(f"u{i}").__dict__, "user_hash": "h1"})
        )
    for i in range(2):
        store.add_prediction(_prediction(f"anon{i}", "B"))
    assert store.assigned_units("exp") == {1: {"A": 1, "B": 2}}
    store.close()


def test_shadow_answers_are_paired_with_live_answers(database_url: str) -> None:
    store = ExperimentStore(database_url)
    store.add_prediction(_prediction("r1", stars=(4,)))
    store.add_shadow("r1", "3.0", (4,), 0.02)
    store.add_shadow("r1", "3.0", None, 0.5, error="upstream_timeout")
    pairs = store.shadow_pairs("exp")
    assert {(p.live_stars, p.shadow_stars, p.error) for p in pairs} == {
        ((4,), (4,), None),
        ((4,), None, "upstream_timeout"),
    }
    store.add_shadow("r1", "3.0", (2,), 0.02)
    observed = sorted(
        store.shadow_observations("exp"), key=lambda o: (o.disagree is None, o.disagree)
    )
    assert [(o.version, o.unit, o.disagree) for o in observed] == [
        ("3.0", "r1", False),
        ("3.0", "r1", True),
        ("3.0", "r1", None),
    ]
    store.close()


def test_feedback_grades_the_shadow_answer_of_the_same_item_in_arrival_order(
    database_url: str,
) -> None:
    store = ExperimentStore(database_url)
    store.add_prediction(_prediction("batch", stars=(4, 2)))
    store.add_prediction(_prediction("single", stars=(5,)))
    store.add_prediction(_prediction("unshadowed", stars=(3,)))
    store.add_shadow("batch", "3.0", (4, 1), 0.02)
    store.add_shadow("single", "3.0", None, 0.5, error="upstream_timeout")  # no answer to grade
    store.add_feedback("batch", 1, item=1)
    store.add_feedback("single", 5)
    store.add_feedback("unshadowed", 3)
    store.add_feedback("batch", 4, item=0)

    paired = store.paired_observations("exp")

    assert [(p.shadow_version, p.live_variant, p.unit) for p in paired] == [
        ("3.0", "A", "batch")
    ] * 2
    # Arrival order of the feedback, each item with its own live and shadow answer.
    assert [(p.true_stars, p.live_stars, p.shadow_stars) for p in paired] == [(1, 2, 1), (4, 4, 4)]
    store.close()


def test_async_calls_run_off_the_event_loop(database_url: str) -> None:
    store = ExperimentStore(database_url)

    async def main() -> None:
        assert await store.run(threading.get_ident) != threading.get_ident()
        await asyncio.gather(
            *(store.run(store.add_prediction, _prediction(f"r{i}")) for i in range(20))
        )
        await asyncio.gather(*(store.run(store.add_feedback, f"r{i}", 4) for i in range(20)))

    asyncio.run(main())
    assert len(store.feedback("exp")) == 20
    store.close()


def test_sqlite_runs_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    store = ExperimentStore(f"sqlite:///{tmp_path / 'a' / 'b.db'}")
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
    store.close()


WRITER = """
import sys
from datetime import UTC, datetime
from abtesting.store import ExperimentStore, PredictionRecord

store = ExperimentStore(sys.argv[1])
i = 0
while True:
    rid = f"k{i}"
    store.add_prediction(PredictionRecord(rid, "exp", 1, "A", "1.0", None, (3,),
        ({"1": 0.0, "2": 0.0, "3": 1.0, "4": 0.0, "5": 0.0},), 0.01, datetime.now(UTC)))
    store.add_feedback(rid, 1 + i % 5)
    print(rid, flush=True)  # the acknowledgement: only after the commit returned
    i += 1
"""


@pytest.mark.slow
@pytest.mark.integration
def test_acknowledged_feedback_survives_kill_9_of_the_writer(database_url: str) -> None:
    ExperimentStore(database_url).close()  # schema in place before the race starts
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, database_url],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    acknowledged = [writer.stdout.readline().strip() for _ in range(40)]
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert writer.returncode == -signal.SIGKILL

    store = ExperimentStore(database_url)
    stored = {f.request_id: f.stars for f in store.feedback("exp")}
    store.close()
    missing = [rid for rid in acknowledged if rid not in stored]
    assert missing == []
    assert all(stored[f"k{i}"] == 1 + i % 5 for i in range(40))


def _failure(request_id: str, variant: str = "B", user_hash: str | None = None) -> FailureRecord:
    return FailureRecord(
        request_id=request_id,
        experiment="exp",
        revision=1,
        variant=variant,
        version="2.0",
        user_hash=user_hash,
        error="ModelNotReady",
        latency_s=0.03,
        created_at=datetime.now(UTC),
    )


def test_failed_requests_count_per_variant_next_to_answered_ones(database_url: str) -> None:
    store = ExperimentStore(database_url)
    store.add_prediction(_prediction("r1", "A"))
    store.add_prediction(_prediction("r2", "B"))
    store.add_failures([_failure("f1"), _failure("f2", user_hash="h9")])
    rows = store.request_observations("exp")
    failed = {(r.variant, r.unit) for r in rows if r.failed}
    assert failed == {("B", "f1"), ("B", "h9")}
    assert sorted((r.variant, r.failed) for r in rows) == [
        ("A", False),
        ("B", False),
        ("B", True),
        ("B", True),
    ]
    assert [f.error for f in store.failures("exp")] == ["ModelNotReady", "ModelNotReady"]
    assert all(r.latency_ms is None for r in rows if r.failed)
    assert {r.latency_ms for r in rows if not r.failed} == {12.0}
    store.close()


def test_requests_answered_and_failed_come_back_in_arrival_order(database_url: str) -> None:
    # The guardrails' sequential tests read requests as a sequence: failures stored apart
    # must come back where they happened, not after every answered request.
    store = ExperimentStore(database_url)
    start = datetime.now(UTC)
    arrivals = ["r0", "f1", "r2", "f3", "r4"]
    for i, request_id in enumerate(arrivals):
        at = start + timedelta(milliseconds=10 * i)
        if request_id.startswith("f"):
            store.add_failures([replace(_failure(request_id), created_at=at)])
        else:
            store.add_prediction(replace(_prediction(request_id, "B"), created_at=at))
    rows = store.request_observations("exp")
    assert [r.unit for r in rows] == arrivals
    assert [r.failed for r in rows] == [False, True, False, True, False]
    store.close()


def test_assigned_units_count_users_whose_requests_failed_once(database_url: str) -> None:
    store = ExperimentStore(database_url)
    store.add_prediction(PredictionRecord(**{**_prediction("r1", "B").__dict__, "user_hash": "h1"}))
    # h1 answered once and failed once: one unit; h2 only failed: still assigned to B.
    store.add_failures([_failure("f1", user_hash="h1"), _failure("f2", user_hash="h2")])
    store.add_failures([_failure("f3"), _failure("f4", "A")])  # anonymous: a unit each
    assert store.assigned_units("exp") == {1: {"A": 1, "B": 3}}
    store.close()


def test_a_database_of_an_older_gateway_gains_the_new_tables_and_keeps_its_data(
    database_url: str,
) -> None:
    store = ExperimentStore(database_url)
    store.add_prediction(_prediction("old"))
    revision = store.save_experiment("exp", {"name": "exp", "variants": []})
    with store.engine.begin() as conn:
        # An older gateway: before Alembic (so before revision 0002's column too), and before
        # these three tables.
        command.downgrade(migrations.config(conn), "0001")
        for table in ("failed_predictions", "autopilot_decisions", "leases", "alembic_version"):
            conn.execute(text(f"DROP TABLE {table}"))
        # An older gateway stored configs without a status.
        conn.execute(text("UPDATE experiment_configs SET config = :c"), {"c": '{"name": "exp"}'})
    store.close()

    reopened = ExperimentStore(database_url)
    assert reopened.get_prediction("old") is not None
    latest = reopened.latest_experiment()
    assert latest is not None and (latest.revision, latest.status) == (revision, "running")
    reopened.add_failures([_failure("f1")])
    assert [r.failed for r in reopened.request_observations("exp")].count(True) == 1
    reopened.close()


def test_experiment_status_is_stored_with_the_revision_and_kept_out_of_the_config(
    database_url: str,
) -> None:
    store = ExperimentStore(database_url)
    store.save_experiment("exp", {"name": "exp", "variants": []}, status="rolled_back")
    latest = store.latest_experiment()
    assert latest is not None
    assert latest.status == "rolled_back" and "status" not in latest.config
    with pytest.raises(ValueError, match="status must be one of"):
        store.save_experiment("exp", {"name": "exp"}, status="paused")  # type: ignore[arg-type]
    store.close()


def _decision(revision: int, action: str = "ramp", mode: str = "on") -> DecisionRecord:
    return DecisionRecord(
        revision=revision,
        at=datetime.now(UTC),
        mode=mode,
        action=action,
        candidate="B",
        weight_before=0.05,
        weight_after=0.1,
        feedbacks=200,
        reason="no guardrail worse",
        numbers={"p_value": 0.2},
        applied=mode == "on",
    )


def test_a_decision_applied_twice_changes_nothing(database_url: str) -> None:
    one = ExperimentStore(database_url)
    two = ExperimentStore(database_url)  # another replica on the same database
    revision = one.save_experiment("exp", {"name": "exp", "variants": []})
    new_config = {"name": "exp", "variants": [{"name": "B", "version": "2.0", "weight": 0.1}]}
    first = one.record_decision("exp", _decision(revision), new_config)
    again = two.record_decision("exp", _decision(revision), new_config)
    assert first is not None and first.applied_revision == revision + 1
    assert again is None
    latest = two.latest_experiment()
    assert latest is not None and latest.revision == revision + 1  # one new revision, not two
    # A dry-run decision of the same action on the same revision is its own record.
    assert one.record_decision("exp", _decision(revision, mode="dry-run")) is not None
    decisions = two.decisions("exp")
    assert [(d.action, d.mode, d.applied) for d in decisions] == [
        ("ramp", "on", True),
        ("ramp", "dry-run", False),
    ]
    assert decisions[0].numbers == {"p_value": 0.2} and decisions[0].at.tzinfo is not None
    one.close()
    two.close()


def test_one_replica_holds_the_autopilot_lease_until_it_expires(database_url: str) -> None:
    one = ExperimentStore(database_url)
    two = ExperimentStore(database_url)
    assert one.acquire_lease("autopilot", "one", ttl_s=30)
    assert not two.acquire_lease("autopilot", "two", ttl_s=30)
    assert one.acquire_lease("autopilot", "one", ttl_s=0.2)  # renewal by the holder
    time.sleep(0.4)
    assert two.acquire_lease("autopilot", "two", ttl_s=30)  # expired: taken over
    assert not one.acquire_lease("autopilot", "one", ttl_s=30)
    one.close()
    two.close()


def test_racing_replicas_never_hold_the_lease_together(database_url: str) -> None:
    stores = [ExperimentStore(database_url) for _ in range(4)]
    winners: list[str] = []
    barrier = threading.Barrier(len(stores))

    def race(i: int) -> None:
        barrier.wait()
        if stores[i].acquire_lease("autopilot", f"r{i}", ttl_s=30):
            winners.append(f"r{i}")

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    for store in stores:
        store.close()
