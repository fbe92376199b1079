"""POST /v1/explanations and the /explain page on the real app, with a fake TorchServe."""

from __future__ import annotations

import threading

from fastapi.testclient import TestClient

from tests.api.conftest import AppFactory, FakeTorchServe, fake_probabilities, fake_stars
from tests.api.test_predictions import RecordingChooser

REVIEW = "I loved it! I will recommend this to everyone."
EXPLAIN = "/v1/explanations"


def test_explanation_answers_stars_and_words(gateway: TestClient) -> None:
    response = gateway.post(EXPLAIN, json={"text": REVIEW})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["request_id"] == response.headers["X-Request-Id"]
    assert (body["model"], body["version"], body["variant"]) == ("stars", "1.0", "default")
    assert body["stars"] == fake_stars(REVIEW)
    assert body["probabilities"] == fake_probabilities(fake_stars(REVIEW))
    assert body["text"] == REVIEW and body["steps"] == 32
    assert [w["word"] for w in body["words"]][:4] == ["I", "loved", "it", "!"]
    assert body["words"][1] == {"word": "loved", "start": 2, "end": 7, "attribution": 5.0}


def test_explanations_are_routed_like_predictions(
    make_app: AppFactory, torchserve: FakeTorchServe
) -> None:
    chooser = RecordingChooser()
    with TestClient(make_app(chooser=chooser)) as client:
        routed = client.post(EXPLAIN, json={"text": REVIEW, "user_id": "u-1"})
        forced = client.post(EXPLAIN, json={"text": REVIEW}, headers={"X-Model-Version": "1.0"})

    assert chooser.calls == [("u-1", None), (None, "1.0")]
    assert torchserve.explanations == [("2.0", REVIEW), ("1.0", REVIEW)]
    assert (routed.json()["version"], routed.json()["variant"]) == ("2.0", "b")
    assert forced.json()["version"] == "1.0"


def test_explanations_have_a_tighter_text_limit(make_app: AppFactory) -> None:
    with TestClient(make_app(max_text_chars=500, explain_max_text_chars=100)) as client:
        long_review = "good " * 40  # 200 characters: a prediction, not an explanation
        explained = client.post(EXPLAIN, json={"text": long_review})
        predicted = client.post("/v1/predictions", json={"text": long_review})
        blank = client.post(EXPLAIN, json={"text": "  "})
        unknown = client.post(EXPLAIN, json={"text": "ok"}, headers={"X-Model-Version": "9.9"})

    assert explained.status_code == 413
    assert "limit is 100" in explained.json()["error"]["message"]
    assert predicted.status_code == 200
    assert (blank.status_code, unknown.status_code) == (422, 404)


def test_explanations_in_flight_are_bounded_and_predictions_are_not(
    make_app: AppFactory, torchserve: FakeTorchServe
) -> None:
    torchserve.explain_hang_s = 1.0
    statuses: list[int] = []
    with TestClient(make_app(explain_max_in_flight=1)) as client:
        slow = threading.Thread(
            target=lambda: statuses.append(client.post(EXPLAIN, json={"text": "a"}).status_code)
        )
        slow.start()
        while not torchserve.explanations:
            threading.Event().wait(0.01)
        refused = client.post(EXPLAIN, json={"text": "b"})
        predicted = client.post("/v1/predictions", json={"text": "b"})
        slow.join()
        after = client.post(EXPLAIN, json={"text": "c"})

    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "overloaded"
    assert predicted.status_code == 200
    assert statuses == [200] and after.status_code == 200


def test_explain_page_ships_its_own_assets_under_a_strict_csp(gateway: TestClient) -> None:
    page = gateway.get("/explain")
    script = gateway.get("/explain/explain.js")
    style = gateway.get("/explain/explain.css")

    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "http" not in page.text.replace("http-equiv", "")  # no CDN, no other origin
    assert script.status_code == 200 and style.status_code == 200
    assert "innerHTML" not in script.text and "textContent" in script.text
    assert gateway.get("/explain/../../etc/passwd").status_code == 404
