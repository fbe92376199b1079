"""TorchServeClient against a fake TorchServe (httpx.MockTransport speaking its wire format)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.torchserve import (
    BadUpstreamResponse,
    InvalidInput,
    ManagementRefused,
    ModelNotReady,
    TorchServeClient,
    TorchServeKeys,
    TorchServeSyncClient,
    UnknownVersion,
    UpstreamAuthFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


PROBS = {"1": 0.1, "2": 0.1, "3": 0.1, "4": 0.2, "5": 0.5}
INVALID_KEY = {
    "code": 400,
    "type": "InvalidKeyException",
    "message": "Token Authorization failed. Token either incorrect, expired, or not provided",
}


def write_keys(path: Path, inference: str, management: str = "m1", api: str = "api") -> None:
    path.write_text(
        json.dumps(
            {
                "management": {"key": management, "expiration time": "2099-01-01T00:00:00Z"},
                "inference": {"key": inference, "expiration time": "2099-01-01T00:00:00Z"},
                "API": {"key": api},
            }
        )
    )


def answer(request: httpx.Request) -> list[dict[str, Any]]:
    texts = json.loads(request.content)["texts"]
    version = request.url.path.rsplit("/", 1)[-1]
    version = "2.0" if version == "stars" else version
    return [{"stars": 5, "probabilities": PROBS, "model_version": version} for _ in texts]


def describe(version: str, ready: bool = True) -> dict[str, Any]:
    return {
        "modelName": "stars",
        "modelVersion": version,
        "modelUrl": f"stars-{version}.mar",
        "batchSize": 8,
        "maxBatchDelay": 5,
        "workers": [{"id": "9000", "status": "READY" if ready else "UNLOADING"}],
    }


async def test_predict_sends_all_texts_in_one_request_and_parses_answers() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=answer(request))

    async with TorchServeClient(transport=httpx.MockTransport(handler)) as client:
        predictions = await client.predict(["great", "bad"], version="1.0")

    assert len(seen) == 1
    assert seen[0].url.path == "/predictions/stars/1.0"
    assert [p.model_version for p in predictions] == ["1.0", "1.0"]
    assert predictions[0].stars == 5
    assert predictions[0].probabilities == PROBS


async def test_unversioned_predict_uses_default_route() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/predictions/stars"
        return httpx.Response(200, json=answer(request))

    async with TorchServeClient(transport=httpx.MockTransport(handler)) as client:
        (prediction,) = await client.predict(["fine"])
    assert prediction.model_version == "2.0"


async def test_bearer_keys_come_from_key_file_per_port(tmp_path: Path) -> None:
    key_file = tmp_path / "key_file.json"
    write_keys(key_file, inference="inf-key", management="mgmt-key")
    auth: dict[str, str] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        auth[request.url.host + str(request.url.port)] = request.headers["authorization"]
        if request.url.port == 8080:
            return httpx.Response(200, json=answer(request))
        return httpx.Response(200, json=[describe("1.0")])

    async with TorchServeClient(
        key_file=key_file, transport=httpx.MockTransport(handler)
    ) as client:
        await client.predict(["x"])
        await client.list_versions()
    assert auth == {"127.0.0.18080": "Bearer inf-key", "127.0.0.18081": "Bearer mgmt-key"}


async def test_expired_key_is_rotated_with_api_key_and_request_retried(tmp_path: Path) -> None:
    key_file = tmp_path / "key_file.json"
    write_keys(key_file, inference="old")
    rotations: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            assert request.headers["authorization"] == "Bearer api"
            rotations.append(request.url.params["type"])
            write_keys(key_file, inference="new")
            return httpx.Response(200)
        if request.headers.get("authorization") != "Bearer new":
            return httpx.Response(400, json=INVALID_KEY)
        return httpx.Response(200, json=answer(request))

    async with TorchServeClient(
        key_file=key_file, transport=httpx.MockTransport(handler)
    ) as client:
        first = await client.predict(["x"])
        second = await client.predict(["y"])
    assert rotations == ["inference"]
    assert first[0].stars == second[0].stars == 5


async def test_key_rewritten_by_another_process_is_picked_up_without_rotation(
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "key_file.json"
    write_keys(key_file, inference="old")

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path != "/token"
        if request.headers.get("authorization") != "Bearer rotated-elsewhere":
            return httpx.Response(400, json=INVALID_KEY)
        return httpx.Response(200, json=answer(request))

    async with TorchServeClient(
        key_file=key_file, transport=httpx.MockTransport(handler)
    ) as client:
        write_keys(key_file, inference="rotated-elsewhere")
        (prediction,) = await client.predict(["x"])
    assert prediction.stars == 5


async def test_wrong_token_without_way_to_rotate_raises_auth_failure(tmp_path: Path) -> None:
    key_file = tmp_path / "key_file.json"
    write_keys(key_file, inference="wrong")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            return httpx.Response(400, json=INVALID_KEY)
        return httpx.Response(400, json=INVALID_KEY)

    async with TorchServeClient(
        key_file=key_file, transport=httpx.MockTransport(handler)
    ) as client:
        with pytest.raises(UpstreamAuthFailed):
            await client.predict(["x"])


@pytest.mark.parametrize(
    ("status", "body", "version", "expected"),
    [
        (404, {"code": 404, "message": "Model version: 9.0 does not exist"}, "9.0", UnknownVersion),
        (404, {"code": 404, "message": "Model not found: stars"}, None, ModelNotReady),
        (503, {"code": 503, "message": "No worker is available"}, None, ModelNotReady),
        (504, {"code": 504, "message": "timeout"}, None, UpstreamTimeout),
        (500, {"code": 500, "message": "boom"}, None, BadUpstreamResponse),
        (200, {"not": "a list"}, None, BadUpstreamResponse),
        (200, [{"stars": 7, "probabilities": PROBS}], None, BadUpstreamResponse),
    ],
)
async def test_upstream_statuses_map_to_domain_errors(
    status: int, body: Any, version: str | None, expected: type[Exception]
) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(status, json=body))
    async with TorchServeClient(transport=transport) as client:
        with pytest.raises(expected):
            await client.predict(["x"], version=version)


async def test_handler_error_object_becomes_invalid_input() -> None:
    error = {"error": {"code": "empty_text", "message": "text must not be empty"}}
    transport = httpx.MockTransport(lambda request: httpx.Response(400, json=error))
    async with TorchServeClient(transport=transport) as client:
        with pytest.raises(InvalidInput) as caught:
            await client.predict([""])
    assert caught.value.code == "empty_text"


async def test_connection_refused_and_read_timeout_are_distinguished() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("read timed out", request=request)

    async with TorchServeClient(transport=httpx.MockTransport(refuse)) as client:
        with pytest.raises(UpstreamUnavailable):
            await client.predict(["x"])
        assert await client.ping() is False
    async with TorchServeClient(transport=httpx.MockTransport(slow)) as client:
        with pytest.raises(UpstreamTimeout):
            await client.predict(["x"])


async def test_a_refused_connection_is_retried_but_a_sent_request_is_not() -> None:
    attempts: list[str] = []

    def refuse_once(request: httpx.Request) -> httpx.Response:
        attempts.append("connect")
        if len(attempts) == 1:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json=answer(request))

    def drop_after_send(request: httpx.Request) -> httpx.Response:
        attempts.append("sent")
        raise httpx.ReadError("connection reset", request=request)

    async with TorchServeClient(
        transport=httpx.MockTransport(refuse_once), connect_retries=1
    ) as client:
        assert [p.stars for p in await client.predict(["x"])] == [5]
    assert attempts == ["connect", "connect"]

    attempts.clear()
    async with TorchServeClient(
        transport=httpx.MockTransport(drop_after_send), connect_retries=3
    ) as client:
        with pytest.raises(UpstreamUnavailable):
            await client.predict(["x"])
    assert attempts == ["sent"]  # a prediction may have run: never sent twice


async def test_only_the_answer_waits_for_the_answer_timeout() -> None:
    """Getting a connection may take the connect timeout on top of the answer timeout:
    aiohttp's pool applies httpx's pool timeout to opening a connection, and a 1 ms answer
    timeout there turned a slow answer into "cannot connect" (503 instead of 504)."""
    seen: list[dict[str, float]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200, json=answer(request))

    transport = httpx.MockTransport(handler)
    async with TorchServeClient(timeout=0.001, connect_timeout=0.5, transport=transport) as client:
        await client.predict(["x"])
    assert seen == [{"connect": 0.5, "pool": 0.501, "read": 0.001, "write": 0.001}]


async def test_aiohttp_transport_against_a_real_server(free_tcp_port: int) -> None:
    """The gateway's transport (httpx on aiohttp's pool) speaks to a real socket: answers,
    a read timeout and a closed port map to the same domain errors as httpx's own."""
    from aiohttp import web
    from httpx_aiohttp import AiohttpTransport

    async def predictions(request: web.Request) -> web.Response:
        texts = (await request.json())["texts"]
        if texts == ["slow"]:
            await asyncio.sleep(2)
        body = [{"stars": 4, "probabilities": PROBS, "model_version": "1.0"} for _ in texts]
        return web.json_response(body)

    app = web.Application()
    app.router.add_post("/predictions/stars", predictions)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", free_tcp_port).start()
    url = f"http://127.0.0.1:{free_tcp_port}"
    try:
        async with TorchServeClient(url, url, timeout=0.5, transport=AiohttpTransport()) as client:
            answers = await asyncio.gather(*(client.predict(["a", "b"]) for _ in range(20)))
            assert all([p.stars for p in a] == [4, 4] for a in answers)
            with pytest.raises(UpstreamTimeout):
                await client.predict(["slow"])
    finally:
        await runner.cleanup()
    async with TorchServeClient(
        url, url, connect_retries=1, transport=AiohttpTransport()
    ) as client:
        with pytest.raises(UpstreamUnavailable):
            await client.predict(["x"])


