"""Settings every role shares, from ``STARRATING_*`` environment variables.

``CoreSettings``: where starrating keeps its files. ``TorchServeSettings``: where TorchServe is
and how to authenticate, read by the gateway (``api.settings.Settings`` extends it) and by the
serve image's healthcheck, so each setting has one environment name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, HttpUrl
from pydantic_settings import BaseSettings, SettingsConfigDict

from starrating.service import (
    DEFAULT_INFERENCE_URL,
    DEFAULT_MANAGEMENT_URL,
    ENV_PREFIX,
    MODEL_NAME,
    NAME_PATTERN,
)


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "starrating"


class CoreSettings(BaseSettings):
    """Locations shared by every command."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="downloaded data (the embedded data set) is cached here",
    )
    home: Path = Field(
        default=Path("var"),
        description="run-time state of `starrating serve`: logs, pid files, keys, the A/B store",
    )
    model_store: Path = Field(default=Path("model_store"), description="where .mar files live")


def _http_url(value: str) -> str:
    # Validated as a URL, kept as the plain string (without a trailing slash) that clients use.
    HttpUrl(value)
    return value.rstrip("/")


HttpUrlStr = Annotated[str, AfterValidator(_http_url)]


class TorchServeSettings(CoreSettings):
    """The TorchServe model the gateway and the healthcheck talk to."""

    torchserve_url: HttpUrlStr = Field(
        default=DEFAULT_INFERENCE_URL, description="TorchServe inference API"
    )
    torchserve_management_url: HttpUrlStr = Field(
        default=DEFAULT_MANAGEMENT_URL,
        description="TorchServe management API (never exposed through the gateway)",
    )
    torchserve_key_file: Path | None = Field(
        default=None,
        description="TorchServe's key_file.json; None when TorchServe token auth is off",
    )
    model_name: str = Field(default=MODEL_NAME, pattern=NAME_PATTERN)
