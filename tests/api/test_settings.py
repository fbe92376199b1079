"""Gateway settings: environment variables, validation, admin token and CORS behaviour."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.deps import AdminDep
from api.settings import Settings
from tests.api.conftest import AppFactory


def test_settings_come_from_starrating_environment_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STARRATING_MAX_BATCH_SIZE", "3")
    monkeypatch.setenv("STARRATING_TORCHSERVE_URL", "http://ts.internal:18080")
    monkeypatch.setenv("STARRATING_HOME", str(tmp_path))
    monkeypatch.setenv("STARRATING_CORS_ORIGINS", '["https://shop.example"]')

    settings = Settings()

    assert settings.max_batch_size == 3
    assert settings.torchserve_url == "http://ts.internal:18080"
    assert settings.database_url == f"sqlite:///{tmp_path.as_posix()}/db/starrating.db"
    assert settings.cors_origins == ["https://shop.example"]
    assert settings.admin_token is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_batch_size", 0),
        ("max_text_chars", -1),
        ("max_body_bytes", 10),
        ("upstream_timeout_s", 0),
        ("port", 70000),
        ("model_name", "../stars"),
        ("cors_origins", ["*"]),
        ("torchserve_url", "not a url"),
        ("log_level", "LOUD"),
    ],
)
def test_unsafe_or_nonsensical_values_are_refused(name: str, value: object) -> None:
    with pytest.raises(ValidationError, match=name):
        Settings(**{name: value})  # type: ignore[arg-type]


def test_blank_admin_token_means_closed() -> None:
    assert Settings(admin_token="   ").admin_token is None  # type: ignore[arg-type]


def admin_app(make_app: AppFactory, **overrides: object) -> FastAPI:
    app = make_app(**overrides)
    router = APIRouter()

    @router.put("/admin-probe", dependencies=[AdminDep])
    def probe() -> dict[str, bool]:
        return {"ok": True}

    app.include_router(router)
    return app


@pytest.mark.parametrize("configured", [None, "", "  "])
def test_admin_routes_are_closed_without_a_configured_token(
    make_app: AppFactory, configured: str | None
) -> None:
    settings = Settings(admin_token=configured)  # type: ignore[arg-type]
    with TestClient(admin_app(make_app, admin_token=settings.admin_token)) as client:
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer x"}):
            response = client.put("/admin-probe", headers=headers)
            assert response.status_code == 403
            assert response.json()["error"]["code"] == "forbidden"


def test_admin_routes_need_the_right_bearer_token(make_app: AppFactory) -> None:
    token = Settings(admin_token="s3cret-token-of-some-length").admin_token  # type: ignore[arg-type]
    with TestClient(admin_app(make_app, admin_token=token)) as client:
        missing = client.put("/admin-probe")
        wrong = client.put("/admin-probe", headers={"Authorization": "Bearer nope"})
        basic = client.put("/admin-probe", headers={"Authorization": "Basic czNjcmV0"})
        right = client.put(
            "/admin-probe", headers={"Authorization": "Bearer s3cret-token-of-some-length"}
        )

    assert (missing.status_code, missing.headers["WWW-Authenticate"]) == (401, "Bearer")
    assert wrong.status_code == 403
    assert basic.status_code == 401
    assert right.status_code == 200


def test_cors_is_closed_by_default_and_opens_for_listed_origins(make_app: AppFactory) -> None:
    preflight = {
        "Origin": "https://shop.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    with TestClient(make_app()) as closed:
        refused = closed.options("/v1/predictions", headers=preflight)
        plain = closed.get("/healthz", headers={"Origin": "https://shop.example"})
    with TestClient(make_app(cors_origins=["https://shop.example"])) as opened:
        allowed = opened.options("/v1/predictions", headers=preflight)
        other = opened.options(
            "/v1/predictions", headers={**preflight, "Origin": "https://evil.example"}
        )

    assert "access-control-allow-origin" not in refused.headers
    assert "access-control-allow-origin" not in plain.headers
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://shop.example"
    assert "access-control-allow-origin" not in other.headers
