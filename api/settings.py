"""The gateway's settings, read once from ``STARRATING_*`` environment variables.

Limits are generous defaults for review text; every one can be changed without code. Unsafe or
nonsensical values (a blank admin token, a limit of zero, a CORS wildcard) are refused or
normalised here, so the rest of the gateway can trust what it reads.
"""

from __future__ import annotations

import logging
from typing import Annotated, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from serving.sizing import MIN_WORKERS_PER_VERSION
from starrating.service import LOOPBACK
from starrating.settings import TorchServeSettings

logger = logging.getLogger(__name__)

GATEWAY_PORT = 8000
"""The gateway's port unless ``STARRATING_PORT`` says otherwise."""

PositiveSeconds = Annotated[float, Field(gt=0, le=600)]


class Settings(TorchServeSettings):
    """Everything the gateway process needs to know; tests build one and pass it to the app."""

    upstream_timeout_s: PositiveSeconds = Field(
        default=10.0, description="whole-request timeout for a prediction; past it: 504"
    )
    upstream_connect_timeout_s: PositiveSeconds = Field(
        default=0.5, description="TorchServe down must answer 503 quickly, not after a hang"
    )
    upstream_connect_retries: int = Field(
        default=1, ge=0, le=5, description="connection attempts retried (never a sent request)"
    )
    upstream_max_connections: int = Field(default=100, ge=1, le=10_000)
    max_in_flight: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="API requests answered at once; past it 503 at once, so requests cannot "
        "pile up behind a slow TorchServe (probes and /metrics are not counted)",
    )
    # Adaptive batching (api/batching.py): concurrent predictions for one version share a
    # TorchServe request; an idle gateway sends each at once.
    coalesce: bool = Field(
        default=True, description="coalesce concurrent predictions per version (adaptive batching)"
    )
    coalesce_max_texts: int = Field(
        default=32, ge=1, le=10_000, description="texts per coalesced TorchServe request at most"
    )
    coalesce_max_wait_ms: float = Field(
        default=10.0, ge=0, le=10_000, description="longest a prediction waits to be coalesced"
    )
    coalesce_max_in_flight: int = Field(
        default=MIN_WORKERS_PER_VERSION,
        ge=1,
        le=1_000,
        description="TorchServe requests in flight per version before predictions wait: the "
        "workers TorchServe runs per version (`starrating serve` sets it from the layout)",
    )
    readiness_timeout_s: PositiveSeconds = Field(
        default=1.0, description="/readyz gives up (not ready) after this long"
    )
    drain_delay_s: float = Field(
        default=0.0,
        ge=0,
        le=600,
        description="on SIGTERM, /readyz answers 503 for this long while requests are still "
        "served, then the server stops accepting and drains (api/drain.py); 0: stop at once. "
        "Set it to what whoever routes by /readyz needs to notice (the image: 5 s)",
    )

    # Request limits: past them a request is refused with 413 before it reaches TorchServe.
    max_body_bytes: int = Field(default=1_000_000, ge=1024, le=100_000_000)
    max_batch_size: int = Field(default=64, ge=1, le=10_000)
    max_text_chars: int = Field(default=10_000, ge=1, le=1_000_000)

    # Explanations (POST /v1/explanations): one costs tens of predictions (integrated gradients),
    # so they have a tighter text limit, their own bound on how many run at once, and more time.
    explain_max_text_chars: int = Field(
        default=2_000, ge=1, le=1_000_000, description="longest text an explanation takes"
    )
    explain_max_in_flight: int = Field(
        default=2,
        ge=1,
        le=10_000,
        description="explanations answered at once; past it 503 at once (predictions unaffected)",
    )
    explain_timeout_s: PositiveSeconds = Field(
        default=60.0, description="whole-request timeout of an explanation; past it: 504"
    )

    # Admin routes (experiment changes): closed while no token is configured.
    admin_token: SecretStr | None = Field(default=None, description="bearer token; None = closed")

    autopilot_interval_s: PositiveSeconds = Field(
        default=10.0, description="how often the A/B autopilot looks for new feedback"
    )
    database_url: str | None = Field(
        default=None, description="the A/B store; default: SQLite under STARRATING_HOME/db"
    )

    # The server process (read by `starrating serve`).
    host: str = LOOPBACK
    port: int = Field(default=GATEWAY_PORT, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64, description="uvicorn worker processes")

    cors_origins: list[str] = Field(
        default_factory=list, description="browser origins allowed to call the API; none by default"
    )
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")
    json_logs: bool = Field(default=True, description="configure JSON log lines at startup")

    @field_validator("admin_token")
    @classmethod
    def _blank_token_closes(cls, value: SecretStr | None) -> SecretStr | None:
        # A blank token would let an empty Authorization header in: treat it as "closed".
        if value is not None and not value.get_secret_value().strip():
            logger.warning("STARRATING_ADMIN_TOKEN is blank: admin routes stay closed")
            return None
        return value

    @field_validator("cors_origins")
    @classmethod
    def _no_cors_wildcard(cls, value: list[str]) -> list[str]:
        if "*" in value:
            raise ValueError("a CORS wildcard is refused: list the allowed origins")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _default_database(self) -> Self:
        if self.database_url is None:
            self.database_url = f"sqlite:///{(self.home / 'db' / 'starrating.db').as_posix()}"
        return self