async def test_versions_readiness_and_management_calls() -> None:
    calls: list[tuple[str, str, dict[str, str]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append((request.method, request.url.path, dict(request.url.params)))
        path = request.url.path
        if path == "/models/stars":
            return httpx.Response(200, json=[describe("2.0")])
        if path == "/models/stars/all":
            return httpx.Response(200, json=[describe("1.0"), describe("2.0")])
        if path == "/models/stars/3.0":
            return httpx.Response(200, json=[describe("3.0", ready=False)])
        if path == "/models/stars/9.0" and request.method == "DELETE":
            return httpx.Response(404, json={"code": 404, "message": "not found"})
        if path == "/models/stars/2.0" and request.method == "DELETE":
            return httpx.Response(400, json={"code": 400, "message": "default version"})
        return httpx.Response(200, json={"status": "ok"})

    async with TorchServeClient(transport=httpx.MockTransport(handler)) as client:
        versions = await client.list_versions()
        assert [(v.version, v.is_default, v.ready) for v in versions] == [
            ("1.0", False, True),
            ("2.0", True, True),
        ]
        assert await client.model_ready("3.0") is False
        await client.register("stars-3.0.mar", batch_size=4)
        await client.set_default("1.0")
        with pytest.raises(UnknownVersion):
            await client.unregister("9.0")
        with pytest.raises(ManagementRefused):
            await client.unregister("2.0")

    register = next(c for c in calls if c[0] == "POST")
    assert register[1] == "/models"
    assert register[2]["url"] == "stars-3.0.mar"
    assert register[2]["model_name"] == "stars"
    assert register[2]["batch_size"] == "4"
    assert ("PUT", "/models/stars/1.0/set-default", {}) in calls


def test_sync_facade_reuses_one_client() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json=answer(request))

    with TorchServeSyncClient(transport=httpx.MockTransport(handler)) as client:
        assert client.predict(["a"], "1.0")[0].model_version == "1.0"
        assert client.predict(["b", "c"], "1.0")[1].model_version == "1.0"
    assert seen == ["/predictions/stars/1.0", "/predictions/stars/1.0"]


def test_missing_key_file_means_no_keys(tmp_path: Path) -> None:
    assert TorchServeKeys.read(tmp_path / "absent.json") == TorchServeKeys()
