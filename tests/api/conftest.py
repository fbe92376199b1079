"""Gateway test fixtures: the real app and the real TorchServeClient, with a fake TorchServe.

``FakeTorchServe`` answers at the HTTP level in TorchServe 0.12's wire format (through
``httpx.MockTransport``), so everything above it — client, error mapping, routes — is the
code that runs in production. It can be switched down, slow, or to answer garbage.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from api.seams import PredictionRecorder, VariantChooser
from api.settings import Settings
from serving.torchserve import TorchServeClient

INFERENCE = "http://torchserve-inference"
MANAGEMENT = "http://torchserve-management"


def fake_stars(text: str) -> int:
    """The fake model's rating: a function of the text, so tests can tell answers apart."""
    return len(text) % 5 + 1


def fake_probabilities(stars: int) -> dict[str, float]:
    return {str(s): (0.6 if s == stars else 0.1) for s in range(1, 6)}


@dataclass
class FakeTorchServe:
    """The ``stars`` model with some versions; ``ready[v]`` False means no ready worker.

    ``down`` refuses connections, ``slow`` times out reading, ``hang_s`` answers that late,
    ``garbage`` answers predictions with a body of the wrong shape.
    """

    ready: dict[str, bool] = field(default_factory=lambda: {"1.0": True, "2.0": True})
    default: str = "1.0"
    down: bool = False
    slow: bool = False
    hang_s: float = 0.0
    garbage: bool = False
    predictions: list[tuple[str | None, list[str]]] = field(default_factory=list)
    explanations: list[tuple[str | None, str]] = field(default_factory=list)
    explain_hang_s: float = 0.0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.hang_s:
            await asyncio.sleep(self.hang_s)
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if self.slow:
            raise httpx.ReadTimeout("read timed out", request=request)
        parts = request.url.path.strip("/").split("/")
        if request.url.host == "torchserve-inference":
            if parts == ["ping"]:
                return httpx.Response(200, json={"status": "Healthy"})
            if parts[0] == "predictions" and request.method == "POST":
                return self._predict(parts[2] if len(parts) > 2 else None, request)
            if parts[0] == "explanations" and request.method == "POST":
                return await self._explain(parts[2] if len(parts) > 2 else None, request)
        elif parts[:2] == ["models", "stars"] and request.method == "GET":
            customized = request.url.params.get("customized") == "true"
            return self._describe(parts[2] if len(parts) > 2 else None, customized)
        return httpx.Response(404, json={"code": 404, "message": "Requested resource not found"})

    def _predict(self, version: str | None, request: httpx.Request) -> httpx.Response:
        texts: list[str] = json.loads(request.content)["texts"]
        self.predictions.append((version, texts))
        served = version or self.default
        if served not in self.ready:
            return _not_found(served)
        if not self.ready[served]:
            return httpx.Response(503, json={"code": 503, "message": "No worker is available"})
        if self.garbage:
            return httpx.Response(200, json={"unexpected": True})
        answers = [
            {
                "stars": fake_stars(text),
                "probabilities": fake_probabilities(fake_stars(text)),
                "model_version": served,
            }
            for text in texts
        ]
        return httpx.Response(200, json=answers)

    async def _explain(self, version: str | None, request: httpx.Request) -> httpx.Response:
        """The handler's explanation answer: the prediction, each word attributed its length."""
        text: str = json.loads(request.content)["text"]
        self.explanations.append((version, text))
        if self.explain_hang_s:
            await asyncio.sleep(self.explain_hang_s)
        served = version or self.default
        if served not in self.ready:
            return _not_found(served)
        stars = fake_stars(text)
        words: list[dict[str, Any]] = [
            {"word": m.group(), "start": m.start(), "end": m.end(), "attribution": len(m.group())}
            for m in re.finditer(r"\w+|[^\w\s]", text)
        ]
        answer = {
            "stars": stars,
            "probabilities": fake_probabilities(stars),
            "model_version": served,
            "text": text,
            "words": words,
            "special_tokens": 0.0,
            "logit_difference": float(sum(w["attribution"] for w in words)),
            "convergence_delta": 0.0,
            "truncated": False,
            "steps": 32,
        }
        return httpx.Response(200, json=answer)

    def _describe(self, version: str | None, customized: bool = False) -> httpx.Response:
        if version == "all":
            return httpx.Response(200, json=[self._description(v) for v in self.ready])
        served = version or self.default
        if served not in self.ready:
            return _not_found(served)
        description = self._description(served)
        if customized:
            # What StarHandler.describe_handle answers through a worker.
            description["customizedMetadata"] = {
                "precision": "int8",
                "precision_reason": "CPU without bf16 kept; -0.20 accuracy points",
                "numerics": {"accuracy": {"fp32": 0.66, "bf16": 0.66, "int8": 0.658}},
                "threads": 1,
                "device": "cpu",
            }
        return httpx.Response(200, json=[description])

    def _description(self, version: str) -> dict[str, Any]:
        status = "READY" if self.ready[version] else "UNLOADING"
        return {
            "modelName": "stars",
            "modelVersion": version,
            "modelUrl": f"stars-{version}.mar",
            "batchSize": 8,
            "maxBatchDelay": 5,
            "isDefault": version == self.default,
            "workers": [{"id": "9000", "status": status}],
        }


def _not_found(version: str) -> httpx.Response:
    message = f"Model version: {version} does not exist for model: stars"
    return httpx.Response(404, json={"code": 404, "message": message})


@pytest.fixture
def torchserve() -> FakeTorchServe:
    return FakeTorchServe()


@pytest.fixture
def settings() -> Settings:
    return Settings(
        torchserve_url=INFERENCE,
        torchserve_management_url=MANAGEMENT,
        json_logs=False,
        max_batch_size=8,
        max_text_chars=500,
        max_body_bytes=4096,
    )


AppFactory = Callable[..., FastAPI]


@pytest.fixture
def make_app(settings: Settings, torchserve: FakeTorchServe) -> AppFactory:
    """``make_app(chooser=..., recorder=..., **setting_overrides)``: the gateway on the fake."""

    def make(
        chooser: VariantChooser | None = None,
        recorder: PredictionRecorder | None = None,
        **overrides: Any,
    ) -> FastAPI:
        app_settings = settings.model_copy(update=overrides) if overrides else settings
        client = TorchServeClient(INFERENCE, MANAGEMENT, transport=httpx.MockTransport(torchserve))
        return create_app(app_settings, client=client, chooser=chooser, recorder=recorder)

    return make


@pytest.fixture
def gateway(make_app: AppFactory) -> Iterator[TestClient]:
    """The default gateway (no experiment) in front of the fake TorchServe."""
    with TestClient(make_app(), raise_server_exceptions=False) as client:
        yield client
