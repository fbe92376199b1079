"""Run-time settings of the stars handler: the ``handler:`` section of ``model-config.yaml``.

Batching is chosen per device type (``batching.cpu``, ``batching.cuda``); every value can be
overridden by an environment variable ``STARRATING_HANDLER_<NAME>`` (``THREADS``, ``STRATEGY``,
``SUB_BATCH_SIZE``, ``PRECISION``, ``MAX_TEXTS_PER_REQUEST``, ``MAX_TEXT_CHARS``,
``EXPLAIN_STEPS``, ``EXPLAIN_INTERNAL_BATCH_SIZE``), which
TorchServe passes on to its workers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from handlers.numerics import AUTO, PRECISION_CHOICES, PrecisionChoice
from starrating.service import HANDLER_ENV_PREFIX

Strategy = Literal["padded", "sorted"]
STRATEGIES: tuple[Strategy, ...] = ("padded", "sorted")


@dataclass(frozen=True)
class HandlerConfig:
    """Run-time knobs of the handler (``handler:`` section of model-config.yaml, env overrides)."""

    threads: int | None = None
    strategy: Strategy = "padded"
    sub_batch_size: int = 32
    precision: PrecisionChoice = AUTO
    max_texts_per_request: int = 64
    max_text_chars: int = 20_000
    explain_steps: int = 32
    """Points on the integrated-gradients path per explained text (more: closer to exact)."""
    explain_internal_batch_size: int = 64
    """Rows (texts x steps) per forward/backward pass of an explanation: bounds its memory."""

    @classmethod
    def resolve(
        cls, section: Mapping[str, Any] | None, device_type: str, env: Mapping[str, str]
    ) -> HandlerConfig:
        """Values from ``section`` (batching per device type), overridden by the environment."""
        section = section or {}
        batching = section.get("batching", {}) or {}
        per_device = batching.get(device_type, batching.get("default", {})) or {}
        raw: dict[str, Any] = {
            "threads": section.get("threads", cls.threads),
            "strategy": per_device.get("strategy", cls.strategy),
            "sub_batch_size": per_device.get("sub_batch_size", cls.sub_batch_size),
            "precision": per_device.get("precision", cls.precision),
            "max_texts_per_request": section.get(
                "max_texts_per_request", cls.max_texts_per_request
            ),
            "max_text_chars": section.get("max_text_chars", cls.max_text_chars),
            "explain_steps": section.get("explain_steps", cls.explain_steps),
            "explain_internal_batch_size": section.get(
                "explain_internal_batch_size", cls.explain_internal_batch_size
            ),
        }
        for name in raw:
            value = env.get(HANDLER_ENV_PREFIX + name.upper())
            if value:
                raw[name] = value
        try:
            threads = int(raw["threads"]) if raw["threads"] not in (None, "") else None
            config = cls(
                threads=threads,
                strategy=str(raw["strategy"]),  # type: ignore[arg-type]
                sub_batch_size=int(raw["sub_batch_size"]),
                precision=str(raw["precision"]),  # type: ignore[arg-type]
                max_texts_per_request=int(raw["max_texts_per_request"]),
                max_text_chars=int(raw["max_text_chars"]),
                explain_steps=int(raw["explain_steps"]),
                explain_internal_batch_size=int(raw["explain_internal_batch_size"]),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid handler configuration {raw}: {exc}") from exc
        if config.strategy not in STRATEGIES:
            raise ValueError(f"handler batching strategy must be one of {STRATEGIES}")
        if config.precision not in PRECISION_CHOICES:
            raise ValueError(f"handler precision must be one of {PRECISION_CHOICES}")
        sizes = (
            config.sub_batch_size,
            config.max_texts_per_request,
            config.max_text_chars,
            config.explain_steps,
            config.explain_internal_batch_size,
        )
        if min(sizes) < 1:
            raise ValueError(f"handler sizes must be positive: {config}")
        if config.threads is not None and config.threads < 1:
            raise ValueError(f"handler threads must be positive, got {config.threads}")
        return config
