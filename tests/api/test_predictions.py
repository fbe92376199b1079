"""POST /v1/predictions on the real app and client, with a fake TorchServe behind them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import anyio.to_thread
import pytest
from fastapi.testclient import TestClient

from api.seams import Assignment, PredictionEvent
from tests.api.conftest import AppFactory, FakeTorchServe, fake_probabilities, fake_stars

REVIEW = "I loved it! I will recommend this to everyone."


def test_one_text_answers_the_design_shape(gateway: TestClient) -> None:
    response = gateway.post("/v1/predictions", json={"text": REVIEW})

    assert response.status_code == 200
    body = response.json()
    assert body == {
        "request_id": response.headers["X-Request-Id"],
        "model": "stars",
        "version": "1.0",
        "variant": "default",
        "predictions": [
            {"stars": fake_stars(REVIEW), "probabilities": fake_probabilities(fake_stars(REVIEW))}
        ],
    }


def test_batch_is_forwarded_in_one_upstream_call_and_answered_in_order(
    gateway: TestClient, torchserve: FakeTorchServe
) -> None:
    texts = ["It's OK.", "Really bad. I hope they don't make this anymore.", REVIEW]

    response = gateway.post("/v1/predictions", json={"texts": texts})

    assert response.status_code == 200
    assert [p["stars"] for p in response.json()["predictions"]] == [fake_stars(t) for t in texts]
    assert torchserve.predictions == [(None, texts)]


def test_model_version_header_forces_the_version(
    gateway: TestClient, torchserve: FakeTorchServe
) -> None:
    response = gateway.post(
        "/v1/predictions", json={"text": REVIEW}, headers={"X-Model-Version": "2.0"}
    )

    assert response.status_code == 200
    assert response.json()["version"] == "2.0"
    assert torchserve.predictions == [("2.0", [REVIEW])]


def test_unknown_version_is_404(gateway: TestClient) -> None:
    response = gateway.post(
        "/v1/predictions", json={"text": REVIEW}, headers={"X-Model-Version": "9.9"}
    )

    assert response.status_code == 404
    assert response.json() == {
        "error": {"code": "unknown_version", "message": "model version '9.9' is not registered"}
    }


def test_sane_client_request_id_is_kept_and_odd_one_replaced(gateway: TestClient) -> None:
    kept = gateway.post(
        "/v1/predictions", json={"text": REVIEW}, headers={"X-Request-Id": "client-id-0001"}
    )
    replaced = gateway.post(
        "/v1/predictions", json={"text": REVIEW}, headers={"X-Request-Id": "bad id\twith tab"}
    )

    assert kept.json()["request_id"] == kept.headers["X-Request-Id"] == "client-id-0001"
    new_id = replaced.headers["X-Request-Id"]
    assert new_id != "bad id\twith tab"
    assert replaced.json()["request_id"] == new_id
    assert len(new_id) == 32


def test_generated_request_ids_are_unique(gateway: TestClient) -> None:
    ids = {
        gateway.post("/v1/predictions", json={"text": REVIEW}).json()["request_id"]
        for _ in range(5)
    }
    assert len(ids) == 5


class RecordingChooser:
    """A VariantChooser that sends everyone to 2.0 as variant "b" and remembers who asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str | None, str | None]] = []

    def choose(self, user_id: str | None, forced_version: str | None) -> Assignment:
        self.calls.append((user_id, forced_version))
        return Assignment(variant="b", version=forced_version or "2.0", experiment="exp")

    def served_versions(self) -> Sequence[str | None]:
        return ("2.0",)


class ListRecorder:
    def __init__(self, fail: bool = False) -> None:
        self.events: list[PredictionEvent] = []
        self.fail = fail

    async def record(self, event: PredictionEvent) -> None:
        self.events.append(event)
        if self.fail:
            raise RuntimeError("store is down")


@pytest.fixture
def chooser() -> RecordingChooser:
    return RecordingChooser()


@pytest.fixture
def recorder() -> ListRecorder:
    return ListRecorder()


@pytest.fixture
def ab_gateway(
    make_app: AppFactory, chooser: RecordingChooser, recorder: ListRecorder
) -> Iterator[TestClient]:
    with TestClient(make_app(chooser=chooser, recorder=recorder)) as client:
        yield client


