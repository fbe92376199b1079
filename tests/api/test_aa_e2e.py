"""An A/A experiment end to end: one model served by a real TorchServe as two versions behind
the gateway process, sticky simulated users, and the report, which must not call a difference.

Version 1.1 is archived from the very run directory ``running_gateway`` archived as 1.0 (the
same weights, the same handler), so any difference the report found would be a false one. Each
user's true ratings agree with the answer they got at a rate of their own (one user's feedbacks
are correlated), whichever variant answered. The report's accuracy comparison is the one
``abtesting.autopilot`` reads from the store the gateway wrote: the report and the autopilot share
one assessment.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from abtesting.autopilot import assess_experiment, observe
from abtesting.experiment import ExperimentConfig
from abtesting.store import ExperimentStore
from serving.torchserve_process import wait_until_answers
from tests.api.live import LiveGateway, running_gateway
from tests.conftest import WORDS
from training.archive import archive_run

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TOKEN = "aa-e2e-admin-token"
SAME_AS = ("1.0", "1.1")  # version 1.1: 1.0's run archived again
SPLIT = {
    "name": "aa-1.0-vs-1.1",
    "variants": [
        {"name": "control", "version": SAME_AS[0], "weight": 0.5},
        {"name": "candidate", "version": SAME_AS[1], "weight": 0.5},
    ],
    "sticky": True,
}
USERS = 60
MEAN_FEEDBACK_PER_USER = 5


@dataclass(frozen=True)
class AAExperiment:
    live: LiveGateway
    report: dict[str, Any]
    feedbacks: int


def _arrivals(rng: random.Random) -> list[str]:
    """User ids in arrival order: users send different numbers of feedbacks (at least one)."""
    arrivals = [
        f"aa-user-{u}"
        for u in range(USERS)
        for _ in range(1 + int(rng.expovariate(1 / (MEAN_FEEDBACK_PER_USER - 1))))
    ]
    rng.shuffle(arrivals)
    return arrivals


@pytest.fixture(scope="module")
def aa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AAExperiment]:
    root = tmp_path_factory.mktemp("aa-e2e")
    with running_gateway(root, {"STARRATING_ADMIN_TOKEN": TOKEN}) as live:
        # running_gateway's own run directory of 1.0 (tests.serving.helpers.build_tiny_archives).
        archive_run(root / "runs" / f"run-{SAME_AS[0]}", SAME_AS[1], root / "model_store")
        with live.torchserve.sync_client(timeout=120.0) as torchserve:
            torchserve.register(f"stars-{SAME_AS[1]}.mar")
            wait_until_answers(torchserve, SAME_AS[1], timeout_s=120.0)
        put = live.http.put(
            "/v1/experiment", json=SPLIT, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert put.status_code == 200, put.text

        rng = random.Random(24)
        agreement = {
            f"aa-user-{u}": min(max(rng.gauss(0.6, 0.2), 0.05), 0.95) for u in range(USERS)
        }
        arrivals = _arrivals(rng)
        for user in arrivals:
            text = " ".join(rng.choices(WORDS, k=rng.randint(3, 12)))
            answer = live.http.post("/v1/predictions", json={"text": text, "user_id": user})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            stars = body["predictions"][0]["stars"]
            if rng.random() >= agreement[user]:
                stars = rng.choice([s for s in range(1, 6) if s != stars])
            feedback = live.http.post(
                "/v1/feedback", json={"request_id": body["request_id"], "stars": stars}
            )
            assert feedback.status_code == 200, feedback.text
        report = live.http.get("/v1/experiment/report")
        assert report.status_code == 200, report.text
        yield AAExperiment(live, report.json(), len(arrivals))


def test_the_report_calls_no_difference_between_one_model_served_twice(aa: AAExperiment) -> None:
    report = aa.report
    assert [(v["name"], v["version"]) for v in report["variants"]] == [
        ("control", SAME_AS[0]),
        ("candidate", SAME_AS[1]),
    ]
    assert sum(v["feedback"] for v in report["variants"]) == aa.feedbacks
    assert report["trustworthy"] is True and report["sample_ratio"]["mismatch"] is False
    accuracy = next(c for c in report["comparisons"] if c["metric"] == "accuracy")
    print(
        f"\nA/A through the gateway: {aa.feedbacks} feedbacks from {USERS} users, accuracy "
        f"{[round(v['accuracy']['value'], 3) for v in report['variants']]}, difference "
        f"{accuracy['difference']:+.3f}, Holm p {accuracy['p_value_holm']:.3f}; "
        f"verdict: {report['verdict']}"
    )
    assert accuracy["p_value_holm"] is not None  # past the burn-in: a real reading
    assert not any(c["significant"] for c in report["comparisons"])
    assert " is better than " not in report["verdict"]
    assert " is worse than " not in report["verdict"]


def test_the_report_reads_the_autopilots_assessment_of_the_store(aa: AAExperiment) -> None:
    store = ExperimentStore(f"sqlite:///{aa.live.torchserve.paths.home / 'db' / 'starrating.db'}")
    try:
        stored = store.latest_experiment()
        assert stored is not None
        config = ExperimentConfig.model_validate(stored.config)
        assessment = assess_experiment(config, observe(store, config))
    finally:
        store.close()
    (accuracy,) = (c for c in assessment.primary if c.metric == "accuracy")
    shown = next(c for c in aa.report["comparisons"] if c["metric"] == "accuracy")
    assert accuracy.feedbacks == aa.feedbacks
    # An A/A experiment this small rarely gets its always-valid p below 1: the interval, the
    # fixed-horizon p and the feedback still needed are compared too, all of the same reading.
    for key in ("p_value_holm", "p_value", "difference", "low", "high", "p_value_fixed"):
        assert shown[key] == pytest.approx(getattr(accuracy, key), rel=1e-12), key
    assert shown["feedback_needed"] == accuracy.feedback_needed
    assert shown["significant"] is (accuracy.better or accuracy.worse) is False
    history = aa.report["interval_history"]["candidate"]
    assert [look["feedbacks"] for look in history] == [look.feedbacks for look in accuracy.history]
    assert aa.report["verdict"] == assessment.verdict
