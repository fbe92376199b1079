"""An A/B test end to end: two versions in a real TorchServe behind the gateway process,
simulated users with known true ratings, the report's verdict, and the dashboard in Chromium."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from abtesting.store import DecisionRecord, ExperimentStore
from loadtests.screenshots import CHROMIUM_FLAGS
from serving.gateway_process import gateway_env, start_gateway
from tests.api.live import LiveGateway, running_gateway
from tests.conftest import WORDS

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
TOKEN = "e2e-admin-token-0123"
SPLIT = {
    "name": "tiny-1-vs-2",
    "variants": [
        {"name": "control", "version": "1.0", "weight": 0.3},
        {"name": "candidate", "version": "2.0", "weight": 0.7},
    ],
    "sticky": True,
    "shadow": {"version": "1.0", "sample": 0.2},
}
USERS = 300


@dataclass(frozen=True)
class Experiment:
    live: LiveGateway
    report: dict[str, Any]
    assigned: dict[str, int]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Experiment]:
    """Users rate reviews; their true ratings agree with version 2.0 far more than with 1.0.

    The truth is built from version 2.0's own answers (asked straight from TorchServe) for 85%
    of the reviews and drawn at random for the rest, so 2.0 is the better version by
    construction and the report must find that out from feedback alone.
    """
    env = {"STARRATING_ADMIN_TOKEN": TOKEN}
    with running_gateway(tmp_path_factory.mktemp("ab-e2e"), env) as live:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        put = live.http.put("/v1/experiment", json=SPLIT, headers=auth)
        assert put.status_code == 200, put.text

        rng = random.Random(11)
        texts = [" ".join(rng.choices(WORDS, k=rng.randint(3, 12))) for _ in range(USERS)]
        with live.torchserve.sync_client() as torchserve:
            oracle = [
                p.stars
                for start in range(0, USERS, 50)
                for p in torchserve.predict(texts[start : start + 50], "2.0")
            ]
        truth = [s if rng.random() < 0.85 else rng.randint(1, 5) for s in oracle]

        assigned: dict[str, int] = {}
        for i, (text, stars) in enumerate(zip(texts, truth, strict=True)):
            answer = live.http.post("/v1/predictions", json={"text": text, "user_id": f"u{i}"})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assigned[body["variant"]] = assigned.get(body["variant"], 0) + 1
            feedback = live.http.post(
                "/v1/feedback", json={"request_id": body["request_id"], "stars": stars}
            )
            assert feedback.status_code == 200, feedback.text
        report = live.http.get("/v1/experiment/report")
        assert report.status_code == 200, report.text
        yield Experiment(live, report.json(), assigned)


def test_report_names_the_better_version_with_p_below_005(experiment: Experiment) -> None:
    report = experiment.report
    control, candidate = report["variants"]
    assert (control["version"], candidate["version"]) == ("1.0", "2.0")
    assert control["requests"] == experiment.assigned["control"]
    assert candidate["requests"] == experiment.assigned["candidate"]
    assert control["feedback"] + candidate["feedback"] == USERS
    assert candidate["requests"] > control["requests"]  # 70/30 weights
    assert candidate["accuracy"]["value"] > control["accuracy"]["value"]
    accuracy = next(c for c in report["comparisons"] if c["metric"] == "accuracy")
    assert accuracy["candidate"] == "candidate" and accuracy["difference"] > 0
    assert accuracy["p_value"] < 0.05
    assert accuracy["p_value_fixed"] is not None and accuracy["p_value_fixed"] < 0.05
    assert report["verdict"].startswith(
        "candidate is better than control on accuracy (Holm-adjusted p"
    )
    assert report["sample_ratio"]["mismatch"] is False
    shadow = report["shadow"][0]
    assert shadow["version"] == "1.0" and 0 < shadow["copies"] < USERS


def test_per_variant_metrics_agree_with_the_report(experiment: Experiment) -> None:
    live, report = experiment.live, experiment.report
    for variant in report["variants"]:
        name = variant["name"]
        assert live.metric("starrating_ab_feedback_total", variant=name) == variant["feedback"]
        correct = live.metric("starrating_ab_correct_total", variant=name)
        assert correct == round(variant["accuracy"]["value"] * variant["feedback"])


def test_dashboard_shows_variants_numbers_and_verdict_in_chromium(experiment: Experiment) -> None:
    from playwright.sync_api import expect, sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Chromium is missing: apt-get install -y chromium (.ci/run does)"
    # Two autopilot decisions as the autopilot stores them (dry run: nothing moves), taken at
    # looks inside the interval's history, so the chart must mark them where they happened.
    history = experiment.report["interval_history"]["candidate"]
    seeded = seed_decisions(experiment.live, [history[len(history) // 3], history[-1]])
    report = experiment.live.http.get("/v1/experiment/report").json()
    assert [d["action"] for d in report["decisions"]] == ["ramp", "promote"]
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(f"{experiment.live.url}/dashboard")
            # Waits through Playwright's own world: the page's CSP forbids evaluating strings.
            expect(page.locator("#verdict")).to_contain_text(" is better than ", timeout=20_000)
            expect(page.locator("svg.history-chart g.decision")).to_have_count(2)
            verdict = page.text_content("#verdict")
            rows = page.locator("#variants tbody tr").all_inner_texts()
            comparisons = page.locator("#comparisons tbody tr").all_inner_texts()
            experiment_name = page.text_content("#experiment")
            charts = page.locator("main svg").count()
            history_charts = page.locator("svg.history-chart")
            chart_candidates = [
                history_charts.nth(i).get_attribute("data-candidate")
                for i in range(history_charts.count())
            ]
            bands = page.locator("svg.history-chart polygon.band").count()
            band = page.locator("svg.history-chart polygon.band").get_attribute("points")
            line = page.locator("svg.history-chart polyline.difference").get_attribute("points")
            markers = page.locator("svg.history-chart g.decision")
            marker_classes = [markers.nth(i).get_attribute("class") for i in range(2)]
            marker_titles = [markers.nth(i).locator("title").text_content() for i in range(2)]
            guardrail_rows = page.locator("#guardrails tbody tr").all_inner_texts()
            decisions_listed = page.locator("#decisions li").all_inner_texts()
            autopilot = page.text_content("#autopilot-status")
            banner_hidden = page.locator("#trust-banner").is_hidden()
            page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)
            # The README's picture: the interval over time, the autopilot and the guardrails.
            page.screenshot(
                path=str(artifacts / "dashboard-autopilot.png"),
                full_page=True,
                clip={"x": 0, "y": 0, "width": 1280, "height": 1100},
            )
        finally:
            browser.close()

    assert problems == []
    assert verdict is not None and verdict.startswith("candidate is better than control")
    assert experiment_name == SPLIT["name"]
    control, candidate = report["variants"]
    assert rows[0].split("\t")[:4] == ["control", "1.0", "0.30", str(control["requests"])]
    assert rows[1].split("\t")[:4] == ["candidate", "2.0", "0.70", str(candidate["requests"])]
    assert f"{candidate['accuracy']['value']:.3f}" in rows[1]
    assert any(row.startswith("candidate vs control\taccuracy") for row in comparisons)
    assert charts == 6  # the interval over time, traffic, accuracy, MAE, latency, stars

    # The interval over time: one chart and band per candidate, a point per look in the report.
    assert chart_candidates == ["candidate"] and bands == 1
    looks = report["interval_history"]["candidate"]
    assert len(looks) >= 100  # 300 feedbacks, a look each once both arms have the burn-in
    assert band is not None and line is not None
    assert len(line.split()) == len(looks) and len(band.split()) == 2 * len(looks)
    # The band narrows: its height in pixels at the first look exceeds that at the last.
    corners = [tuple(map(float, xy.split(","))) for xy in band.split()]
    upper, lower = corners[: len(looks)], corners[len(looks) :][::-1]
    first_height, last_height = lower[0][1] - upper[0][1], lower[-1][1] - upper[-1][1]
    assert first_height > 1.5 * last_height > 0
    first, last = looks[0], looks[-1]
    assert first["high"] - first["low"] > 1.5 * (last["high"] - last["low"])
    # Decision markers by action, each saying why.
    assert marker_classes == ["decision decision-ramp", "decision decision-promote"]
    for title, decision in zip(marker_titles, seeded, strict=True):
        assert title is not None and decision.reason in title
        assert f"at {decision.feedbacks} feedbacks" in title and "(dry run)" in title
    assert len(decisions_listed) == 2 and "promote" in decisions_listed[1]
    assert autopilot is not None and autopilot.startswith("experiment running")

    # Guardrails: a row per candidate and metric with its status; trusted, so no banner.
    assert len(guardrail_rows) == len(report["guardrails"]) >= 2
    for row, guardrail in zip(guardrail_rows, report["guardrails"], strict=True):
        assert row.startswith(guardrail["candidate"])
        assert row.endswith(guardrail["status"].replace("_", " "))
    assert report["trustworthy"] is True and banner_hidden


def seed_decisions(live: LiveGateway, looks: list[dict[str, Any]]) -> list[DecisionRecord]:
    """Store a dry-run ramp and promote through the store API, at the given looks."""
    store = ExperimentStore(f"sqlite:///{live.torchserve.paths.home / 'db' / 'starrating.db'}")
    try:
        revision = store.latest_experiment()
        assert revision is not None
        decisions = [
            DecisionRecord(
                revision=revision.revision,
                at=datetime.fromisoformat(look["at"]),
                mode="dry-run",
                action=action,
                candidate="candidate",
                weight_before=before,
                weight_after=after,
                feedbacks=look["feedbacks"],
                reason=reason,
                numbers={"difference": look["difference"], "low": look["low"]},
                applied=False,
            )
            for look, (action, before, after, reason) in zip(
                looks,
                [
                    ("ramp", 0.7, 0.75, "no guardrail worse and the split follows the weights"),
                    ("promote", 0.75, 1.0, "accuracy significantly better, no guardrail worse"),
                ],
                strict=True,
            )
        ]
        for decision in decisions:
            assert store.record_decision(str(SPLIT["name"]), decision) is not None
        return decisions
    finally:
        store.close()


def test_acknowledged_feedback_survives_kill_9_of_the_gateway(experiment: Experiment) -> None:
    """Runs last: it replaces the module's gateway process with a fresh one."""
    live = experiment.live
    answer = live.http.post("/v1/predictions", json={"text": "great value", "user_id": "u-kill"})
    request_id = answer.json()["request_id"]
    acknowledged = live.http.post("/v1/feedback", json={"request_id": request_id, "stars": 5})
    assert acknowledged.status_code == 200

    os.kill(live.gateway_pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(live.gateway_pid, 0)
    base = {k: v for k, v in os.environ.items() if not k.startswith("STARRATING_")}
    env = gateway_env(
        {**base, "STARRATING_ADMIN_TOKEN": TOKEN}, live.torchserve.paths, live.torchserve.options
    )
    port = int(live.url.rsplit(":", 1)[1])
    start_gateway(live.torchserve.paths, env, host="127.0.0.1", port=port)

    report = live.http.get("/v1/experiment/report").json()
    assert sum(v["feedback"] for v in report["variants"]) == USERS + 1
    again = live.http.post("/v1/feedback", json={"request_id": request_id, "stars": 1})
    assert again.status_code == 409  # the 5 stars from before the kill are still there