def test_chooser_picks_version_and_variant_from_body_or_header_user_id(
    ab_gateway: TestClient, chooser: RecordingChooser, torchserve: FakeTorchServe
) -> None:
    from_body = ab_gateway.post("/v1/predictions", json={"text": REVIEW, "user_id": "u-1"})
    from_header = ab_gateway.post(
        "/v1/predictions", json={"text": REVIEW}, headers={"X-User-Id": "u-2"}
    )
    forced = ab_gateway.post(
        "/v1/predictions", json={"text": REVIEW}, headers={"X-Model-Version": "1.0"}
    )

    assert chooser.calls == [("u-1", None), ("u-2", None), (None, "1.0")]
    assert [r.json()["variant"] for r in (from_body, from_header, forced)] == ["b", "b", "b"]
    assert [r.json()["version"] for r in (from_body, from_header, forced)] == [
        "2.0",
        "2.0",
        "1.0",
    ]
    assert [version for version, _ in torchserve.predictions] == ["2.0", "2.0", "1.0"]


def test_recorder_hears_each_answered_prediction(
    ab_gateway: TestClient, recorder: ListRecorder
) -> None:
    texts = ["It's OK.", REVIEW]
    response = ab_gateway.post("/v1/predictions", json={"texts": texts, "user_id": "u-7"})

    (event,) = recorder.events
    assert event.request_id == response.json()["request_id"]
    assert event.assignment == Assignment(variant="b", version="2.0", experiment="exp")
    assert event.version == "2.0"
    assert event.user_id == "u-7"
    assert event.stars == tuple(fake_stars(t) for t in texts)
    assert event.probabilities[0] == fake_probabilities(fake_stars(texts[0]))
    assert event.latency_s > 0
    assert REVIEW not in repr(event)


def test_failing_recorder_does_not_fail_the_request(make_app: AppFactory) -> None:
    recorder = ListRecorder(fail=True)
    with TestClient(make_app(recorder=recorder)) as client:
        first = client.post("/v1/predictions", json={"text": REVIEW})
        second = client.post("/v1/predictions", json={"text": REVIEW})

    assert (first.status_code, second.status_code) == (200, 200)
    assert len(recorder.events) == 2


