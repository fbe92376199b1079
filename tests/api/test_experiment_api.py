"""The A/B routes through the real app on a fake TorchServe: experiment, feedback, report,
shadow traffic, per-variant metrics and the dashboard page."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from abtesting.assignment import unit_point
from api.app import create_app
from api.settings import Settings
from serving.torchserve import TorchServeClient
from tests.api.conftest import INFERENCE, MANAGEMENT, FakeTorchServe, fake_stars

REPO = Path(__file__).resolve().parents[2]
TOKEN = "admin-s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SPLIT = {
    "name": "exp-1",
    "variants": [
        {"name": "A", "version": "1.0", "weight": 0.5},
        {"name": "B", "version": "2.0", "weight": 0.5},
    ],
    "sticky": True,
    "shadow": None,
}
AUTOPILOT_OFF = {
    "mode": "off",
    "primary_metric": "accuracy",
    "ramp": [0.05, 0.1, 0.25, 0.5],
    "min_feedback": 200,
    "guardrails": {"error_rate": 0.01, "latency_p95_ms": 50.0, "disagreement_rate": 0.2},
}
SHOWN = {**SPLIT, "autopilot": AUTOPILOT_OFF, "revision": 1, "status": "running", "decisions": []}


@pytest.fixture
def ab_settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={
            "home": tmp_path,
            "database_url": f"sqlite:///{tmp_path / 'db' / 'starrating.db'}",
            "admin_token": SecretStr(TOKEN),
        }
    )


Handler = Callable[[httpx.Request], Any]
GatewayFactory = Callable[..., TestClient]


@pytest.fixture
def open_gateway(ab_settings: Settings, torchserve: FakeTorchServe) -> Iterator[GatewayFactory]:
    """``open_gateway(handler=None, **settings)``: a started gateway with A/B testing on."""
    opened: list[TestClient] = []

    def open_(handler: Handler | None = None, **overrides: Any) -> TestClient:
        app_settings = ab_settings.model_copy(update=overrides)
        transport = httpx.MockTransport(handler or torchserve)
        client = TorchServeClient(INFERENCE, MANAGEMENT, transport=transport)
        app = create_app(app_settings, client=client, ab_testing=True)
        test_client = TestClient(app, raise_server_exceptions=False)
        test_client.__enter__()
        opened.append(test_client)
        return test_client

    yield open_
    for test_client in opened:
        test_client.__exit__(None, None, None)


@pytest.fixture
def gateway(open_gateway: GatewayFactory) -> TestClient:
    gateway = open_gateway()
    assert gateway.put("/v1/experiment", json=SPLIT, headers=AUTH).status_code == 200
    return gateway


def _predict(gateway: TestClient, text: str, user: str | None = None, **headers: str) -> Any:
    body: dict[str, Any] = {"text": text}
    if user is not None:
        body["user_id"] = user
    response = gateway.post("/v1/predictions", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def _metric(gateway: TestClient, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(gateway.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


# -- the experiment config ------------------------------------------------------------------


def test_put_needs_the_admin_token(open_gateway: GatewayFactory) -> None:
    gateway = open_gateway()
    missing = gateway.put("/v1/experiment", json=SPLIT)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "unauthorized"
    wrong = gateway.put("/v1/experiment", json=SPLIT, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    assert gateway.get("/v1/experiment").status_code == 404  # nothing was changed


def test_put_is_closed_without_a_configured_token(open_gateway: GatewayFactory) -> None:
    gateway = open_gateway(admin_token=None)
    response = gateway.put("/v1/experiment", json=SPLIT, headers=AUTH)
    assert response.status_code == 403
    assert "closed" in response.json()["error"]["message"]


def test_put_then_get_returns_the_split_with_a_revision(gateway: TestClient) -> None:
    got = gateway.get("/v1/experiment")
    assert got.status_code == 200
    assert got.json() == SHOWN
    changed = {**SPLIT, "variants": [{**SPLIT["variants"][0], "weight": 0.9}, SPLIT["variants"][1]]}  # type: ignore[index]
    put = gateway.put("/v1/experiment", json=changed, headers=AUTH)
    assert put.json()["revision"] == 2
    assert gateway.get("/v1/experiment").json()["variants"][0]["weight"] == 0.9


def test_put_refuses_versions_torchserve_cannot_serve_with_a_409(
    gateway: TestClient, torchserve: FakeTorchServe
) -> None:
    # A well-formed body that conflicts with TorchServe's state: 409, not 422 (malformed body).
    unknown = {**SPLIT, "variants": [{"name": "C", "version": "3.0", "weight": 1}]}
    response = gateway.put("/v1/experiment", json=unknown, headers=AUTH)
    assert response.status_code == 409
    assert response.json() == {
        "error": {
            "code": "versions_not_ready",
            "message": "model versions ['3.0'] are not registered in TorchServe "
            "(registered: ['1.0', '2.0'])",
        }
    }
    torchserve.ready["2.0"] = False
    response = gateway.put("/v1/experiment", json=SPLIT, headers=AUTH)
    assert response.status_code == 409
    assert response.json()["error"]["message"] == "model versions ['2.0'] have no ready worker"
    assert gateway.get("/v1/experiment").json()["revision"] == 1


@pytest.mark.parametrize("sticky", [0, 1, "true", "false", None])
def test_put_refuses_a_sticky_that_is_not_a_json_boolean(gateway: TestClient, sticky: Any) -> None:
    response = gateway.put("/v1/experiment", json={**SPLIT, "sticky": sticky}, headers=AUTH)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == {
        "code": "invalid_request",
        "message": "body.sticky: Input should be a valid boolean",
    }
    assert gateway.get("/v1/experiment").json()["revision"] == 1


@pytest.mark.parametrize(
    ("autopilot", "message"),
    [
        ({"mode": "auto"}, "Input should be 'off', 'dry-run' or 'on'"),
        ({"mode": "on", "ramp": [0.1, 0.05]}, "ramp weights must increase"),
        ({"mode": "on", "ramp": [0.5, 1.5]}, "ramp.1: Input should be less than or equal to 1"),
        ({"mode": "on", "ramp": [0, 0.5]}, "ramp.0: Input should be greater than 0"),
        ({"mode": "on", "ramp": [True]}, "ramp.0: Input should be a valid number"),
        ({"mode": "on", "ramp": []}, "at least 1 item"),
        ({"mode": "on", "min_feedback": "50"}, "Input should be a valid integer"),
        ({"mode": "on", "min_feedback": True}, "Input should be a valid integer"),
        ({"mode": "on", "min_feedback": 0}, "greater than or equal to 1"),
        ({"mode": "on", "primary_metric": "f1"}, "'accuracy' or 'mae'"),
        ({"mode": "on", "guardrails": {"error_rate": -0.1}}, "greater than 0"),
        ({"mode": "on", "guardrails": {"latency": 5}}, "Extra inputs are not permitted"),
        ({"mode": "on", "when": "now"}, "Extra inputs are not permitted"),
    ],
)
def test_put_refuses_bad_autopilot_settings_with_a_clear_422(
    gateway: TestClient, autopilot: dict[str, Any], message: str
) -> None:
    response = gateway.put("/v1/experiment", json={**SPLIT, "autopilot": autopilot}, headers=AUTH)
    assert response.status_code == 422, response.text
    assert message in response.text
    assert gateway.get("/v1/experiment").json()["autopilot"]["mode"] == "off"


def test_the_autopilot_needs_exactly_one_candidate(gateway: TestClient) -> None:
    variants: list[Any] = [*SPLIT["variants"], {"name": "C", "version": "2.0", "weight": 0.1}]  # type: ignore[misc]
    three = {**SPLIT, "variants": variants, "autopilot": {"mode": "dry-run"}}
    response = gateway.put("/v1/experiment", json=three, headers=AUTH)
    assert response.status_code == 422
    assert "needs exactly one candidate besides the control, got 3" in response.text
    # Off, several candidates are fine as before.
    three["autopilot"] = {"mode": "off"}
    assert gateway.put("/v1/experiment", json=three, headers=AUTH).status_code == 200


def test_put_autopilot_settings_are_shown_by_get_and_survive_a_restart(
    open_gateway: GatewayFactory, gateway: TestClient
) -> None:
    settings = {
        "mode": "dry-run",
        "primary_metric": "mae",
        "ramp": [0.1, 0.3],
        "min_feedback": 50,
        "guardrails": {"error_rate": 0.02, "latency_p95_ms": 20.0, "disagreement_rate": 0.3},
    }
    put = gateway.put("/v1/experiment", json={**SPLIT, "autopilot": settings}, headers=AUTH)
    assert put.status_code == 200, put.text
    assert put.json()["autopilot"] == settings
    shown = open_gateway().get("/v1/experiment").json()
    assert (shown["autopilot"], shown["status"], shown["decisions"]) == (settings, "running", [])
    # Settings left out take the defaults.
    partial = gateway.put(
        "/v1/experiment", json={**SPLIT, "autopilot": {"mode": "on"}}, headers=AUTH
    ).json()
    assert partial["autopilot"] == {**AUTOPILOT_OFF, "mode": "on"}


def test_put_refuses_malformed_splits(gateway: TestClient) -> None:
    zero = {**SPLIT, "variants": [{"name": "A", "version": "1.0", "weight": 0}]}
    response = gateway.put("/v1/experiment", json=zero, headers=AUTH)
    assert response.status_code == 422
    assert "sum to more than 0" in response.json()["error"]["message"]


def test_the_experiment_schema_refuses_what_put_refuses(gateway: TestClient) -> None:
    import jsonschema

    document = gateway.get("/openapi.json").json()
    schema = {"$ref": "#/components/schemas/ExperimentConfig", **document}
    validator = jsonschema.Draft202012Validator(schema)
    variant = {"name": "A", "version": "1.0", "weight": 1}
    refused = {
        "weights all 0": {**SPLIT, "variants": [{**variant, "weight": 0}]},
        "weight true": {**SPLIT, "variants": [{**variant, "weight": True}]},
        "weight a string": {**SPLIT, "variants": [{**variant, "weight": "1"}]},
        "sample false": {**SPLIT, "shadow": {"version": "1.0", "sample": False}},
        "sticky 0": {**SPLIT, "sticky": 0},
        "sticky a string": {**SPLIT, "sticky": "true"},
        "paired 1": {**SPLIT, "shadow": {"version": "1.0", "sample": 0.5, "paired": 1}},
        "ramp holds true": {**SPLIT, "autopilot": {"ramp": [True]}},
        "ramp holds 0": {**SPLIT, "autopilot": {"ramp": [0]}},
        "reserved name": {**SPLIT, "variants": [{**variant, "name": "override"}]},
    }

    for name, body in refused.items():
        assert not validator.is_valid(body), name
        assert gateway.put("/v1/experiment", json=body, headers=AUTH).status_code == 422, name
    assert validator.is_valid(SPLIT)
    assert validator.is_valid(
        {**SPLIT, "variants": [variant, {**variant, "name": "B", "weight": 0}]}
    )
    # 240.0 is an integer to JSON Schema: accepted by both
    whole = {**SPLIT, "autopilot": {"min_feedback": 240.0}}
    assert validator.is_valid(whole)
    put = gateway.put("/v1/experiment", json=whole, headers=AUTH)
    assert put.status_code == 200, put.text
    assert put.json()["autopilot"]["min_feedback"] == 240


def test_split_and_weights_survive_a_gateway_restart(
    open_gateway: GatewayFactory, gateway: TestClient
) -> None:
    users = [f"u{i}" for i in range(40)]
    before = [_predict(gateway, "good", u)["variant"] for u in users]
    restarted = open_gateway()  # same database, new app
    assert restarted.get("/v1/experiment").json() == SHOWN
    assert [_predict(restarted, "good", u)["variant"] for u in users] == before


def test_predictions_follow_the_sticky_split(
    gateway: TestClient, torchserve: FakeTorchServe
) -> None:
    for i in range(30):
        user = f"user-{i}"
        expected = "A" if unit_point("exp-1", user) < 0.5 else "B"
        answer = _predict(gateway, "fine product", user)
        assert answer["variant"] == expected
        assert answer["version"] == ("1.0" if expected == "A" else "2.0")


def test_version_override_is_answered_and_reported_apart(gateway: TestClient) -> None:
    answer = _predict(gateway, "good", "user-1", **{"X-Model-Version": "2.0"})
    assert (answer["variant"], answer["version"]) == ("override", "2.0")
    report = gateway.get("/v1/experiment/report").json()
    assert report["override_requests"] == 1
    assert sum(v["requests"] for v in report["variants"]) == 0


def test_failed_predictions_are_recorded_per_variant_without_the_text(
    gateway: TestClient, torchserve: FakeTorchServe
) -> None:
    torchserve.ready["2.0"] = False  # B's version has no worker: TorchServe answers 503
    users = [f"user-{i}" for i in range(30)]
    statuses = {
        user: gateway.post(
            "/v1/predictions", json={"text": "secret review text", "user_id": user}
        ).status_code
        for user in users
    }
    on_b = [u for u in users if unit_point("exp-1", u) >= 0.5]
    assert on_b and all(statuses[u] == 503 for u in on_b)
    assert all(statuses[u] == 200 for u in users if u not in on_b)
    store = gateway.app.state.ab.store  # type: ignore[attr-defined]
    for _ in range(50):  # recorded in a task after the error answer
        if len(store.failures("exp-1")) == len(on_b):
            break
        threading.Event().wait(0.05)
    failures = store.failures("exp-1")
    assert {(f.variant, f.version, f.error) for f in failures} == {("B", "2.0", "ModelNotReady")}
    assert len(failures) == len(on_b)
    assert "secret" not in repr(failures)
    assert _metric(gateway, "starrating_ab_failed_requests_total", variant="B") == len(on_b)
    # An override's failure is the client's choice of version, not the split's: not counted.
    forced = gateway.post(
        "/v1/predictions", json={"text": "good"}, headers={"X-Model-Version": "2.0"}
    )
    assert forced.status_code == 503
    threading.Event().wait(0.3)
    assert len(store.failures("exp-1")) == len(on_b)


def test_overrides_do_not_count_as_a_sample_ratio_mismatch(gateway: TestClient) -> None:
    users = [f"u{i}" for i in range(40)]
    for user in users:
        _predict(gateway, "good", user)
    for user in users[:10]:
        _predict(gateway, "good", user, **{"X-Model-Version": "2.0"})
    report = gateway.get("/v1/experiment/report").json()
    assert report["override_requests"] == 10
    assert "override" not in report["sample_ratio"]["observed"]
    assert sum(report["sample_ratio"]["observed"].values()) == 40
    assert report["sample_ratio"]["mismatch"] is False


def test_without_a_store_the_ab_routes_say_so(open_gateway: GatewayFactory, make_app: Any) -> None:
    with TestClient(make_app(), raise_server_exceptions=False) as plain:
        response = plain.get("/v1/experiment")
        assert response.status_code == 503
        assert "not configured" in response.json()["error"]["message"]


# -- feedback ------------------------------------------------------------------------------


def test_feedback_is_stored_and_answers_what_was_predicted(gateway: TestClient) -> None:
    answer = _predict(gateway, "great", "user-1")
    predicted = answer["predictions"][0]["stars"]
    response = gateway.post("/v1/feedback", json={"request_id": answer["request_id"], "stars": 2})
    assert response.status_code == 200
    assert response.json() == {
        "request_id": answer["request_id"],
        "index": 0,
        "stars": 2,
        "predicted": predicted,
        "variant": answer["variant"],
        "version": answer["version"],
    }


def test_feedback_stars_as_a_whole_number_float_is_taken(gateway: TestClient) -> None:
    # JSON Schema's "integer" includes 2.0: clients generated from the schema may send it.
    request_id = _predict(gateway, "great", "user-1")["request_id"]
    body = {"request_id": request_id, "stars": 2.0, "index": 0.0}

    response = gateway.post("/v1/feedback", json=body)

    assert response.status_code == 200, response.text
    assert (response.json()["stars"], response.json()["index"]) == (2, 0)


def test_feedback_for_an_unknown_request_is_404(gateway: TestClient) -> None:
    response = gateway.post("/v1/feedback", json={"request_id": "no-such-request", "stars": 3})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_request"


def test_second_feedback_retry_is_accepted_change_is_409(gateway: TestClient) -> None:
    request_id = _predict(gateway, "great", "user-1")["request_id"]
    assert (
        gateway.post("/v1/feedback", json={"request_id": request_id, "stars": 4}).status_code == 200
    )
    assert (
        gateway.post("/v1/feedback", json={"request_id": request_id, "stars": 4}).status_code == 200
    )
    conflict = gateway.post("/v1/feedback", json={"request_id": request_id, "stars": 1})
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "feedback_conflict"
    report = gateway.get("/v1/experiment/report").json()
    assert sum(v["feedback"] for v in report["variants"]) == 1


def test_feedback_for_each_text_of_a_batch(gateway: TestClient) -> None:
    response = gateway.post("/v1/predictions", json={"texts": ["good", "bad one"]})
    request_id = response.json()["request_id"]
    second = gateway.post("/v1/feedback", json={"request_id": request_id, "stars": 1, "index": 1})
    assert second.json()["predicted"] == fake_stars("bad one")
    missing = gateway.post("/v1/feedback", json={"request_id": request_id, "stars": 1, "index": 2})
    assert missing.status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"request_id": "r", "stars": 0},
        {"request_id": "r", "stars": 6},
        {"request_id": "r", "stars": "4"},
        {"request_id": "r", "stars": 4.5},
        {"request_id": "r", "stars": True},
        {"request_id": "r", "stars": 4, "index": "1"},
        {"request_id": "", "stars": 4},
        {"stars": 4},
        {"request_id": "r", "stars": 4, "text": "sneaky"},
    ],
)
def test_invalid_feedback_is_422(gateway: TestClient, body: dict[str, Any]) -> None:
    response = gateway.post("/v1/feedback", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


# -- the report -----------------------------------------------------------------------------


def test_the_autopilot_rolls_back_a_failing_candidate_and_the_report_says_why(
    open_gateway: GatewayFactory, torchserve: FakeTorchServe
) -> None:
    gateway = open_gateway(autopilot_interval_s=0.1)
    autopilot = {"mode": "on", "min_feedback": 60, "ramp": [0.5, 0.8]}
    put = gateway.put("/v1/experiment", json={**SPLIT, "autopilot": autopilot}, headers=AUTH)
    assert put.status_code == 200, put.text
    torchserve.ready["2.0"] = False  # B fails every request from now on
    for i in range(120):
        answer = gateway.post("/v1/predictions", json={"text": f"review {i}", "user_id": f"u{i}"})
        if answer.status_code == 200:
            gateway.post(
                "/v1/feedback", json={"request_id": answer.json()["request_id"], "stars": 3}
            )
    shown: dict[str, Any] = {}
    for _ in range(100):
        shown = gateway.get("/v1/experiment").json()
        if shown["status"] != "running":
            break
        threading.Event().wait(0.1)
    assert shown["status"] == "rolled_back"
    assert [v["weight"] for v in shown["variants"]] == [1.0, 0.0]
    (decision,) = shown["decisions"]
    assert (decision["action"], decision["mode"], decision["applied"]) == ("rollback", "on", True)
    assert decision["revision"] == 1 and shown["revision"] == 2
    assert "error_rate" in decision["reason"]
    # Users keep getting answers: from the control only.
    answers = [_predict(gateway, "still here", f"u{i}") for i in range(20)]
    assert {a["variant"] for a in answers} == {"A"}
    report = gateway.get("/v1/experiment/report").json()
    assert report["status"] == "rolled_back" and report["decisions"] == shown["decisions"]
    error_rate = next(g for g in report["guardrails"] if g["metric"] == "error_rate")
    assert (error_rate["candidate_value"], error_rate["status"]) == (1.0, "worse")
    assert _metric(gateway, "starrating_ab_autopilot_decisions_total", action="rollback") >= 1


def test_report_names_the_variant_whose_predictions_match_the_feedback(gateway: TestClient) -> None:
    # The fake model rates by text length; users tell A it was right and B it was 2 stars off.
    for i in range(240):
        answer = _predict(gateway, f"review number {i}", f"user-{i}")
        predicted = answer["predictions"][0]["stars"]
        truth = predicted if answer["variant"] == "A" else (predicted + 2 - 1) % 5 + 1
        feedback = {"request_id": answer["request_id"], "stars": truth}
        assert gateway.post("/v1/feedback", json=feedback).status_code == 200

    report = gateway.get("/v1/experiment/report").json()
    a, b = report["variants"]
    assert a["requests"] + b["requests"] == 240
    assert a["units"] == a["requests"]
    assert a["feedback"] == a["requests"]
    assert a["accuracy"]["value"] == 1.0 and b["accuracy"]["value"] == 0.0
    assert a["accuracy"]["low"] < 1.0  # an interval, not a point
    assert b["mae"]["value"] > 1.0
    assert a["latency_p50_ms"]["value"] > 0
    assert sum(a["stars"].values()) == a["requests"]
    by_metric = {c["metric"]: c for c in report["comparisons"]}
    assert by_metric["accuracy"]["difference"] == -1.0
    assert by_metric["accuracy"]["p_value"] < 0.05
    assert by_metric["accuracy"]["p_value_fixed"] <= by_metric["accuracy"]["p_value"]
    assert by_metric["mae"]["fixed_test"] == "z-test, user-clustered variance"
    assert by_metric["accuracy"]["low"] == -1.0  # the band is cut at what accuracy allows
    assert report["sample_ratio"]["mismatch"] is False
    assert report["verdict"].startswith("B is worse than A on accuracy (Holm-adjusted p")
    # What the autopilot reads, shown too (it is off here: no decisions).
    assert (report["primary_metric"], report["trustworthy"], report["srm_cause"]) == (
        "accuracy",
        True,
        None,
    )
    assert by_metric["accuracy"]["p_value_holm"] < 0.05  # the clustered test agrees
    assert by_metric["mae"]["p_value_holm"] == by_metric["mae"]["p_value"]
    guardrails = {g["metric"]: g for g in report["guardrails"]}
    assert set(guardrails) == {"error_rate", "latency_p95_ms"}  # no shadow, no disagreement
    assert guardrails["error_rate"]["candidate"] == "B"
    assert (guardrails["error_rate"]["control_value"], guardrails["error_rate"]["limit"]) == (
        0.0,
        0.01,
    )
    assert guardrails["error_rate"]["status"] in {"not_worse", "not_enough_data"}
    assert (report["status"], report["autopilot"]["mode"], report["decisions"]) == (
        "running",
        "off",
        [],
    )


def test_report_asks_for_more_data_early(gateway: TestClient) -> None:
    for i in range(6):
        answer = _predict(gateway, f"review {i}", f"user-{i}")
        gateway.post("/v1/feedback", json={"request_id": answer["request_id"], "stars": 3})
    report = gateway.get("/v1/experiment/report").json()
    assert "not enough data on accuracy yet: need ~" in report["verdict"]
    needed = [c["feedback_needed"] for c in report["comparisons"]]
    assert all(n is not None and n > 0 for n in needed)


def test_report_without_an_experiment_is_404(open_gateway: GatewayFactory) -> None:
    response = open_gateway().get("/v1/experiment/report")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "no_experiment"


# -- shadow traffic -------------------------------------------------------------------------


def _shadow_split(version: str, sample: float = 1.0) -> dict[str, Any]:
    return {**SPLIT, "shadow": {"version": version, "sample": sample}}


def test_shadow_copies_are_recorded_and_never_returned(
    gateway: TestClient, torchserve: FakeTorchServe
) -> None:
    torchserve.ready["3.0"] = True
    assert gateway.put("/v1/experiment", json=_shadow_split("3.0"), headers=AUTH).status_code == 200
    answers = [_predict(gateway, f"text {i}", f"user-{i}") for i in range(10)]
    assert {a["version"] for a in answers} <= {"1.0", "2.0"}
    report = _wait_for_shadow(gateway, copies=10)
    assert report["shadow"][0]["version"] == "3.0"
    assert report["shadow"][0]["agreement"]["value"] == 1.0  # the fake answers alike
    assert sum(1 for version, _ in torchserve.predictions if version == "3.0") == 10


@pytest.mark.parametrize("paired", [True, False])
def test_feedback_grades_the_shadow_answers_too_unless_paired_evaluation_is_off(
    gateway: TestClient, torchserve: FakeTorchServe, paired: bool
) -> None:
    torchserve.ready["3.0"] = True
    split = _shadow_split("3.0")
    split["shadow"]["paired"] = paired
    assert gateway.put("/v1/experiment", json=split, headers=AUTH).status_code == 200
    answers = [_predict(gateway, f"text {i}", f"user-{i}") for i in range(30)]
    _wait_for_shadow(gateway, copies=30)
    for a in answers:
        truth = a["predictions"][0]["stars"]
        gateway.post("/v1/feedback", json={"request_id": a["request_id"], "stars": truth})

    report = gateway.get("/v1/experiment/report").json()

    rows = [c for c in report["comparisons"] if c["shadow_version"] == "3.0"]
    if not paired:
        assert rows == []
        return
    on_control = sum(a["variant"] == "A" for a in answers)
    assert [(c["metric"], c["candidate"], c["feedbacks"]) for c in rows] == [
        ("accuracy", "3.0", on_control),
        ("mae", "3.0", on_control),
    ]
    assert all(c["difference"] == 0.0 for c in rows)  # the fake answers alike: no difference
    assert "shadow version 3.0 vs A: not enough data on accuracy yet" in report["verdict"]


def test_a_failing_shadow_fails_no_request(gateway: TestClient, torchserve: FakeTorchServe) -> None:
    torchserve.ready["3.0"] = True
    gateway.put("/v1/experiment", json=_shadow_split("3.0"), headers=AUTH)
    torchserve.ready["3.0"] = False  # its worker dies after the experiment started
    answers = [_predict(gateway, f"text {i}", f"user-{i}") for i in range(5)]
    assert all(len(a["predictions"]) == 1 for a in answers)
    report = _wait_for_shadow(gateway, copies=5)
    assert report["shadow"][0]["errors"] == 5
    assert _metric(gateway, "starrating_ab_shadow_total", version="3.0", outcome="error") >= 5


def test_a_slow_shadow_does_not_hold_up_the_answer(
    open_gateway: GatewayFactory, torchserve: FakeTorchServe
) -> None:
    torchserve.ready["3.0"] = True
    release = threading.Event()
    waiting: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/stars/3.0"):
            waiting.append(request.url.path)
            while not release.is_set():  # the shadow version hangs until the test lets it go
                await asyncio.sleep(0.01)
        return await torchserve(request)

    gateway = open_gateway(handler)
    gateway.put("/v1/experiment", json=_shadow_split("3.0"), headers=AUTH)
    answers = [_predict(gateway, f"text {i}", f"user-{i}") for i in range(4)]
    # Every user got the live answer while all the shadow copies were still hanging.
    assert [a["version"] in {"1.0", "2.0"} for a in answers] == [True] * 4
    assert not release.is_set() and len(waiting) == 4
    release.set()
    report = _wait_for_shadow(gateway, copies=4)
    assert report["shadow"][0]["errors"] == 0


def _wait_for_shadow(gateway: TestClient, copies: int) -> dict[str, Any]:
    for _ in range(200):
        report: dict[str, Any] = gateway.get("/v1/experiment/report").json()
        if report["shadow"] and report["shadow"][0]["copies"] >= copies:
            return report
        threading.Event().wait(0.02)
    raise AssertionError(f"shadow copies never reached {copies}: {report['shadow']}")


# -- metrics and the dashboard ---------------------------------------------------------------


def test_per_variant_metrics_count_requests_stars_and_feedback(gateway: TestClient) -> None:
    labels = {"variant": "A", "version": "1.0"}
    before = _metric(gateway, "starrating_ab_requests_total", **labels)
    correct_before = _metric(gateway, "starrating_ab_correct_total", variant="A")
    user = next(f"user-{i}" for i in range(100) if unit_point("exp-1", f"user-{i}") < 0.5)
    answer = _predict(gateway, "abc", user)
    gateway.post(
        "/v1/feedback", json={"request_id": answer["request_id"], "stars": fake_stars("abc")}
    )
    assert _metric(gateway, "starrating_ab_requests_total", **labels) == before + 1
    assert _metric(gateway, "starrating_ab_correct_total", variant="A") == correct_before + 1
    assert (
        _metric(
            gateway,
            "starrating_ab_predicted_stars_total",
            variant="A",
            stars=str(fake_stars("abc")),
        )
        >= 1
    )
    assert _metric(gateway, "starrating_ab_upstream_duration_seconds_count", variant="A") >= 1


def test_grafana_ab_dashboard_plots_only_metrics_the_gateway_exposes(gateway: TestClient) -> None:
    dashboard = json.loads((REPO / "deploy" / "grafana" / "dashboards" / "ab.json").read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = set(re.findall(r"starrating_ab_\w+", " ".join(queries)))
    assert len(used) >= 6
    answer = _predict(gateway, "abc", "user-1")
    gateway.post("/v1/feedback", json={"request_id": answer["request_id"], "stars": 2})
    exposed = {
        sample.name
        for family in text_string_to_metric_families(gateway.get("/metrics").text)
        for sample in family.samples
    }
    assert used - exposed == set()
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {"prometheus"}


def test_dashboard_page_and_assets_are_served_self_contained(gateway: TestClient) -> None:
    page = gateway.get("/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    script = gateway.get("/dashboard/dashboard.js")
    assert script.status_code == 200
    assert "innerHTML" not in script.text
    assert "/v1/experiment/report" in script.text
    assert gateway.get("/dashboard/dashboard.css").status_code == 200
    assert gateway.get("/dashboard/favicon.svg").headers["content-type"] == "image/svg+xml"
    for other in ("dashboard.html", "..%2F..%2Fstore.py", "secrets.txt"):
        assert gateway.get(f"/dashboard/{other}").status_code == 404


def test_a_stored_experiment_routing_to_a_removed_version_is_named_at_start_and_in_readyz(
    open_gateway: GatewayFactory, torchserve: FakeTorchServe, caplog: pytest.LogCaptureFixture
) -> None:
    first = open_gateway()
    assert first.put("/v1/experiment", json=SPLIT, headers=AUTH).status_code == 200
    # Version 2.0's .mar is gone (a store volume reused): TorchServe no longer has it.
    del torchserve.ready["2.0"]

    with caplog.at_level("WARNING", logger="abtesting.service"):
        restarted = open_gateway()
    readyz = restarted.get("/readyz")

    [logged] = [r for r in caplog.records if r.name == "abtesting.service"]
    assert logged.levelname == "WARNING"
    assert readyz.status_code == 503
    error = readyz.json()["error"]
    assert error["code"] == "stale_experiment"
    for said in (logged.getMessage(), error["message"]):
        assert "experiment 'exp-1' routes to model version 2.0" in said
        assert "registered: 1.0" in said
        assert "starrating archive --run RUN_DIR --version 2.0" in said
        assert "PUT /v1/experiment" in said
    # Changing the experiment is the way out: readiness comes back without a restart.
    only_one = {**SPLIT, "variants": [{"name": "A", "version": "1.0", "weight": 1.0}]}
    assert restarted.put("/v1/experiment", json=only_one, headers=AUTH).status_code == 200
    assert restarted.get("/readyz").status_code == 200


def test_a_version_without_a_ready_worker_is_not_called_stale(
    gateway: TestClient, torchserve: FakeTorchServe
) -> None:
    torchserve.ready["2.0"] = False
    readyz = gateway.get("/readyz")
    assert readyz.status_code == 503
    assert readyz.json()["error"] == {
        "code": "not_ready",
        "message": "model version 2.0 has no ready worker",
    }
