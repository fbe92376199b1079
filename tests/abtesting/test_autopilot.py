"""The autopilot against a real store (SQLite and PostgreSQL) and the real TorchServe client on a
fake TorchServe: what it decides from stored requests and feedback, and what it changes."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from abtesting.assignment import ExperimentRouter
from abtesting.autopilot import Autopilot
from abtesting.experiment import ExperimentConfig
from abtesting.report import build_report
from abtesting.store import DecisionRecord, ExperimentStore, FailureRecord, PredictionRecord
from serving.torchserve import TorchServeClient
from tests.abtesting.test_store import database_url, postgres_url  # noqa: F401 - fixtures
from tests.api.conftest import INFERENCE, MANAGEMENT, FakeTorchServe

NAME = "auto"


def _config(mode: str, control: float = 0.5, candidate: float = 0.5) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "name": NAME,
            "variants": [
                {"name": "control", "version": "1.0", "weight": control},
                {"name": "candidate", "version": "2.0", "weight": candidate},
            ],
            "autopilot": {"mode": mode, "min_feedback": 40, "ramp": [0.1, 0.5, 0.8]},
        }
    )


@dataclass
class SetDefaultRecorder:
    """The fake TorchServe, plus the management call ``PUT /models/stars/V/set-default``."""

    fake: FakeTorchServe = field(default_factory=FakeTorchServe)
    set_default: list[str] = field(default_factory=list)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.strip("/").split("/")
        if request.method == "PUT" and parts[-1] == "set-default":
            self.set_default.append(parts[2])
            self.fake.default = parts[2]
            return httpx.Response(200, json={"status": "Default version succsesfully updated"})
        return await self.fake(request)


@dataclass
class Setup:
    store: ExperimentStore
    router: ExperimentRouter
    torchserve: SetDefaultRecorder
    revision: int

    def autopilot(self, owner: str = "me", store: ExperimentStore | None = None) -> Autopilot:
        client = TorchServeClient(
            INFERENCE, MANAGEMENT, transport=httpx.MockTransport(self.torchserve)
        )
        router = self.router if store is None else ExperimentRouter()
        return Autopilot(store or self.store, router, client, interval_s=0.05, owner=owner)


@pytest.fixture
def setup(database_url: str) -> Iterator[Setup]:  # noqa: F811 - the imported fixture
    store = ExperimentStore(database_url)
    yield Setup(store, ExperimentRouter(), SetDefaultRecorder(), 0)
    store.close()


def _start(setup: Setup, config: ExperimentConfig) -> int:
    revision = setup.store.save_experiment(NAME, config.model_dump(mode="json"))
    setup.router.reload(setup.store)
    setup.revision = revision
    return revision


def _traffic(
    setup: Setup,
    variant: str,
    users: int,
    *,
    correct: float,
    failed: float = 0.0,
    revision: int | None = None,
    tag: str = "",
) -> None:
    """``users`` users of ``variant`` each send one request; ``failed`` of them fail, the rest
    are answered and rated: ``correct`` of them right (4 stars predicted, 4 or 1 true)."""
    version = "1.0" if variant == "control" else "2.0"
    n_failed = round(users * failed)
    revision = revision or setup.revision
    now = datetime.now(UTC)
    failures = [
        FailureRecord(
            f"{tag}{variant}-f{i}", NAME, revision, variant, version, f"{tag}{variant}-u{i}",
            "ModelNotReady", 0.05, now,
        )
        for i in range(n_failed)
    ]  # fmt: skip
    setup.store.add_failures(failures)
    answered = range(n_failed, users)
    setup.store.add_predictions(
        [
            PredictionRecord(
                f"{tag}{variant}-r{i}", NAME, revision, variant, version, f"{tag}{variant}-u{i}",
                (4,), ({"4": 1.0},), 0.010 + 0.001 * (i % 5), now,
            )
            for i in answered
        ]
    )  # fmt: skip
    right = round(len(answered) * correct)
    for k, i in enumerate(answered):
        setup.store.add_feedback(f"{tag}{variant}-r{i}", 4 if k < right else 1)


def _decisions_metric(action: str, mode: str) -> float:
    value = REGISTRY.get_sample_value(
        "starrating_ab_autopilot_decisions_total", {"action": action, "mode": mode}
    )
    return value or 0.0


def test_a_failing_candidate_is_rolled_back_at_once(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    revision = _start(setup, _config("on"))
    _traffic(setup, "control", 200, correct=0.6)
    _traffic(setup, "candidate", 200, correct=0.6, failed=0.3)
    before = _decisions_metric("rollback", "on")

    with caplog.at_level(logging.INFO, logger="abtesting.autopilot"):
        decisions = asyncio.run(setup.autopilot().step())

    assert [(d.action, d.applied, d.weight_before, d.weight_after) for d in decisions] == [
        ("rollback", True, 0.5, 0.0)
    ]
    assert "error_rate" in decisions[0].reason
    latest = setup.store.latest_experiment()
    assert latest is not None and latest.revision == revision + 1
    assert latest.status == "rolled_back"
    assert [v["weight"] for v in latest.config["variants"]] == [1.0, 0.0]
    assert setup.router.status == "rolled_back"
    assert all(setup.router.choose(f"u{i}", None).variant == "control" for i in range(50))
    assert _decisions_metric("rollback", "on") == before + 1
    line = next(r for r in caplog.records if "rollback" in r.getMessage())
    assert line.fields["action"] == "rollback"  # type: ignore[attr-defined]
    # Ended: later looks decide nothing more.
    _traffic(setup, "control", 10, correct=0.6, tag="later-")
    assert asyncio.run(setup.autopilot().step()) == []
    assert setup.torchserve.set_default == []


def test_a_better_candidate_is_promoted_and_becomes_torchserves_default(setup: Setup) -> None:
    revision = _start(setup, _config("on"))
    _traffic(setup, "control", 150, correct=0.3)
    _traffic(setup, "candidate", 150, correct=0.9)

    decisions = asyncio.run(setup.autopilot().step())

    assert [(d.action, d.weight_after) for d in decisions] == [("promote", 1.0)]
    assert decisions[0].numbers["p_value_holm"] is not None
    assert setup.torchserve.set_default == ["2.0"]
    latest = setup.store.latest_experiment()
    assert latest is not None and (latest.revision, latest.status) == (revision + 1, "promoted")
    assert [v["weight"] for v in latest.config["variants"]] == [0.0, 1.0]
    assert setup.router.choose("anyone", None).version == "2.0"


def test_dry_run_records_what_it_would_do_and_changes_nothing(setup: Setup) -> None:
    revision = _start(setup, _config("dry-run"))
    _traffic(setup, "control", 150, correct=0.3)
    _traffic(setup, "candidate", 150, correct=0.9)
    before = _decisions_metric("promote", "dry-run")

    autopilot = setup.autopilot()
    decisions = asyncio.run(autopilot.step())

    assert [(d.action, d.mode, d.applied) for d in decisions] == [("promote", "dry-run", False)]
    latest = setup.store.latest_experiment()
    assert latest is not None and (latest.revision, latest.status) == (revision, "running")
    assert setup.torchserve.set_default == []
    # Nothing new: no second look; new data: the same decision on the same revision is not
    # stored twice, neither by this replica nor by another.
    assert asyncio.run(autopilot.step()) == []
    _traffic(setup, "candidate", 2, correct=1.0, tag="more-")
    assert asyncio.run(autopilot.step()) == []
    assert len(setup.store.decisions(NAME)) == 1
    assert _decisions_metric("promote", "dry-run") == before + 1


def test_ramp_raises_the_candidate_one_step_at_a_time_as_feedback_comes_in(
    setup: Setup,
) -> None:
    revision = _start(setup, _config("on", control=0.9, candidate=0.1))
    _traffic(setup, "control", 54, correct=0.6)
    _traffic(setup, "candidate", 6, correct=0.6)
    autopilot = setup.autopilot()

    decisions = asyncio.run(autopilot.step())

    # Ramp [0.1, 0.5, 0.8], min_feedback 40: step 0.5 after 40 feedbacks in all, 0.8 after 80.
    assert [(d.action, round(d.weight_before, 9), d.weight_after) for d in decisions] == [
        ("ramp", 0.1, 0.5)
    ]
    latest = setup.store.latest_experiment()
    assert latest is not None and latest.revision == revision + 1
    assert [v["weight"] for v in latest.config["variants"]] == [0.5, 0.5]
    assert latest.status == "running"
    setup.revision = latest.revision
    _traffic(setup, "control", 5, correct=0.6, tag="r2-")
    _traffic(setup, "candidate", 5, correct=0.6, tag="r2-")
    assert asyncio.run(autopilot.step()) == []  # 70 feedbacks: not yet
    _traffic(setup, "control", 10, correct=0.6, tag="r2b-")
    _traffic(setup, "candidate", 10, correct=0.6, tag="r2b-")
    (second,) = asyncio.run(autopilot.step())  # 90
    assert (second.action, second.weight_before, second.weight_after) == ("ramp", 0.5, 0.8)
    assert second.revision == revision + 1


def test_one_replica_decides_at_a_time(setup: Setup) -> None:
    _start(setup, _config("on"))
    _traffic(setup, "control", 200, correct=0.6)
    _traffic(setup, "candidate", 200, correct=0.6, failed=0.3)
    assert setup.store.acquire_lease("autopilot", "other-replica", ttl_s=30)

    assert asyncio.run(setup.autopilot(owner="me").step()) == []
    assert setup.store.decisions(NAME) == []


def test_decisions_survive_a_restart_and_are_not_repeated(setup: Setup, database_url: str) -> None:  # noqa: F811
    _start(setup, _config("on"))
    _traffic(setup, "control", 200, correct=0.6)
    _traffic(setup, "candidate", 200, correct=0.6, failed=0.3)
    asyncio.run(setup.autopilot().step())

    reopened = ExperimentStore(database_url)  # a restarted gateway
    try:
        restarted = setup.autopilot(store=reopened)
        assert asyncio.run(restarted.step()) == []
        assert restarted.router.status == "rolled_back"
        assert [d.action for d in reopened.decisions(NAME)] == ["rollback"]
    finally:
        reopened.close()


def test_autopilot_off_decides_nothing(setup: Setup) -> None:
    _start(setup, _config("off"))
    _traffic(setup, "control", 200, correct=0.6)
    _traffic(setup, "candidate", 200, correct=0.6, failed=0.3)
    assert asyncio.run(setup.autopilot().step()) == []


def test_a_decision_record_is_plain_json(setup: Setup) -> None:
    _start(setup, _config("on"))
    _traffic(setup, "control", 200, correct=0.6)
    _traffic(setup, "candidate", 200, correct=0.6, failed=0.3)
    (decision,) = asyncio.run(setup.autopilot().step())
    assert isinstance(decision, DecisionRecord)
    json.dumps(decision.numbers)  # storable and loggable as is
    assert not any("review" in str(v) for v in decision.numbers.values())


def test_the_background_task_looks_by_itself(setup: Setup, tmp_path: Path) -> None:
    _start(setup, _config("on"))
    _traffic(setup, "control", 200, correct=0.6)
    _traffic(setup, "candidate", 200, correct=0.6, failed=0.3)

    async def main() -> list[Any]:
        task = asyncio.create_task(setup.autopilot().run())
        for _ in range(100):
            await asyncio.sleep(0.05)
            if setup.store.decisions(NAME):
                break
        task.cancel()
        return setup.store.decisions(NAME)

    assert [d.action for d in asyncio.run(main())] == ["rollback"]


def _failing_candidate_with_its_failures_recorded(setup: Setup) -> None:
    _start(setup, _config("on"))
    _traffic(setup, "control", 200, correct=0.6)
    _traffic(setup, "candidate", 200, correct=0.6, failed=0.5)


def _users_returning_after_a_ramp(setup: Setup) -> None:
    """1000 sticky users under 90/10, all back after a ramp to 50/50: those whose point lies
    in [0.5, 0.9) moved from the control to the candidate, as the router moves them."""
    for weights, split in ((0.9, 900), (0.5, 500)):
        revision = _start(setup, _config("on", control=weights, candidate=1 - weights))
        setup.store.add_predictions(
            [
                PredictionRecord(
                    f"r{revision}-{i}", NAME, revision, variant, "1.0", f"u{i}", (4,),
                    ({"4": 1.0},), 0.010, datetime.now(UTC),
                )
                for i in range(1000)
                for variant in ["control" if i < split else "candidate"]
            ]
        )  # fmt: skip
    for i in range(400, 600):  # both variants rated, half of them right
        setup.store.add_feedback(f"r{setup.revision}-{i}", 4 if i % 2 else 1)


def _failures_of_the_candidate_not_recorded(setup: Setup) -> None:
    _start(setup, _config("on"))
    _traffic(setup, "control", 200, correct=0.6)
    _traffic(setup, "candidate", 100, correct=0.6)  # its 100 failing users vanished


@pytest.mark.parametrize(
    ("scenario", "mismatch", "action"),
    [
        (_failing_candidate_with_its_failures_recorded, False, "rollback"),
        (_users_returning_after_a_ramp, False, "ramp"),
        (_failures_of_the_candidate_not_recorded, True, None),
    ],
)
def test_the_report_and_the_autopilot_read_the_split_alike(
    setup: Setup, scenario: Any, mismatch: bool, action: str | None
) -> None:
    """One sample-ratio check: the report's mismatch, its trust flag and the autopilot's gate
    agree. A failing candidate is the error-rate guardrail's finding, and a ramp is no broken
    split (the report used to flag the first, the autopilot the second)."""
    scenario(setup)
    config, revision = setup.router.config, setup.router.revision
    assert config is not None
    report = build_report(setup.store, config, revision)
    assert report.sample_ratio.mismatch is mismatch
    assert report.trustworthy is not mismatch
    assert report.verdict.startswith("results cannot be trusted: sample ratio mismatch") is mismatch
    assert (report.srm_cause is not None) is mismatch
    assert [v.units for v in report.variants] == [
        report.sample_ratio.observed[v.name] for v in report.variants
    ]

    decisions = asyncio.run(setup.autopilot().step())

    assert [d.action for d in decisions] == ([] if action is None else [action])
    for d in decisions:
        assert d.numbers["srm_p_value"] == report.sample_ratio.p_value


def test_the_report_and_a_decision_at_the_same_moment_read_one_assessment(setup: Setup) -> None:
    """The report reads the autopilot's running assessment (``ABTesting.assessment``): the
    numbers a decision was taken on are the report's, to the last bit."""
    revision = _start(setup, _config("dry-run"))
    _traffic(setup, "control", 200, correct=0.6)
    _traffic(setup, "candidate", 200, correct=0.6, failed=0.3)
    autopilot = setup.autopilot()
    (decision,) = asyncio.run(autopilot.step())
    config = setup.router.config
    assert config is not None and decision.action == "rollback"
    report = build_report(setup.store, config, revision, assessment=autopilot.assessment)
    errors = next(g for g in report.guardrails if g.metric == "error_rate")
    assert decision.numbers["error_rate_p_value"] == errors.p_value
    assert decision.numbers["srm_p_value"] == report.sample_ratio.p_value
    assert decision.feedbacks == sum(v.feedback for v in report.variants)
    # Nothing new since: the next look finds nothing to decide.
    assert asyncio.run(autopilot.step()) == []