def test_failed_prediction_is_not_recorded(
    ab_gateway: TestClient, recorder: ListRecorder, torchserve: FakeTorchServe
) -> None:
    torchserve.down = True
    assert ab_gateway.post("/v1/predictions", json={"text": REVIEW}).status_code == 503
    assert recorder.events == []


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({}, "exactly one"),
        ({"text": "a", "texts": ["b"]}, "exactly one"),
        ({"texts": []}, "must not be empty"),
        ({"text": 5}, "body.text"),
        ({"texts": "not a list"}, "body.texts"),
        ({"texts": ["ok", None]}, "body.texts.1"),
        ({"text": "fine", "extra": 1}, "body.extra"),
        ({"text": "fine", "user_id": "has space"}, "body.user_id"),
        ({"text": "   \n\t "}, "text 0 is empty"),
        ({"texts": ["fine", "\u0000"]}, "text 1 is empty"),
        ([1, 2], "body"),
    ],
)
def test_invalid_bodies_are_422_with_the_reason(
    gateway: TestClient, torchserve: FakeTorchServe, body: object, where: str
) -> None:
    response = gateway.post("/v1/predictions", json=body)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert where in error["message"]
    assert torchserve.predictions == []


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"text": "caf\xe9"}', b""],
    ids=["broken-json", "invalid-utf8", "empty"],
)
def test_undecodable_bodies_are_422(gateway: TestClient, content: bytes) -> None:
    response = gateway.post(
        "/v1/predictions", content=content, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


def test_deeply_nested_json_is_refused_cleanly(gateway: TestClient) -> None:
    nested = "[" * 2000 + "]" * 2000
    response = gateway.post(
        "/v1/predictions",
        content=f'{{"text": "ok", "x": {nested}}}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422


def test_version_header_that_is_not_a_version_is_422(
    gateway: TestClient, torchserve: FakeTorchServe
) -> None:
    response = gateway.post(
        "/v1/predictions", json={"text": REVIEW}, headers={"X-Model-Version": "../../models"}
    )

    assert response.status_code == 422
    assert "x-model-version" in response.json()["error"]["message"]
    assert torchserve.predictions == []


def test_text_over_the_length_limit_is_413(gateway: TestClient) -> None:
    response = gateway.post("/v1/predictions", json={"texts": ["fine", "x" * 501]})

    assert response.status_code == 413
    assert response.json() == {
        "error": {"code": "too_large", "message": "text 1 has 501 characters; the limit is 500"}
    }


def test_batch_over_the_limit_is_413(gateway: TestClient) -> None:
    response = gateway.post("/v1/predictions", json={"texts": ["ok"] * 9})

    assert response.status_code == 413
    assert response.json()["error"]["message"] == "9 texts in one request; the limit is 8"


def test_declared_body_over_the_limit_is_413(gateway: TestClient) -> None:
    response = gateway.post("/v1/predictions", json={"texts": ["a" * 400] * 12})

    assert response.status_code == 413
    assert response.json() == {
        "error": {"code": "too_large", "message": "request body is over the limit of 4096 bytes"}
    }


def test_chunked_body_over_the_limit_is_413(gateway: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"texts": ['
        for _ in range(100):
            yield b'"' + b"a" * 100 + b'",'
        yield b'"end"]}'

    response = gateway.post(
        "/v1/predictions", content=chunks(), headers={"Content-Type": "application/json"}
    )

    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.status_code == 413


def test_torchserve_down_is_a_quick_503(gateway: TestClient, torchserve: FakeTorchServe) -> None:
    torchserve.down = True

    response = gateway.post("/v1/predictions", json={"text": REVIEW})

    assert response.status_code == 503
    assert response.json() == {
        "error": {
            "code": "upstream_unavailable",
            "message": "the model server is unavailable; try again shortly",
        }
    }


def test_no_ready_worker_is_503(gateway: TestClient, torchserve: FakeTorchServe) -> None:
    torchserve.ready["1.0"] = False

    response = gateway.post("/v1/predictions", json={"text": REVIEW})

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "model_not_ready"


def test_upstream_timeout_is_504(gateway: TestClient, torchserve: FakeTorchServe) -> None:
    torchserve.slow = True

    response = gateway.post("/v1/predictions", json={"text": REVIEW})

    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"


def test_garbled_upstream_answer_is_502_without_details(
    gateway: TestClient, torchserve: FakeTorchServe
) -> None:
    torchserve.garbage = True

    response = gateway.post("/v1/predictions", json={"text": REVIEW})

    assert response.status_code == 502
    assert response.json() == {
        "error": {
            "code": "bad_upstream_response",
            "message": "the model server answered something unexpected",
        }
    }


def test_recovers_when_torchserve_is_back(gateway: TestClient, torchserve: FakeTorchServe) -> None:
    torchserve.down = True
    assert gateway.post("/v1/predictions", json={"text": REVIEW}).status_code == 503
    torchserve.down = False
    assert gateway.post("/v1/predictions", json={"text": REVIEW}).status_code == 200


class ExplodingChooser(RecordingChooser):
    def choose(self, user_id: str | None, forced_version: str | None) -> Assignment:
        raise RuntimeError("secret internal detail")


def test_unexpected_failure_is_500_without_stack_trace(make_app: AppFactory) -> None:
    with TestClient(make_app(chooser=ExplodingChooser()), raise_server_exceptions=False) as client:
        response = client.post("/v1/predictions", json={"text": REVIEW})

    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "secret internal detail" not in response.text
    assert "Traceback" not in response.text


def test_unicode_edge_cases_are_predicted(gateway: TestClient, torchserve: FakeTorchServe) -> None:
    texts = ["😀 great", "ممتاز جدا", "e\u0301e\u0301", "<script>alert(1)</script>"]

    response = gateway.post("/v1/predictions", json={"texts": texts})

    assert response.status_code == 200
    assert torchserve.predictions == [(None, texts)]


def test_unknown_route_and_wrong_method_use_the_error_format(gateway: TestClient) -> None:
    missing = gateway.get("/v1/nothing-here")
    wrong_method = gateway.get("/v1/predictions")

    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": "not_found", "message": "Not Found"}}
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


def test_a_prediction_never_waits_for_a_worker_thread(
    gateway: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every dependency and handler of the rating path runs on the event loop: a hop to the
    # thread pool (a class or plain-def dependency) costs each request a thread wake-up.
    hops: list[object] = []
    run_sync = anyio.to_thread.run_sync

    async def counting(func: Callable[..., object], *args: object, **kwargs: Any) -> object:
        hops.append(func)
        return await run_sync(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    for body in ({"text": REVIEW}, {"texts": [REVIEW, "It's OK."]}):
        assert gateway.post("/v1/predictions", json=body).status_code == 200

    assert hops == []
