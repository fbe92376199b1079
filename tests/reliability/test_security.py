"""Closed admin surfaces and the TorchServe hardening, checked on the real stack and its configs.

- Every admin route (anything that changes state, apart from predictions and feedback) refuses a
  missing token (401), a wrong one (403), and is closed (403) while no token, or a blank one, is
  configured; tokens are compared with ``hmac.compare_digest``.
- TorchServe's management API is never reachable through the gateway, whatever the path, its
  encoding or the Host header; TorchServe itself refuses requests without its token and refuses
  to fetch archives from anywhere but the model store (CVE-2023-43654, "ShellTorch").
- Every TorchServe config the project writes or ships binds management to loopback or keeps
  token authorization on, with the registration API off or ``allowed_urls`` limited to the store.
- CORS is closed by default; tokens and keys appear in no log and no tracked file.
"""

from __future__ import annotations

import hmac
import http.client
import json
import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

from api.app import create_app
from api.settings import Settings
from serving.addresses import LOOPBACK_HOSTS, free_port
from serving.torchserve_config import TorchServeOptions
from tests.reliability.conftest import VERSION, GatewayStack

REPO = Path(__file__).resolve().parents[2]
# What any client may POST: ratings (v1 and the Open Inference Protocol's infer), explanations
# (a rating's why, with its own in-flight bound) and feedback.
PUBLIC_WRITES = {
    ("POST", "/v1/predictions"),
    ("POST", "/v1/feedback"),
    ("POST", "/v1/explanations"),
    ("POST", "/v2/models/{model_name}/infer"),
    ("POST", "/v2/models/{model_name}/versions/{version}/infer"),
}
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
EXPERIMENT = {
    "name": "security-check",
    "variants": [{"name": "control", "version": VERSION, "weight": 1.0}],
    "sticky": True,
    "shadow": None,
}
ADMIN_BODIES: dict[tuple[str, str], Any] = {("PUT", "/v1/experiment"): EXPERIMENT}
WRONG_TOKEN = "wrong-token-zq81-never-valid"
PROBE = "zzprobe"

# -- admin routes ----------------------------------------------------------------------------


def routes(app: FastAPI) -> list[tuple[str, str, bool]]:
    """(method, path, needs the admin token) of every operation the app publishes.

    Read from the OpenAPI document: ``require_admin`` is the one user of the bearer scheme.
    """
    return [
        (method.upper(), path, any("HTTPBearer" in s for s in operation.get("security", [])))
        for path, operations in app.openapi()["paths"].items()
        for method, operation in operations.items()
    ]


@pytest.fixture(scope="module")
def admin_routes(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str]]:
    app = create_app(Settings(json_logs=False, home=tmp_path_factory.mktemp("routes-home")))
    found = [(method, path) for method, path, admin in routes(app) if admin]
    assert found, "the gateway has no admin route to check"
    return found


def test_every_state_changing_route_but_predictions_and_feedback_is_admin_only(
    tmp_path: Path,
) -> None:
    app = create_app(Settings(json_logs=False, home=tmp_path))
    unprotected = {
        (method, path)
        for method, path, admin in routes(app)
        if method in WRITE_METHODS and not admin
    }
    admin = {(method, path) for method, path, needs in routes(app) if needs}

    assert unprotected <= PUBLIC_WRITES, (
        f"state-changing routes without the admin token: {unprotected - PUBLIC_WRITES}"
    )
    assert ("PUT", "/v1/experiment") in admin


def admin_request(client: httpx.Client | TestClient, method: str, path: str, **kwargs: Any) -> Any:
    return client.request(method, path, json=ADMIN_BODIES.get((method, path), {}), **kwargs)


