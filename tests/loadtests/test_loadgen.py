"""The closed-loop load generator: statistics, answer checks, and real runs against a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.loadgen import LoadError, request_body, run_load, stars_of, summarize
from loadtests.servers import naive_server


def test_summarize_gives_throughput_and_percentiles_of_the_window():
    result = summarize([float(ms) for ms in range(1, 101)], errors=3, users=4, seconds=10.0)
    assert result.requests == 100
    assert result.errors == 3
    assert result.rps == pytest.approx(10.0)
    batched = summarize([5.0] * 100, errors=0, users=4, seconds=10.0, texts_per_request=8)
    assert batched.rps == pytest.approx(80.0)  # reviews per second, not requests
    assert result.p50_ms == pytest.approx(50.5)
    assert result.p95_ms == pytest.approx(95.05)
    assert result.p99_ms == pytest.approx(99.01)


def test_summarize_without_successes_is_an_error():
    with pytest.raises(LoadError, match=r"no request succeeded.*7 errors"):
        summarize([], errors=7, users=1, seconds=5.0)


def test_each_target_gets_its_own_body_and_answer_format():
    assert request_body("gateway", ["good"]) == {"text": "good"}
    assert request_body("gateway", ["good", "bad"]) == {"texts": ["good", "bad"]}
    assert request_body("torchserve", ["good"]) == {"texts": ["good"]}
    assert stars_of("gateway", {"predictions": [{"stars": 4}]}) == 4
    assert stars_of("torchserve", [{"stars": 2, "model_version": "1.0"}]) == 2
    assert stars_of("gateway", {"error": {"code": "x"}}) is None
    assert stars_of("torchserve", {"stars": 2}) is None


def test_run_load_refuses_bad_arguments():
    with pytest.raises(ValueError, match="target"):
        run_load("http://127.0.0.1:1", "/", ["a"], target="grpc")
    with pytest.raises(ValueError, match="users"):
        run_load("http://127.0.0.1:1", "/", ["a"], users=0)


@pytest.mark.slow
@pytest.mark.integration
def test_load_against_the_naive_server(tiny_model_dir: Path, tiny_reviews, tmp_path: Path):
    with naive_server(tiny_model_dir, tmp_path / "logs") as url:
        result = run_load(
            url, "/v1/predictions", tiny_reviews.texts, users=2, duration=2.0, warmup=0.5
        )
        batched = run_load(
            url,
            "/v1/predictions",
            tiny_reviews.texts,
            users=2,
            duration=1.0,
            warmup=0.2,
            texts_per_request=4,
        )
        with pytest.raises(LoadError, match="no request succeeded") as failed:
            run_load(url, "/no/such/path", tiny_reviews.texts, users=1, duration=1.0, warmup=0)
    assert result.errors == 0
    assert result.requests > 0
    assert result.rps == pytest.approx(result.requests / 2.0)
    assert 0 < result.p50_ms <= result.p95_ms <= result.p99_ms
    assert batched.errors == 0 and batched.texts_per_request == 4
    assert batched.rps == pytest.approx(4 * batched.requests / 1.0)
    assert "errors" in str(failed.value) and "(0 errors)" not in str(failed.value)
