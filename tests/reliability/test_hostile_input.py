"""Hostile and odd input against the running gateway, with a real TorchServe behind it.

A hand-written corpus (empty texts, a 10 MB body, a huge batch, invalid UTF-8, NUL bytes, deep
nesting, wrong types, unicode edge cases, markup) and schemathesis' property-based fuzzing of
every route in the gateway's own OpenAPI schema. Every request gets either a clear 4xx with the
one error body or a correct prediction (the same stars TorchServe gives for that text), never a
5xx, and the gateway process answers its liveness probe after each one.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree

import pytest

from loadtests.screenshots import CHROMIUM_FLAGS
from tests.api.live import run_schemathesis, schemathesis_failure
from tests.reliability.conftest import ARTIFACTS, GatewayStack

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PREDICT = "/v1/predictions"
MB = 1024 * 1024


@dataclass(frozen=True)
class Refused:
    """A request the gateway must refuse with ``status`` and error ``code``."""

    name: str
    status: int
    code: str
    body: bytes | None = None
    payload: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def raw(text: str) -> bytes:
    return text.encode()


def deep(depth: int) -> bytes:
    return b'{"text": ' + b"[" * depth + b"]" * depth + b"}"


REFUSED = [
    Refused("empty text", 422, "invalid_request", payload={"text": ""}),
    Refused("whitespace-only text", 422, "invalid_request", payload={"text": " \t\n\r\u3000 "}),
    Refused("blank text in a batch", 422, "invalid_request", payload={"texts": ["a", " "]}),
    Refused("only NUL bytes", 422, "invalid_request", payload={"text": "\x00\x00\x00"}),
    Refused("only control characters", 422, "invalid_request", payload={"text": "\x01\x7f\x9f"}),
    Refused("empty batch", 422, "invalid_request", payload={"texts": []}),
    Refused("text and texts", 422, "invalid_request", payload={"text": "a", "texts": ["b"]}),
    Refused("neither text nor texts", 422, "invalid_request", payload={"user_id": "u-1"}),
    Refused("unknown field", 422, "invalid_request", payload={"text": "a", "admin": True}),
    Refused("text is a number", 422, "invalid_request", payload={"text": 5}),
    Refused("text is null, no texts", 422, "invalid_request", payload={"text": None}),
    Refused("text is an object", 422, "invalid_request", payload={"text": {"a": 1}}),
    Refused("text is a bool", 422, "invalid_request", payload={"text": True}),
    Refused("texts is a string", 422, "invalid_request", payload={"texts": "abc"}),
    Refused("texts holds numbers", 422, "invalid_request", payload={"texts": [1, 2]}),
    Refused("texts holds null", 422, "invalid_request", payload={"texts": ["a", None]}),
    Refused("texts holds lists", 422, "invalid_request", payload={"texts": [["a"]]}),
    Refused("body is a list", 422, "invalid_request", payload=["a", "b"]),
    Refused("body is a string", 422, "invalid_request", payload="great product"),
    Refused("body is null", 422, "invalid_request", payload=None),
    Refused("user_id with spaces", 422, "invalid_request", payload={"text": "a", "user_id": "a b"}),
    Refused("long user_id", 422, "invalid_request", payload={"text": "a", "user_id": "u" * 129}),
    Refused("user_id is a number", 422, "invalid_request", payload={"text": "a", "user_id": 7}),
    Refused("NaN instead of a text", 422, "invalid_request", body=b'{"text": NaN}'),
    Refused("huge number instead of a text", 422, "invalid_request", body=b'{"text": 1e999}'),
    Refused("invalid UTF-8", 422, "invalid_request", body=b'{"text": "caf\xe9 \xff\xfe"}'),
    Refused("truncated JSON", 422, "invalid_request", body=b'{"text": "I loved'),
    Refused("empty body", 422, "invalid_request", body=b""),
    Refused("not JSON at all", 422, "invalid_request", body=b"<html>hello</html>"),
    Refused("deeply nested JSON", 422, "invalid_request", body=deep(100_000)),
    Refused("nested objects", 422, "invalid_request", body=b'{"text":' * 5000 + b"1" + b"}" * 5000),
    Refused("path traversal version", 422, "invalid_request", payload={"text": "a"},
            headers={"X-Model-Version": "../../models"}),
    Refused("encoded traversal version", 422, "invalid_request", payload={"text": "a"},
            headers={"X-Model-Version": "%2e%2e%2fmodels"}),
    Refused("version with a query", 422, "invalid_request", payload={"text": "a"},
            headers={"X-Model-Version": "1.0?x=1"}),
    Refused("unknown version", 404, "unknown_version", payload={"text": "a"},
            headers={"X-Model-Version": "9.9.9"}),
    Refused("user id header with spaces", 422, "invalid_request", payload={"text": "a"},
            headers={"X-User-Id": "a b"}),
    Refused("batch far over the limit", 413, "too_large", payload={"texts": ["ok"] * 50_000}),
    Refused("batch one over the limit", 413, "too_large", payload={"texts": ["ok"] * 65}),
    Refused("text over the character limit", 413, "too_large", payload={"text": "a" * 10_001}),
    Refused("10 MB body", 413, "too_large", payload={"text": "a" * (10 * MB)}),
    Refused("body just over 1 MB", 413, "too_large", payload={"texts": ["b" * 9000] * 120}),
]  # fmt: skip


def send(stack: GatewayStack, case: Refused) -> Any:
    headers = {"Content-Type": "application/json", **case.headers}
    content = case.body if case.body is not None else json.dumps(case.payload).encode()
    return stack.http.post(PREDICT, content=content, headers=headers)


@pytest.mark.parametrize("case", REFUSED, ids=lambda case: case.name)
def test_bad_input_gets_a_clear_4xx_and_the_gateway_stays_up(
    stack: GatewayStack, case: Refused
) -> None:
    response = send(stack, case)

    assert (response.status_code, response.json()["error"]["code"]) == (case.status, case.code)
    assert set(response.json()) == {"error"}
    assert set(response.json()["error"]) == {"code", "message"}
    assert response.json()["error"]["message"]
    assert response.headers["content-type"] == "application/json"
    assert stack.alive()


def test_a_10_mb_chunked_body_is_refused_while_it_streams(stack: GatewayStack) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"texts": ["'
        for _ in range(10):
            yield b"x" * MB
        yield b'"]}'

    response = stack.http.post(
        PREDICT, content=chunks(), headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    assert stack.alive()


ACCEPTED = {
    "emoji": "I 😍 this product 👍🏽👨‍👩‍👧‍👦 would buy again 🔥",
    "right-to-left": "المنتج رائع جدا وأنصح به",
    "right-to-left override": "great \u202eproduct\u202c really",
    "combining marks": "Z̸̢̛̗a̵̡͚l̶̰̓g̷̣̈o̶̦͝ review " + "e\u0301" * 200,
    "zero-width characters": "good\u200b\u200c\u200d\ufeff value",
    "CJK": "很好的产品,非常满意 とても良い 좋은 제품",
    "embedded NUL bytes": "good\x00 product\x00",
    "script tag": '<script>alert("x")</script> loved it',
    "HTML attributes": '<img src=x onerror="alert(1)"> bad',
    "SQL-looking": "'; DROP TABLE feedback; --",
    "template syntax": "{{7*7}} ${jndi:ldap://x} %s%n",
    "only punctuation": "?!...",
    "one character": "a",
    "text at the limit": "good " * 2000,
    "newlines and tabs": "line one\nline two\r\n\ttabbed",
    "astral plane": "𝕲𝖔𝖔𝖉 𝔭𝔯𝔬𝔡𝔲𝔠𝔱 \U0001f600",
}


def test_odd_but_valid_texts_get_the_stars_torchserve_gives(stack: GatewayStack) -> None:
    texts = list(ACCEPTED.values())
    with stack.torchserve.sync_client() as direct:
        expected = [p.stars for p in direct.predict(texts)]

    one_by_one = [stack.http.post(PREDICT, json={"text": text}) for text in texts]
    batch = stack.http.post(PREDICT, json={"texts": texts})

    assert [r.status_code for r in one_by_one] == [200] * len(texts)
    assert [r.json()["predictions"][0]["stars"] for r in one_by_one] == expected
    assert batch.status_code == 200
    assert [p["stars"] for p in batch.json()["predictions"]] == expected
    assert stack.alive()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"text": "\\ud800 lone high surrogate"}', id="lone high surrogate"),
        pytest.param(b'{"text": "\\udfff"}', id="lone low surrogate only"),
        pytest.param(b'{"texts": ["ok", "\\udc80\\ud800 reversed pair"]}', id="reversed pair"),
    ],
)
def test_lone_surrogates_are_refused_with_422(stack: GatewayStack, body: bytes) -> None:
    # JSON may escape UTF-16 halves that no UTF-8 text can hold: they must never reach the
    # TorchServe client (which cannot encode them) or a log line.
    response = stack.http.post(PREDICT, content=body, headers={"Content-Type": "application/json"})

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"
    assert "surrogate" in response.json()["error"]["message"]
    assert stack.alive()


def test_markup_comes_back_as_json_never_as_a_page(stack: GatewayStack) -> None:
    script = "<script>alert(document.cookie)</script>"
    answered = stack.http.post(PREDICT, json={"text": script}, headers={"X-Request-Id": script})
    not_found = stack.http.get(f"/{script}")

    assert answered.status_code == 200
    assert answered.headers["content-type"] == "application/json"
    assert script not in answered.headers["X-Request-Id"]
    assert not_found.status_code == 404
    assert not_found.headers["content-type"] == "application/json"
    assert "<script>" not in not_found.text


MARKUP = [
    "<script>window.__pwned = 1</script>",
    '<img src=x onerror="window.__pwned = 2">',
    '"><svg onload="window.__pwned = 3">',
    "javascript:window.__pwned = 4",
]
EXPERIMENT = {
    "name": "hostile-input",
    "variants": [{"name": "control", "version": "1.0", "weight": 1.0}],
    "sticky": True,
    "shadow": None,
}


def swap_strings(value: Any, swaps: dict[str, str]) -> Any:
    """``value`` (parsed JSON) with every string value found in ``swaps`` replaced; keys kept."""
    if isinstance(value, dict):
        return {key: swap_strings(item, swaps) for key, item in value.items()}
    if isinstance(value, list):
        return [swap_strings(item, swaps) for item in value]
    return swaps.get(value, value) if isinstance(value, str) else value


def test_markup_in_experiment_and_variant_names_is_refused(stack: GatewayStack) -> None:
    before = stack.http.get("/v1/experiment")
    answers = []
    control: dict[str, Any] = {"name": "control", "version": "1.0", "weight": 1.0}
    for payload in MARKUP:
        for body in (
            {**EXPERIMENT, "name": payload},
            {**EXPERIMENT, "variants": [{**control, "name": payload}]},
            {**EXPERIMENT, "variants": [{**control, "version": payload}]},
        ):
            answers.append(
                stack.http.put("/v1/experiment", json=body, headers=stack.admin_headers())
            )

    assert {r.status_code for r in answers} == {422}
    assert all(r.json()["error"]["code"] == "invalid_request" for r in answers)
    assert not any("<" in r.text for r in answers)  # the markup is not echoed back
    after = stack.http.get("/v1/experiment")
    assert (after.status_code, after.text) == (before.status_code, before.text)
    assert stack.alive()


def test_dashboard_renders_markup_in_the_report_as_text(stack: GatewayStack) -> None:
    """Names are validated on the way in; the page must stay inert even if markup got into the
    report some other way. Chromium loads the real dashboard with the real report, its strings
    swapped for markup on the wire."""
    from playwright.sync_api import Dialog, Route, sync_playwright

    put = stack.http.put("/v1/experiment", json=EXPERIMENT, headers=stack.admin_headers())
    assert put.status_code == 200, put.text
    assert stack.http.post(PREDICT, json={"text": "fine", "user_id": "u-1"}).status_code == 200
    report = stack.http.get("/v1/experiment/report")
    assert report.status_code == 200, report.text
    swaps = {"hostile-input": MARKUP[0], "control": MARKUP[1], "1.0": MARKUP[2]}
    hostile_report = swap_strings(report.json(), swaps)
    hostile_report["verdict"] = MARKUP[3] + MARKUP[0]
    chromium = shutil.which("chromium")
    assert chromium, "Chromium is missing: apt-get install -y chromium (.ci/run does)"

    def serve_hostile_report(route: Route) -> None:
        route.fulfill(status=200, content_type="application/json", body=json.dumps(hostile_report))

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            dialogs: list[str] = []

            def on_dialog(dialog: Dialog) -> None:
                dialogs.append(dialog.message)
                dialog.dismiss()

            page.on("dialog", on_dialog)
            page.route("**/v1/experiment/report", serve_hostile_report)
            response = page.goto(f"{stack.url}/dashboard")
            page.wait_for_function(
                "document.getElementById('experiment').textContent !== '…'", timeout=20_000
            )
            shown = {
                "experiment": page.text_content("#experiment"),
                "control": page.text_content("#control"),
                "verdict": page.text_content("#verdict"),
                "variants": page.text_content("#variants"),
            }
            pwned = page.evaluate("window.__pwned")
            injected = page.evaluate(
                "document.querySelectorAll('script:not([src]), img, [onerror], [onload]').length"
            )
        finally:
            browser.close()

    assert response is not None and response.status == 200
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert shown["experiment"] == MARKUP[0]
    assert shown["control"] == MARKUP[1]
    assert shown["verdict"] == MARKUP[3] + MARKUP[0]
    assert MARKUP[1] in (shown["variants"] or "") and MARKUP[2] in (shown["variants"] or "")
    assert (pwned, injected, dialogs) == (None, 0, [])


def test_schemathesis_finds_no_server_error_on_any_route(stack: GatewayStack) -> None:
    """Property-based fuzzing of every operation in the live schema (admin routes with the token,
    so their bodies are fuzzed too); the JUnit report goes to test-artifacts/."""
    report = ARTIFACTS / "schemathesis"
    report.mkdir(parents=True, exist_ok=True)
    junit = report / "reliability-junit.xml"
    result = run_schemathesis(
        stack.url,
        *("--report", "junit", "--report-junit-path", str(junit)),
        checks="not_a_server_error",
        seed=1,
        max_time_s=20,
        headers=stack.admin_headers(),
        timeout_s=240,
    )

    assert result.returncode == 0, schemathesis_failure(result)
    suite = ElementTree.parse(junit).getroot()
    # The stateful phase (links between operations, since the /v2 routes) reports as one more case.
    fuzzed = {case.get("name") for case in suite.iter("testcase")} - {"Stateful tests"}
    operations = {
        f"{method.upper()} {path}"
        for path, methods in stack.http.get("/openapi.json").json()["paths"].items()
        for method in methods
    }
    assert fuzzed == operations
    assert (suite.get("failures"), suite.get("errors")) == ("0", "0")
    assert stack.alive()
