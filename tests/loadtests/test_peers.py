"""The peers of ``starrating bench serving``: each really starts, speaks the gateway's request
body and rates texts exactly as the stack's handler does; the report's stack/best-peer ratio."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cli import app
from loadtests.bench_serving import ServingBenchReport, SetupResult, peer_threads
from loadtests.peers import PEERS, running_peer
from loadtests.peers.rating import PeerModel, PeerRequestError, PeerSettings, request_texts
from loadtests.stack import StackTuning
from serving.sizing import THREADS_ENV, serving_layout

TEXTS = [
    "really bad, broke after a day",
    "excellent value, i loved it",
    "it's ok",
    "  decent\tproduct,   works well  ",
    "terrible " * 40,
]


def result(rps: float, p95: float = 20.0) -> SetupResult:
    return SetupResult(rps=rps, p50_ms=p95 / 2, p95_ms=p95, p99_ms=2 * p95)


@pytest.fixture(scope="module")
def handler_answers(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    """The stack's handler (fp32) on TEXTS, one TorchServe batch of one request per text."""
    import shutil

    import torch
    import yaml

    from handlers import MODEL_SUBDIR
    from handlers.star_handler import StarHandler
    from tests.handlers.conftest import MODEL_CONFIG, make_context, start_batch

    model_dir = tmp_path_factory.mktemp("peers-extracted-mar")
    shutil.copytree(tiny_model_dir, model_dir / MODEL_SUBDIR)
    config = yaml.safe_load(MODEL_CONFIG.read_text())
    config["handler"]["batching"]["cpu"]["precision"] = "fp32"
    threads = torch.get_num_threads()
    handler = StarHandler()
    context = make_context(model_dir, yaml_config=config)
    handler.initialize(context)
    start_batch(context, len(TEXTS))
    answers: list[Any] = handler.handle([{"body": {"text": t}} for t in TEXTS], context)
    torch.set_num_threads(threads)
    return answers


def assert_same_ratings(peer: list[dict[str, Any]], handler: list[dict[str, Any]]) -> None:
    assert [p["stars"] for p in peer] == [h["stars"] for h in handler]
    for mine, theirs in zip(peer, handler, strict=True):
        assert mine["probabilities"].keys() == theirs["probabilities"].keys()
        for label, value in mine["probabilities"].items():
            assert value == pytest.approx(theirs["probabilities"][label], abs=1e-4)


def test_request_bodies_the_gateway_takes_and_no_other():
    assert request_texts({"text": "good"}) == ["good"]
    assert request_texts(b'{"texts": ["a", "b"]}') == ["a", "b"]
    bad_bodies: list[object] = [{}, {"text": 3}, {"texts": []}, {"text": "a", "texts": ["b"]}]
    for bad in [*bad_bodies, b"not json", [1]]:
        with pytest.raises(PeerRequestError):
            request_texts(bad)


def test_a_batch_of_requests_is_rated_together_and_answered_per_request(
    tiny_model_dir: Path, handler_answers: list[Any]
):
    model = PeerModel(PeerSettings(tiny_model_dir, "fp32", 1))
    answers = model.rate_requests([TEXTS[:1], TEXTS[1:4], TEXTS[4:]])
    assert [len(a) for a in answers] == [1, 3, 1]
    assert_same_ratings([p for a in answers for p in a], handler_answers)


def test_peers_get_the_stack_torch_threads(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    layout = serving_layout(1)
    assert peer_threads(StackTuning()) == layout.workers_per_version * layout.threads_per_worker
    assert peer_threads(StackTuning(threads=3, workers=2)) == 6
    monkeypatch.setenv(THREADS_ENV, "5")
    assert peer_threads(StackTuning(workers=1)) == 5


def test_stack_over_best_peer_is_the_ratio_to_the_fastest_peer():
    report = ServingBenchReport("m", "fp32", users=16, duration=5.0)
    report.setups = {"stack": result(300.0)}
    report.peers = {"ray-serve": result(120.0), "litserve": result(250.0), "bentoml": result(90.0)}
    assert report.best_peer == "litserve"
    assert report.stack_over_best_peer == pytest.approx(1.2)
    payload = json.loads(json.dumps(report.to_json()))
    assert payload["stack_over_best_peer"] == pytest.approx(1.2)
    assert payload["best_peer"] == "litserve"
    assert set(payload["peers"]) == {"ray-serve", "litserve", "bentoml"}
    for name, measured in payload["peers"].items():
        assert {"rps", "p50_ms", "p95_ms"} <= set(measured)
        assert measured["rps"] == report.peers[name].rps


def test_no_ratio_without_peers_or_stack():
    report = ServingBenchReport("m", "fp32", users=1, duration=1.0)
    report.setups = {"stack": result(300.0)}
    assert report.to_json()["stack_over_best_peer"] is None
    assert report.to_json()["peers"] == {}
    report.setups, report.peers = {}, {"litserve": result(10.0)}
    assert report.to_json()["stack_over_best_peer"] is None


def test_unknown_peer_names_fail_with_the_choices():
    outcome = CliRunner().invoke(app, ["bench", "serving", "--setups", "litserve,triton"])
    assert outcome.exit_code == 2
    assert "unknown --setup triton" in outcome.output
    assert "ray-serve" in outcome.output


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("name", PEERS)
def test_peer_starts_and_rates_as_the_handler(
    name: str, tiny_model_dir: Path, tmp_path: Path, handler_answers: list[Any]
):
    """Concurrent one-text requests (batched by the peer) and one request of many texts each
    get exactly the handler's ratings; once stopped, nothing answers there any more."""
    settings = PeerSettings(tiny_model_dir, "fp32", 1)
    with running_peer(name, settings, tmp_path) as endpoint:
        url = endpoint.url + endpoint.path
        with httpx.Client(timeout=60.0) as client, ThreadPoolExecutor(len(TEXTS)) as pool:
            singles = list(pool.map(lambda t: client.post(url, json={"text": t}), TEXTS))
            many = client.post(url, json={"texts": TEXTS})
        assert [r.status_code for r in singles] == [200] * len(TEXTS)
        assert_same_ratings([r.json()["predictions"][0] for r in singles], handler_answers)
        assert many.status_code == 200
        assert_same_ratings(many.json()["predictions"], handler_answers)
    with pytest.raises(httpx.TransportError):
        httpx.post(url, json={"text": "still there?"}, timeout=5.0)


@pytest.mark.slow
@pytest.mark.integration
def test_bench_runs_a_peer_beside_the_stack(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path
):
    """``--setups stack,litserve``: the peer is measured like the stack, shown in the table and
    the JSON, and stack/best peer is the ratio of their throughputs."""
    out = tmp_path / "bench.json"
    args = ["bench", "serving", "--model", str(tiny_model_dir), "--data", str(tiny_data_dir)]
    args += ["--duration", "1.5", "--users", "2", "--precision", "fp32", "--json", str(out)]
    outcome = CliRunner().invoke(app, [*args, "--setups", "stack,litserve"])
    assert outcome.exit_code == 0, outcome.output
    assert "litserve (peer)" in outcome.output
    assert "stack/best peer" in outcome.output
    payload = json.loads(out.read_text())
    assert set(payload["peers"]) == {"litserve"}
    peer = payload["peers"]["litserve"]
    assert peer["rps"] > 0 and 0 < peer["p50_ms"] <= peer["p95_ms"]
    assert peer["detail"]["errors"] == 0
    assert peer["detail"]["precision"] == "fp32"
    assert payload["best_peer"] == "litserve"
    assert payload["stack_over_best_peer"] == pytest.approx(payload["stack"]["rps"] / peer["rps"])
