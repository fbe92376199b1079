"""Adaptive batching: concurrent predictions for a version share TorchServe requests, and each
caller still gets exactly its own answers, errors and deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from api.batching import AdaptiveBatcher
from serving.torchserve import (
    InvalidInput,
    Prediction,
    TorchServeClient,
    UnknownVersion,
    UpstreamTimeout,
)
from tests.api.conftest import (
    INFERENCE,
    MANAGEMENT,
    AppFactory,
    FakeTorchServe,
    fake_probabilities,
    fake_stars,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeModel:
    """A ``Predictor`` like the TorchServe client: answers ``fake_stars``, takes ``latency_s``
    per request (``SLOW`` texts: ``slow_s``), refuses a request holding a text with ``BAD``."""

    def __init__(self, latency_s: float = 0.02, slow_s: float = 1.0) -> None:
        self.latency_s = latency_s
        self.slow_s = slow_s
        self.requests: list[tuple[str | None, list[str]]] = []

    async def predict(self, texts: Sequence[str], version: str | None = None) -> list[Prediction]:
        self.requests.append((version, list(texts)))
        slow = any("SLOW" in text for text in texts)
        await asyncio.sleep(self.slow_s if slow else self.latency_s)
        if any("BAD" in text for text in texts):
            raise InvalidInput("bad_text", "a text was refused")
        if version == "missing":
            raise UnknownVersion(version)
        return [
            Prediction(fake_stars(t), fake_probabilities(fake_stars(t)), version or "1.0")
            for t in texts
        ]


def batcher(
    model: FakeModel,
    *,
    max_texts: int = 32,
    max_wait_s: float = 5.0,
    max_in_flight: int = 1,
    timeout_s: float = 5.0,
) -> AdaptiveBatcher:
    return AdaptiveBatcher(
        model,
        max_texts=max_texts,
        max_wait_s=max_wait_s,
        max_in_flight=max_in_flight,
        timeout_s=timeout_s,
    )


def expected(texts: Sequence[str], version: str | None = None) -> list[Prediction]:
    return [
        Prediction(fake_stars(t), fake_probabilities(fake_stars(t)), version or "1.0")
        for t in texts
    ]


async def test_an_idle_gateway_sends_a_prediction_at_once() -> None:
    model = FakeModel()
    started = time.perf_counter()
    answer = await batcher(model, max_wait_s=30.0).predict(["only one"], "1.0")
    # Far below the 30 s it could have waited: nothing held it back.
    assert time.perf_counter() - started < 5.0
    assert answer == expected(["only one"], "1.0")
    assert model.requests == [("1.0", ["only one"])]


async def test_callers_waiting_behind_a_request_in_flight_share_the_next_one() -> None:
    model = FakeModel(latency_s=0.1)
    b = batcher(model)
    texts = [[f"review {i}"] for i in range(12)]
    answers = await asyncio.gather(*(b.predict(t, "1.0") for t in texts))
    assert answers == [expected(t, "1.0") for t in texts]
    # The first goes alone; the eleven that arrived while it was in flight go together.
    assert [len(request) for _, request in model.requests] == [1, 11]


async def test_metrics_count_the_texts_of_each_torchserve_request() -> None:
    # What an operator reads to see whether coalescing fills TorchServe's requests.
    def sent() -> tuple[float, float]:
        count = REGISTRY.get_sample_value("starrating_upstream_request_texts_count")
        total = REGISTRY.get_sample_value("starrating_upstream_request_texts_sum")
        return count or 0.0, total or 0.0

    requests_before, texts_before = sent()
    b = batcher(FakeModel(latency_s=0.1))
    await asyncio.gather(*(b.predict([f"review {i}"], "1.0") for i in range(12)))
    requests_after, texts_after = sent()
    assert (requests_after - requests_before, texts_after - texts_before) == (2, 12)


async def test_versions_are_never_mixed_in_one_request() -> None:
    model = FakeModel(latency_s=0.05)
    b = batcher(model)
    calls = [(["a text"], "1.0"), (["b text"], "2.0"), (["c"], None), (["dd"], "1.0")] * 3
    answers = await asyncio.gather(*(b.predict(t, v) for t, v in calls))
    assert answers == [expected(t, v) for t, v in calls]
    for version, request in model.requests:
        served = {v for t, v in calls if t[0] in request}
        assert served == {version}
    assert b._queues == {}  # idle versions are forgotten: any client can name a new one


async def test_a_request_holds_at_most_max_texts_and_never_splits_a_caller() -> None:
    model = FakeModel(latency_s=0.05)
    b = batcher(model, max_texts=5)
    calls = [[f"t{i}-{j}" for j in range(n)] for i, n in enumerate([1, 3, 3, 2, 7, 1, 4])]
    answers = await asyncio.gather(*(b.predict(t, "1.0") for t in calls))
    assert answers == [expected(t, "1.0") for t in calls]
    for _, request in model.requests:
        callers = [t for t in calls if t[0] in request]
        assert sum(len(t) for t in callers) == len(request)
        assert len(request) <= 5 or len(callers) == 1


async def test_max_wait_bounds_how_long_a_prediction_is_held_back() -> None:
    model = FakeModel(latency_s=0.05, slow_s=3.0)
    b = batcher(model, max_wait_s=0.05)
    slow = asyncio.create_task(b.predict(["SLOW request in flight"], "1.0"))
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    answer = await b.predict(["quick"], "1.0")
    # Sent after the 0.05 s wait, not after the 3 s request in flight came back.
    assert time.perf_counter() - started < 2.0
    assert answer == expected(["quick"], "1.0")
    await slow


async def test_a_refused_text_fails_only_its_own_caller() -> None:
    model = FakeModel(latency_s=0.05)
    b = batcher(model)
    calls = [["fine one"], ["also fine"], ["a BAD one"], ["fine again", "two texts"]]
    first = asyncio.create_task(b.predict(["in flight"], "1.0"))
    await asyncio.sleep(0.01)
    results = await asyncio.gather(*(b.predict(t, "1.0") for t in calls), return_exceptions=True)
    await first
    assert isinstance(results[2], InvalidInput)
    assert [results[i] for i in (0, 1, 3)] == [expected(calls[i], "1.0") for i in (0, 1, 3)]


async def test_an_upstream_error_reaches_every_caller_of_that_request() -> None:
    b = batcher(FakeModel(latency_s=0.05))
    results = await asyncio.gather(
        *(b.predict([f"x{i}"], "missing") for i in range(4)), b.predict(["ok"], "1.0"),
        return_exceptions=True,
    )  # fmt: skip
    assert all(isinstance(r, UnknownVersion) for r in results[:4])
    assert results[4] == expected(["ok"], "1.0")


async def test_a_caller_past_its_deadline_times_out_alone() -> None:
    model = FakeModel(latency_s=0.05, slow_s=1.0)
    b = batcher(model, max_in_flight=2, timeout_s=0.4)
    slow, quick = await asyncio.gather(
        b.predict(["SLOW"], "1.0"), b.predict(["quick"], "1.0"), return_exceptions=True
    )
    assert isinstance(slow, UpstreamTimeout)
    assert quick == expected(["quick"], "1.0")
    await b.aclose()  # the slow request still finishes quietly, and the batcher stays usable
    assert await b.predict(["after"], "1.0") == expected(["after"], "1.0")


@settings(max_examples=30, deadline=None)
@given(
    calls=st.lists(
        st.tuples(
            st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=6),
            st.sampled_from(["1.0", "2.0", None]),
            st.floats(min_value=0, max_value=0.01),
        ),
        min_size=1,
        max_size=40,
    ),
    max_texts=st.integers(min_value=1, max_value=16),
    max_in_flight=st.integers(min_value=1, max_value=3),
)
def test_callers_are_never_mixed_up_under_concurrency(
    calls: list[tuple[list[str], str | None, float]], max_texts: int, max_in_flight: int
) -> None:
    async def scenario() -> None:
        b = batcher(FakeModel(latency_s=0.003), max_texts=max_texts, max_in_flight=max_in_flight)

        async def call(texts: list[str], version: str | None, delay: float) -> list[Prediction]:
            await asyncio.sleep(delay)
            return await b.predict(texts, version)

        answers = await asyncio.gather(*(call(t, v, d) for t, v, d in calls))
        assert answers == [expected(t, v) for t, v, _ in calls]

    asyncio.run(scenario())


def test_the_gateway_answers_the_same_with_and_without_coalescing(
    make_app: AppFactory,
) -> None:
    texts = ["I loved it!", "It's OK.", "Really bad.", "meh", "a much longer review text"]
    bodies = [{"text": t} for t in texts] + [{"texts": texts[:3]}]
    answers = []
    for coalesce in (True, False):
        with TestClient(make_app(coalesce=coalesce)) as client:
            replies = [client.post("/v1/predictions", json=body) for body in bodies]
        assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
        answers.append([(r.json()["version"], r.json()["predictions"]) for r in replies])
    assert answers[0] == answers[1]


async def test_concurrent_gateway_requests_share_torchserve_requests() -> None:
    torchserve = FakeTorchServe(hang_s=0.05)
    client = TorchServeClient(INFERENCE, MANAGEMENT, transport=httpx.MockTransport(torchserve))
    b = AdaptiveBatcher(client, max_texts=32, max_wait_s=1.0, max_in_flight=1, timeout_s=5.0)
    texts = [[f"text number {i}"] for i in range(10)]
    answers = await asyncio.gather(*(b.predict(t, "2.0") for t in texts))
    assert [[(p.stars, p.model_version) for p in a] for a in answers] == [
        [(fake_stars(t[0]), "2.0")] for t in texts
    ]
    assert len(torchserve.predictions) < len(texts)
    await client.aclose()


def test_a_coalesced_prediction_past_the_upstream_timeout_answers_504(
    make_app: AppFactory, torchserve: FakeTorchServe
) -> None:
    torchserve.hang_s = 1.0
    with TestClient(make_app(coalesce=True, upstream_timeout_s=0.2)) as client:
        reply = client.post("/v1/predictions", json={"text": "too slow"})
    assert reply.status_code == 504, reply.text
    assert reply.json()["error"]["code"]