@pytest.mark.slow
@pytest.mark.integration
def test_admin_routes_refuse_a_missing_or_wrong_token(
    stack: GatewayStack, admin_routes: list[tuple[str, str]]
) -> None:
    before = stack.http.get("/v1/experiment")
    token = stack.admin_token
    refusals = {
        "no header": ({}, 401),
        "wrong token": ({"Authorization": f"Bearer {WRONG_TOKEN}"}, 403),
        "token minus its last character": ({"Authorization": f"Bearer {token[:-1]}"}, 403),
        "token plus a character": ({"Authorization": f"Bearer {token}x"}, 403),
        "scheme without a token": ({"Authorization": "Bearer"}, 401),
        "basic scheme with the token": ({"Authorization": f"Basic {token}"}, 401),
        "token without a scheme": ({"Authorization": token}, 401),
        "token in a query string": ({}, 401),
    }

    for method, path in admin_routes:
        for name, (headers, status) in refusals.items():
            url = f"{path}?token={token}" if name == "token in a query string" else path
            response = admin_request(stack.http, method, url, headers=headers)
            assert response.status_code == status, (method, path, name, response.text)
            assert response.json()["error"]["code"] in ("unauthorized", "forbidden")
            if status == 401:
                assert response.headers["WWW-Authenticate"] == "Bearer"

    after = stack.http.get("/v1/experiment")
    assert (after.status_code, after.text) == (before.status_code, before.text)
    accepted = admin_request(stack.http, "PUT", "/v1/experiment", headers=stack.admin_headers())
    assert accepted.status_code == 200, accepted.text
    assert stack.http.get("/v1/experiment").json()["name"] == EXPERIMENT["name"]
    assert stack.alive()


@pytest.fixture
def env_gateway(
    stack: GatewayStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str | None], TestClient]:
    """The gateway built from the environment (``create_app()``), in front of the stack's
    TorchServe, with ``STARRATING_ADMIN_TOKEN`` unset (None) or set to the given value."""
    for name in [k for k in os.environ if k.startswith("STARRATING_")]:
        monkeypatch.delenv(name)
    for name, value in stack.env.items():
        if name.startswith("STARRATING_") and name != "STARRATING_ADMIN_TOKEN":
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("STARRATING_HOME", str(tmp_path))
    monkeypatch.setenv("STARRATING_JSON_LOGS", "false")

    def build(admin_token: str | None) -> TestClient:
        if admin_token is None:
            monkeypatch.delenv("STARRATING_ADMIN_TOKEN", raising=False)
        else:
            monkeypatch.setenv("STARRATING_ADMIN_TOKEN", admin_token)
        return TestClient(create_app(), raise_server_exceptions=False)

    return build


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize(
    "configured", [None, "", "   ", "\t\n"], ids=["unset", "empty", "spaces", "whitespace"]
)
def test_admin_routes_are_closed_without_a_configured_token(
    env_gateway: Callable[[str | None], TestClient],
    admin_routes: list[tuple[str, str]],
    configured: str | None,
) -> None:
    attempts = {
        "no header": {},
        "wrong token": {"Authorization": f"Bearer {WRONG_TOKEN}"},
        "scheme without a token": {"Authorization": "Bearer"},
        "the configured value": {"Authorization": f"Bearer {configured or ''}"},
    }
    with env_gateway(configured) as gateway:
        for method, path in admin_routes:
            for name, headers in attempts.items():
                response = admin_request(gateway, method, path, headers=headers)
                assert response.status_code == 403, (method, path, name, response.text)
                assert response.json()["error"]["code"] == "forbidden"
        assert gateway.get("/healthz").status_code == 200


