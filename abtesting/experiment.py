"""The experiment's config: variants and weights (the first is the control), the shadow, the
autopilot's settings, and the checks a config must pass before it routes traffic (its versions
registered and ready in TorchServe; what to tell an operator when they are gone).

A client's ``X-Model-Version`` wins over the split and is counted apart, as variant
``override`` (``OVERRIDE_VARIANT``).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from abtesting.assessment import GuardrailLimits
from abtesting.policy import AutopilotSettings
from api.seams import DEFAULT_VARIANT
from serving.torchserve import TorchServeClient
from starrating.service import NAME_PATTERN, VERSION_PATTERN

OVERRIDE_VARIANT = "override"
"""The variant name of requests whose client forced a version with ``X-Model-Version``."""
RESERVED_VARIANTS = frozenset({OVERRIDE_VARIANT, DEFAULT_VARIANT})


class VariantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=NAME_PATTERN,
        description="how reports and metrics call it; unique in the experiment",
        json_schema_extra={"not": {"enum": [*sorted(RESERVED_VARIANTS)]}},
    )
    version: str = Field(pattern=VERSION_PATTERN, description="the TorchServe model version")
    # strict: a JSON number (2 or 0.5), never true or "0.5", as the schema says
    weight: float = Field(
        ge=0, le=1e6, allow_inf_nan=False, strict=True, description="relative share"
    )


class ShadowConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(pattern=VERSION_PATTERN, description="the version that gets copies")
    sample: float = Field(ge=0, le=1, strict=True, description="share of requests copied to it")
    paired: bool = Field(
        default=True,
        strict=True,
        description="grade the shadow's answers with the feedback users give on the live "
        "answers to the same requests (a paired comparison against the control). Assumes the "
        "true stars do not depend on the answer shown: turn it off where users rate after "
        "seeing the predicted stars",
    )


_DEFAULT_AUTOPILOT = AutopilotSettings()


def _whole_float_as_int(value: object) -> object:
    return int(value) if isinstance(value, float) and value.is_integer() else value


class GuardrailsConfig(BaseModel):
    """The largest tolerated increase of each guardrail metric over the control."""

    model_config = ConfigDict(extra="forbid")

    error_rate: float = Field(
        default=_DEFAULT_AUTOPILOT.limits.error_rate,
        gt=0,
        le=1,
        strict=True,
        description="failed requests (5xx, timeouts), share of requests",
    )
    latency_p95_ms: float = Field(
        default=_DEFAULT_AUTOPILOT.limits.latency_p95_ms,
        gt=0,
        le=600_000,
        strict=True,
        description="95th percentile of upstream latency, milliseconds",
    )
    disagreement_rate: float = Field(
        default=_DEFAULT_AUTOPILOT.limits.disagreement_rate,
        gt=0,
        le=1,
        strict=True,
        description="share of shadow answers that differ from the live answer",
    )


class AutopilotConfig(BaseModel):
    """How the autopilot may act on the experiment (``off`` by default).

    ``dry-run`` records what it would decide without changing anything; ``on`` applies it:
    ramp the candidate's weight one step, roll it back to 0, or promote it (TorchServe's
    default version). Needs exactly one candidate besides the control.
    """

    model_config = ConfigDict(extra="forbid")

    mode: Literal["off", "dry-run", "on"] = "off"
    primary_metric: Literal["accuracy", "mae"] = _DEFAULT_AUTOPILOT.primary_metric
    # strict, bounded items: [0] or [true] is refused by the schema, so by the model too
    ramp: list[Annotated[float, Field(gt=0, le=1, strict=True)]] = Field(
        default=list(_DEFAULT_AUTOPILOT.ramp),
        min_length=1,
        max_length=20,
        description="the candidate's traffic share at each step, increasing, each in (0, 1]",
    )
    # strict, yet 240.0 is an integer to JSON Schema: a whole float counts, "240" or true not
    min_feedback: Annotated[int, BeforeValidator(_whole_float_as_int)] = Field(
        default=_DEFAULT_AUTOPILOT.min_feedback,
        ge=1,
        le=10_000_000,
        strict=True,
        description="feedbacks before the autopilot ramps or promotes",
    )
    guardrails: GuardrailsConfig = Field(default_factory=GuardrailsConfig)

    @model_validator(mode="after")
    def _increasing_ramp(self) -> Self:
        if any(b <= a for a, b in zip(self.ramp, self.ramp[1:], strict=False)):
            raise ValueError(f"ramp weights must increase, got {self.ramp}")
        return self

    def settings(self) -> AutopilotSettings:
        """The policy's settings (``abtesting.policy``)."""
        return AutopilotSettings(
            mode=self.mode,
            primary_metric=self.primary_metric,
            ramp=tuple(self.ramp),
            min_feedback=self.min_feedback,
            limits=GuardrailLimits(
                error_rate=self.guardrails.error_rate,
                latency_p95_ms=self.guardrails.latency_p95_ms,
                disagreement_rate=self.guardrails.disagreement_rate,
            ),
        )


