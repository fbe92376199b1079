"""Where starrating keeps its files, from ``STARRATING_*`` environment variables.

The gateway's own settings (``api.settings.Settings``) extend this class.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "starrating"


class CoreSettings(BaseSettings):
    """Locations shared by every command."""

    model_config = SettingsConfigDict(env_prefix="STARRATING_", extra="ignore")

    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="downloaded data (the embedded data set) is cached here",
    )
    home: Path = Field(
        default=Path("var"),
        description="run-time state of `starrating serve`: logs, pid files, keys, the A/B store",
    )
    model_store: Path = Field(default=Path("model_store"), description="where .mar files live")