@pytest.mark.slow
@pytest.mark.integration
def test_admin_token_is_compared_in_constant_time(
    env_gateway: Callable[[str | None], TestClient],
    admin_routes: list[tuple[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real_compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    with env_gateway("the-configured-admin-token") as gateway:
        for method, path in admin_routes:
            headers = {"Authorization": f"Bearer {WRONG_TOKEN}"}
            assert admin_request(gateway, method, path, headers=headers).status_code == 403

    assert (WRONG_TOKEN.encode(), b"the-configured-admin-token") in compared
    assert len(compared) >= len(admin_routes)


# -- TorchServe's management API through the gateway -------------------------------------------


def raw_request(
    url: str, method: str, target: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One request with the target sent exactly as written (no client-side normalisation)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        sent = {"Host": parts.netloc, "Content-Length": "0", **(headers or {})}
        for name, value in sent.items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


MANAGEMENT_PATHS = [
    f"/models/{PROBE}",
    "/models",
    "/models/stars",
    "/models/stars/all",
    f"/models/stars/{VERSION}",
    f"/models/stars/{VERSION}/set-default",
    f"/models?url=file:///{PROBE}.mar&model_name={PROBE}",
    "/api-description",
    "/token?type=management",
    "/predictions/stars",
    "/ping",
    f"/v1/../models/{PROBE}",
    f"/v1/%2e%2e/models/{PROBE}",
    f"/v1/models/../../models/{PROBE}",
    f"/v1/models/%2e%2e/%2e%2e/models/{PROBE}",
    f"/v1/models/..%2f..%2fmodels%2f{PROBE}",
    f"/v1/models/%252e%252e/models/{PROBE}",
    f"//models/{PROBE}",
    f"/%2fmodels/{PROBE}",
    f"/v1/models/stars/{PROBE}",
    f"/v1/models/stars/{VERSION}/set-default",
    f"/v1/models/{PROBE}",
    f"/v1//models/{PROBE}",
    f"/v1/models%2f{PROBE}",
    f"/v1/models;/{PROBE}",
    f"/v1/models?url=http://127.0.0.1/{PROBE}.mar",
    f"/v1/models/{quote('../../' + PROBE, safe='')}",
]


@pytest.mark.slow
@pytest.mark.integration
def test_no_gateway_route_reaches_the_management_api(stack: GatewayStack) -> None:
    management = stack.torchserve.management_url
    access_log = stack.paths.torchserve_logs / "access_log.log"
    seen_before = access_log.read_text(errors="replace").count("\n")
    tricks: list[tuple[str, str, dict[str, str]]] = [
        (method, path, {})
        for path in MANAGEMENT_PATHS
        for method in ("GET", "POST", "PUT", "DELETE", "OPTIONS")
    ]
    mgmt_netloc = urlsplit(management).netloc
    tricks += [
        ("GET", f"/models/{PROBE}", {"Host": mgmt_netloc}),
        ("DELETE", f"/models/stars/{VERSION}", {"Host": mgmt_netloc}),
        ("GET", "/v1/models", {"X-Forwarded-Host": mgmt_netloc, "X-Forwarded-Prefix": "/models"}),
        ("GET", "/v1/models", {"X-Original-URL": f"/models/{PROBE}"}),
        ("GET", "/v1/models", {"X-Rewrite-URL": f"/models/{PROBE}"}),
        ("GET", f"{management}/models/{PROBE}", {}),  # absolute-form request target
        ("DELETE", f"{management}/models/stars/{VERSION}", {}),
    ]

    answers = {}
    for method, target, headers in tricks:
        status, body = raw_request(stack.url, method, target, headers)
        answers[(method, target, tuple(headers.items()))] = status
        if status == 200:
            # Only the gateway's own read-only view of the versions, whatever was appended.
            assert (method, urlsplit(target).path) == ("GET", "/v1/models"), (method, target)
            assert json.loads(body)["model"] == "stars"
        else:
            assert status in (400, 404, 405, 422), (method, target, headers, status, body[:300])
        assert b"modelUrl" not in body and b"InvalidKeyException" not in body

    added = access_log.read_text(errors="replace").splitlines()[seen_before:]
    assert not [line for line in added if PROBE in line]
    assert not [line for line in added if re.search(r'"(POST|PUT|DELETE) /models', line)]
    # The gateway's own answer about versions is still there, and the versions are intact.
    listed = stack.http.get("/v1/models").json()["versions"]
    assert [(v["version"], v["ready"]) for v in listed] == [(VERSION, True)]
    assert stack.alive()


@pytest.mark.slow
@pytest.mark.integration
def test_torchserve_refuses_requests_without_its_token(stack: GatewayStack) -> None:
    torchserve = stack.torchserve
    with httpx.Client(timeout=30.0) as http:
        answers = {
            "ping": http.get(f"{torchserve.inference_url}/ping"),
            "predict": http.post(
                f"{torchserve.inference_url}/predictions/stars", json={"text": "ok"}
            ),
            "list models": http.get(f"{torchserve.management_url}/models"),
            "unregister": http.delete(f"{torchserve.management_url}/models/stars/{VERSION}"),
            "wrong key": http.get(
                f"{torchserve.management_url}/models",
                headers={"Authorization": f"Bearer {WRONG_TOKEN}"},
            ),
        }

    for name, response in answers.items():
        assert response.status_code == 400, name
        assert response.json()["type"] == "InvalidKeyException", name
    assert stack.http.post("/v1/predictions", json={"text": "still served"}).status_code == 200


class CountingHandler(BaseHTTPRequestHandler):
    """A web server that would hand out a model archive; it only counts who asked."""

    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        self.wfile.write(b"PK\x03\x04 not really an archive")

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def archive_server() -> Iterator[tuple[str, list[str]]]:
    CountingHandler.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), CountingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", CountingHandler.hits
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
@pytest.mark.integration
def test_torchserve_fetches_archives_only_from_the_model_store(
    stack: GatewayStack, archive_server: tuple[str, list[str]], tmp_path: Path
) -> None:
    """Even with the management key, registering a remote or out-of-store archive is refused:
    the ShellTorch chain (CVE-2023-43654) starts with TorchServe downloading an attacker's .mar."""
    server_url, hits = archive_server
    torchserve = stack.torchserve
    store = torchserve.options.model_store.resolve()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / f"{PROBE}.mar").write_bytes((store / f"stars-{VERSION}.mar").read_bytes())
    (store.parent / f"{PROBE}.mar").write_bytes((store / f"stars-{VERSION}.mar").read_bytes())
    key = torchserve.keys().management
    urls = [
        f"{server_url}/{PROBE}.mar",
        f"{server_url.replace('http://', 'https://')}/{PROBE}.mar",
        f"file://{outside}/{PROBE}.mar",
        f"file://{store}/../{outside.name}/{PROBE}.mar",
        f"file://{store}/%2e%2e/{PROBE}.mar",
        f"file://{store}/%2E%2E/{PROBE}.mar",
        f"file://{store}/.%2e/{PROBE}.mar",
        f"file://{store}/..%2f{PROBE}.mar",
        f"file://{store}/%2e%2e%2f{PROBE}.mar",
    ]

    with httpx.Client(timeout=60.0, headers={"Authorization": f"Bearer {key}"}) as http:
        for url in urls:
            response = http.post(
                f"{torchserve.management_url}/models",
                params={"url": url, "model_name": PROBE, "initial_workers": "0"},
            )
            assert response.status_code in (400, 403, 404), (url, response.text)
        registered = http.get(f"{torchserve.management_url}/models").json()["models"]
        # An archive URL of the store passes the allowed_urls check (TorchServe then finds the
        # file is already there): the refusals above are allowed_urls at work.
        control = http.post(
            f"{torchserve.management_url}/models",
            params={"url": f"file://{store}/stars-{VERSION}.mar", "model_name": PROBE},
        )

    assert hits == []
    assert [m["modelName"] for m in registered] == ["stars"]
    assert "already exists" in control.json()["message"], control.text


# -- TorchServe configurations -------------------------------------------------------------------


def properties(text: str) -> dict[str, str]:
    """A .properties file as Java's Properties.load reads it (one line per key here)."""
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {
        k.strip(): re.sub(r"\\(.)", r"\1", v.strip())
        for k, v in pairs
        if not k.lstrip().startswith("#")
    }


def test_generated_config_is_loopback_token_auth_and_store_only(tmp_path: Path) -> None:
    store = tmp_path / "model store (v1.0+x)"
    store.mkdir()
    config = properties(TorchServeOptions(model_store=store).config_properties([]))
    allowed = re.compile(config["allowed_urls"])

    for address in ("inference_address", "management_address", "metrics_address"):
        assert urlsplit(config[address]).hostname in LOOPBACK_HOSTS, address
    assert config["disable_token_authorization"] == "false"
    assert config["enable_envvars_config"] == "false"
    assert config["install_py_dep_per_model"] == "false"
    # TorchServe matches the whole URL against allowed_urls (Java's Pattern.matches).
    assert allowed.fullmatch(f"file://{store.resolve()}/stars-2.0.mar")
    for refused in (
        "https://evil.example/stars-2.0.mar",
        "http://169.254.169.254/latest/meta-data/",
        f"http://127.0.0.1:8081/{store.resolve()}/stars-2.0.mar",
        "file:///etc/passwd",
        f"file://{store.resolve()}-other/stars-2.0.mar",
        f"file://{store.resolve().parent}/stars-2.0.mar",
        f"ftp://{store.resolve()}/stars-2.0.mar",
        f"file://{store.resolve()}/../stars-2.0.mar",
        f"file://{store.resolve()}/%2e%2e/stars-2.0.mar",
        f"file://{store.resolve()}/sub/stars-2.0.mar",
        f"file://{store.resolve()}/stars-2.0.mar.sh",
    ):
        assert not allowed.fullmatch(refused), refused


def test_registration_api_is_off_when_management_leaves_loopback(tmp_path: Path) -> None:
    options = TorchServeOptions(
        model_store=tmp_path,
        inference_url="http://0.0.0.0:8080",
        management_url="http://0.0.0.0:8081",
    )
    config = properties(options.config_properties([]))

    assert config["enable_model_api"] == "false"
    assert config["disable_token_authorization"] == "false"


def test_token_auth_is_off_only_when_asked_for_explicitly(tmp_path: Path) -> None:
    default = properties(TorchServeOptions(model_store=tmp_path).config_properties([]))
    insecure = properties(
        TorchServeOptions(model_store=tmp_path, token_auth=False).config_properties([])
    )
    settings = Settings(home=tmp_path)

    assert default["disable_token_authorization"] == "false"
    assert insecure["disable_token_authorization"] == "true"
    for url in (settings.torchserve_url, settings.torchserve_management_url):
        assert urlsplit(url).hostname in LOOPBACK_HOSTS
    assert settings.host in LOOPBACK_HOSTS
    assert settings.admin_token is None


# Configs that ship with token authorization off, and the control that stands in for it. Adding
# a config to this list needs the same: a reason, and a test of the compensating control.
TOKENLESS_CONFIGS = {
    # SageMaker's health check calls /ping without a token; the endpoint is reachable only
    # through SageMaker's IAM-signed InvokeEndpoint and management stays on loopback.
    "deploy/torchserve/sagemaker.properties": "management on loopback",
    # Keys TorchServe generates in one pod cannot reach the gateway pods; the NetworkPolicy
    # admits only gateway pods to inference and management (tests/deploy/test_k8s.py).
    "deploy/k8s/base/torchserve.properties": "network policy",
}


def shipped_torchserve_configs() -> dict[str, dict[str, str]]:
    listed = subprocess.run(
        ["git", "ls-files", "*.properties"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    configs = {path: properties((REPO / path).read_text()) for path in listed}
    return {path: config for path, config in configs.items() if "inference_address" in config}


def test_every_shipped_torchserve_config_keeps_management_closed() -> None:
    configs = shipped_torchserve_configs()

    assert configs, "no TorchServe config found in the repository"
    for path, config in configs.items():
        assert config.get("enable_envvars_config") == "false", path
        remote_registration = config.get("enable_model_api", "false") == "true"
        if remote_registration:
            assert config.get("allowed_urls", "").startswith("file://"), path
        if config.get("disable_token_authorization", "false") == "true":
            assert path in TOKENLESS_CONFIGS, f"{path} turns token authorization off"
            assert not remote_registration, path
            management = urlsplit(config["management_address"]).hostname
            if TOKENLESS_CONFIGS[path] == "management on loopback":
                assert management in LOOPBACK_HOSTS, path
            else:
                policy = (REPO / "deploy/k8s/base/network-policy.yaml").read_text()
                assert "port: 8081" in policy and "app.kubernetes.io/name: gateway" in policy


# -- CORS ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.integration
def test_cors_is_closed_by_default(stack: GatewayStack) -> None:
    origin = {"Origin": "https://evil.example"}
    preflight = stack.http.options(
        "/v1/predictions",
        headers={**origin, "Access-Control-Request-Method": "POST"},
    )
    simple = stack.http.post("/v1/predictions", json={"text": "ok"}, headers=origin)
    admin_preflight = stack.http.options(
        "/v1/experiment",
        headers={
            **origin,
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "authorization",
        },
    )

    assert simple.status_code == 200
    for response in (preflight, simple, admin_preflight):
        assert not [h for h in response.headers if h.lower().startswith("access-control-")]


def test_cors_allows_only_the_configured_origins(tmp_path: Path) -> None:
    settings = Settings(json_logs=False, home=tmp_path, cors_origins=["https://shop.example"])
    with TestClient(create_app(settings), raise_server_exceptions=False) as gateway:
        allowed = gateway.get("/healthz", headers={"Origin": "https://shop.example"})
        foreign = gateway.get("/healthz", headers={"Origin": "https://evil.example"})
        foreign_preflight = gateway.options(
            "/v1/predictions",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )

    assert allowed.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert "Access-Control-Allow-Origin" not in foreign.headers
    assert "Access-Control-Allow-Origin" not in foreign_preflight.headers
    with pytest.raises(ValidationError):
        Settings(home=tmp_path, cors_origins=["*"])


# -- secrets ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.integration
def test_no_token_or_key_appears_in_any_log(stack: GatewayStack) -> None:
    """Runs after the tests above (same module): they sent right and wrong tokens."""
    keys = stack.torchserve.keys()
    stack.http.put("/v1/experiment", json=EXPERIMENT, headers=stack.admin_headers())
    stack.http.put(
        "/v1/experiment", json=EXPERIMENT, headers={"Authorization": f"Bearer {WRONG_TOKEN}"}
    )
    stack.http.post("/v1/predictions", json={"text": "ok"})
    secrets = {
        "admin token": stack.admin_token,
        "wrong admin token": WRONG_TOKEN,
        "TorchServe inference key": keys.inference,
        "TorchServe management key": keys.management,
        "TorchServe API key": keys.api,
    }
    logs = stack.log_text()

    assert "request" in logs  # the gateway's access lines are there to be searched
    for name, secret in secrets.items():
        assert secret, name
        assert secret not in logs, f"the {name} is in a log"


# Built from pieces so that this file does not match its own patterns.
KEY_PATTERNS = {
    "AWS access key id": r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
    "private key": "-----BEGIN [A-Z ]*" + "PRIVATE KEY-----",
    "GitHub token": r"\bgh[pousr]_[A-Za-z0-9]{36,}\b",
    "Slack token": r"\bxox[abprs]-[A-Za-z0-9-]{10,}",
    "OpenAI-style key": r"\bsk-[A-Za-z0-9]{32,}\b",
    "assigned secret": r"(?i)\b(secret|password|passwd|api[_-]?key|access[_-]?key|token)"
    r"\s*[:=]\s*[\"'][A-Za-z0-9/+_=-]{20,}[\"']",
    "AWS secret key": r"(?i)aws_secret_access_key\s*[:=]\s*\S{30,}",
}
TEST_FIXTURE_KINDS = {"assigned secret"}
SECRET_FILES = re.compile(r"(^|/)(key_file\.json|\.env|id_rsa|id_ed25519|.*\.pem|.*\.key)$")


def key_like_literals(root: Path, paths: list[str]) -> list[tuple[str, str]]:
    """(path, kind) of every secret-looking file or literal among ``paths`` under ``root``."""
    patterns = {name: re.compile(pattern) for name, pattern in KEY_PATTERNS.items()}
    found = []
    for path in paths:
        if SECRET_FILES.search(path):
            found.append((path, "secret file"))
            continue
        file = root / path
        if not file.is_file() or file.stat().st_size > 5_000_000:
            continue
        text = file.read_bytes().decode("utf-8", errors="ignore")
        found += [
            (path, name)
            for name, pattern in patterns.items()
            # Tests configure made-up tokens on purpose; key formats are refused everywhere.
            if pattern.search(text)
            and not (name in TEST_FIXTURE_KINDS and path.startswith("tests/"))
        ]
    return found


def test_no_key_like_literal_in_any_tracked_file() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode()

    assert key_like_literals(REPO, [p for p in tracked.split("\0") if p]) == []


def test_the_key_scan_finds_planted_keys(tmp_path: Path) -> None:
    planted = {
        "api/config.py": 'AWS_ID = "AKIA' + "Q" * 16 + '"\n',
        "deploy/secret.yaml": "password: '" + "x9" * 12 + "'\n",
        "docs/notes.md": "-----BEGIN RSA " + "PRIVATE KEY-----\nMIIE\n",
        "deploy/key_file.json": "{}",
        "tests/test_x.py": "token = '" + "t" * 24 + "'\n",
    }
    for path, text in planted.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)

    assert sorted(key_like_literals(tmp_path, list(planted))) == [
        ("api/config.py", "AWS access key id"),
        ("deploy/key_file.json", "secret file"),
        ("deploy/secret.yaml", "assigned secret"),
        ("docs/notes.md", "private key"),
    ]


def test_in_process_logs_never_carry_the_admin_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = "in-process-admin-token-5521"
    nowhere = f"http://127.0.0.1:{free_port()}"
    settings = Settings(
        json_logs=False,
        home=tmp_path,
        admin_token=SecretStr(token),
        torchserve_url=nowhere,
        torchserve_management_url=nowhere,
    )
    caplog.set_level("DEBUG")
    with TestClient(create_app(settings), raise_server_exceptions=False) as gateway:
        for auth in (f"Bearer {token}", f"Bearer {token}-wrong", f"Basic {token}", token):
            gateway.put("/v1/experiment", json=EXPERIMENT, headers={"Authorization": auth})

    assert caplog.records  # the gateway did log (access lines, upstream errors)
    text = "\n".join(
        f"{record.getMessage()} {json.dumps(getattr(record, 'fields', {}), default=str)}"
        for record in caplog.records
    )
    assert token not in text