class ExperimentConfig(BaseModel):
    """What ``PUT /v1/experiment`` takes: the split between versions, a shadow, an autopilot."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "minilm-vs-distilbert",
                    "variants": [
                        {"name": "A", "version": "1.0", "weight": 0.5},
                        {"name": "B", "version": "2.0", "weight": 0.5},
                    ],
                    "sticky": True,
                    "shadow": None,
                }
            ]
        },
    )

    name: str = Field(pattern=NAME_PATTERN, description="also salts the assignment hash")
    variants: list[VariantConfig] = Field(
        min_length=1,
        max_length=16,
        description="the first is the control; names unique (JSON Schema cannot say that)",
        # what _consistent checks of the weights, said in the schema: one of them above 0
        json_schema_extra={
            "contains": {
                "type": "object",
                "properties": {"weight": {"exclusiveMinimum": 0}},
                "required": ["weight"],
            }
        },
    )
    # strict: JSON true or false, never 0 or "true", as the schema says
    sticky: bool = Field(
        default=True, strict=True, description="a user id always gets the same variant"
    )
    shadow: ShadowConfig | None = None
    autopilot: AutopilotConfig = Field(default_factory=AutopilotConfig)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        if reserved := RESERVED_VARIANTS & set(names):
            raise ValueError(f"variant names {sorted(reserved)} are reserved")
        if sum(v.weight for v in self.variants) <= 0:
            raise ValueError("variant weights must sum to more than 0")
        if self.autopilot.mode != "off" and len(self.variants) != 2:
            raise ValueError(
                f"the autopilot ({self.autopilot.mode}) needs exactly one candidate besides "
                f"the control, got {len(self.variants)} variants"
            )
        return self

    @property
    def candidate(self) -> VariantConfig | None:
        """The one candidate the autopilot acts on (None without exactly one)."""
        return self.variants[1] if len(self.variants) == 2 else None

    @property
    def control(self) -> VariantConfig:
        return self.variants[0]

    def versions(self) -> set[str]:
        """Every version the experiment sends traffic (or shadow copies) to."""
        versions = {v.version for v in self.variants if v.weight > 0}
        if self.shadow is not None and self.shadow.sample > 0:
            versions.add(self.shadow.version)
        return versions


class ExperimentNotReady(ValueError):
    """A config names versions TorchServe does not have, or has no ready worker for."""


async def check_versions_ready(config: ExperimentConfig, client: TorchServeClient) -> None:
    """Refuse a config whose versions (weighted or shadow) are unknown or not ready."""
    known = {v.version: v for v in await client.list_versions()}
    missing = sorted(config.versions() - set(known))
    if missing:
        raise ExperimentNotReady(
            f"model versions {missing} are not registered in TorchServe "
            f"(registered: {sorted(known) or 'none'})"
        )
    idle = sorted(v for v in config.versions() if not known[v].ready)
    if idle:
        raise ExperimentNotReady(f"model versions {idle} have no ready worker")


def stale_experiment_reason(
    config: ExperimentConfig, registered: Collection[str], among: Collection[str] | None = None
) -> str | None:
    """What to tell an operator when the experiment routes to versions TorchServe does not have
    (a ``.mar`` removed, a store volume reused): those of ``among`` (default: all of its
    versions, shadow included). None when TorchServe has them all."""
    routed = config.versions() if among is None else config.versions() & set(among)
    missing = sorted(routed - set(registered))
    if not missing:
        return None
    return (
        f"experiment {config.name!r} routes to model version {', '.join(missing)}, which "
        f"TorchServe does not have (registered: {', '.join(sorted(registered)) or 'none'}): "
        f"archive it into the model store (starrating archive --run RUN_DIR --version "
        f"{missing[0]}) and restart serving, or change the experiment (PUT /v1/experiment)"
    )
