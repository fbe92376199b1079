"""A real TorchServe serving two archived versions of the tiny model (different weights)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
import torch

from serving.torchserve import Prediction, UnknownVersion
from starrating.artifacts import load_artifacts
from starrating.text import encode_batch
from tests.serving.helpers import RunningTorchServe, build_tiny_archives

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TEXTS = [
    "I loved it! I will recommend this to everyone.",
    "It's OK.",
    "Really bad. I hope they don't make this anymore.",
    "great sound but the battery broke after a day",
]


def expected_probabilities(run_dir: Path, texts: Sequence[str]) -> torch.Tensor:
    artifacts = load_artifacts(run_dir / "model")
    with torch.inference_mode():
        logits = torch.cat(
            [artifacts.model(**encode_batch(artifacts.tokenizer, [t])).logits for t in texts]
        )
    return artifacts.probabilities(logits)


def as_tensor(predictions: Sequence[Prediction]) -> torch.Tensor:
    return torch.tensor([[p.probabilities[str(s)] for s in range(1, 6)] for p in predictions])


def scrape(ts: RunningTorchServe, metric: str) -> dict[str, float]:
    """One Prometheus metric from TorchServe's :8082, keyed by its label string."""
    text = httpx.get(f"{ts.metrics_url}/metrics", timeout=5).text
    pattern = re.compile(rf"^{metric}\{{(.*?)\}} ([0-9.eE+-]+)$", re.MULTILINE)
    return {labels: float(value) for labels, value in pattern.findall(text)}


def test_each_version_answers_with_its_own_weights(
    torchserve: RunningTorchServe, tiny_store: tuple[Path, dict[str, Path]]
) -> None:
    _, runs = tiny_store
    with torchserve.sync_client() as client:
        v1 = client.predict(TEXTS, "1.0")
        v2 = client.predict(TEXTS, "2.0")
    assert {p.model_version for p in v1} == {"1.0"}
    assert {p.model_version for p in v2} == {"2.0"}
    expected_v1 = expected_probabilities(runs["1.0"], TEXTS)
    expected_v2 = expected_probabilities(runs["2.0"], TEXTS)
    torch.testing.assert_close(as_tensor(v1), expected_v1, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(as_tensor(v2), expected_v2, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(as_tensor(v1), as_tensor(v2), atol=1e-4)
    assert [p.stars for p in v1] == (expected_v1.argmax(dim=1) + 1).tolist()


def test_set_default_switches_the_unversioned_route(torchserve: RunningTorchServe) -> None:
    with torchserve.sync_client() as client:
        assert torchserve.default_version == "2.0"  # the newest archive
        assert client.predict(["fine"])[0].model_version == "2.0"
        client.set_default("1.0")
        try:
            assert client.predict(["fine"])[0].model_version == "1.0"
            defaults = {v.version: v.is_default for v in client.list_versions()}
            assert defaults == {"1.0": True, "2.0": False}
        finally:
            client.set_default("2.0")
        assert client.predict(["fine"])[0].model_version == "2.0"


def test_a_burst_of_requests_reaches_the_handler_in_batches(torchserve: RunningTorchServe) -> None:
    before = scrape(torchserve, "StarsHandlerBatches")

    async def burst() -> list[list[Prediction]]:
        async with torchserve.client() as client:
            return await asyncio.gather(*(client.predict([t], "1.0") for t in TEXTS * 8))

    answers = asyncio.run(burst())
    assert len(answers) == 32 and all(a[0].model_version == "1.0" for a in answers)
    after = scrape(torchserve, "StarsHandlerBatches")
    sizes: dict[int, float] = {}
    for labels, value in after.items():
        if 'ModelVersion="1.0"' in labels:
            size = int(re.search(r'BatchSize="(\d+)"', labels).group(1))  # type: ignore[union-attr]
            sizes[size] = value - before.get(labels, 0.0)
    # Every request went through exactly one handler call, and some calls held several.
    assert sum(size * count for size, count in sizes.items()) == 32
    assert max(size for size, count in sizes.items() if count > 0) > 1


def test_requests_without_the_right_token_are_refused(torchserve: RunningTorchServe) -> None:
    keys = torchserve.keys()
    assert keys.inference and keys.management and keys.inference != keys.management
    body = {"text": "great"}
    predict_url = f"{torchserve.inference_url}/predictions/stars"
    models_url = f"{torchserve.management_url}/models"
    with httpx.Client(timeout=10) as http:
        refused = [
            http.post(predict_url, json=body),
            http.post(predict_url, json=body, headers={"Authorization": "Bearer wrong"}),
            http.get(f"{torchserve.inference_url}/ping"),
            http.get(models_url),
            # Each key opens its own port only.
            http.get(models_url, headers={"Authorization": f"Bearer {keys.inference}"}),
        ]
        allowed = http.post(
            predict_url, json=body, headers={"Authorization": f"Bearer {keys.inference}"}
        )
    assert [r.status_code for r in refused] == [400] * len(refused)
    assert all(r.json()["type"] == "InvalidKeyException" for r in refused)
    assert allowed.status_code == 200 and allowed.json()["stars"] in range(1, 6)


def test_metrics_count_requests_per_version(torchserve: RunningTorchServe) -> None:
    def count(version: str) -> float:
        series = scrape(torchserve, "ts_inference_requests_total")
        return sum(v for k, v in series.items() if f'model_version="{version}"' in k)

    before = {v: count(v) for v in ("1.0", "2.0")}
    with torchserve.sync_client() as client:
        for _ in range(3):
            client.predict(["ok"], "1.0")
        client.predict(["ok"], "2.0")
    assert count("1.0") - before["1.0"] == 3
    assert count("2.0") - before["2.0"] == 1


def test_malformed_request_gets_its_own_400_error_object(torchserve: RunningTorchServe) -> None:
    keys = torchserve.keys()
    headers = {"Authorization": f"Bearer {keys.inference}"}
    with httpx.Client(timeout=10, headers=headers) as http:
        bad = http.post(f"{torchserve.inference_url}/predictions/stars/1.0", json={"text": " "})
        many = http.post(
            f"{torchserve.inference_url}/predictions/stars/1.0", json={"texts": TEXTS[:2]}
        )
    assert bad.status_code == 400
    assert bad.json() == {"error": {"code": "empty_text", "message": "text is empty"}}
    assert many.status_code == 200 and len(many.json()) == 2


def test_register_predict_and_unregister_a_new_version(
    torchserve: RunningTorchServe, tiny_store: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    store, _ = tiny_store
    build_tiny_archives(store, tmp_path, {"3.0": 7})
    with torchserve.sync_client(timeout=120.0) as client:
        client.register("stars-3.0.mar")
        try:
            assert client.model_ready("3.0")
            assert client.predict(["good value"], "3.0")[0].model_version == "3.0"
            assert {v.version for v in client.list_versions()} == {"1.0", "2.0", "3.0"}
        finally:
            client.unregister("3.0")
        assert {v.version for v in client.list_versions()} == {"1.0", "2.0"}
        with pytest.raises(UnknownVersion):
            client.predict(["good value"], "3.0")
