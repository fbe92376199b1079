"""Guardrails: worse / not worse / not enough data on simulated traffic."""

from __future__ import annotations

import numpy as np

from abtesting.guardrails import (
    GuardrailLimits,
    assess_guardrails,
    disagreement_rate,
    error_rate,
    latency_p95,
)
from abtesting.observations import RequestObs, ShadowObs


def _requests(
    n: int, candidate_error: float, candidate_extra_ms: float, seed: int = 0
) -> list[RequestObs]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        unit = f"u{rng.integers(n // 4)}"
        variant = "B" if int(unit[1:]) % 2 else "A"
        failed = bool(rng.random() < (candidate_error if variant == "B" else 0.01))
        latency = float(rng.lognormal(3.0, 0.3)) + (candidate_extra_ms if variant == "B" else 0.0)
        out.append(RequestObs(variant, unit, failed, None if failed else latency))
    return out


def test_a_failing_candidate_is_worse_and_a_healthy_one_not_worse() -> None:
    bad = error_rate("A", "B", _requests(4000, 0.08, 0.0), limit=0.01)
    assert bad.status == "worse"
    assert bad.candidate_value is not None and bad.candidate_value > 0.05
    good = error_rate("A", "B", _requests(4000, 0.01, 0.0), limit=0.01)
    assert good.status == "not_worse"
    assert good.p_value is not None and good.p_value < 0.05


def test_few_requests_are_not_enough_data() -> None:
    assert error_rate("A", "B", _requests(30, 0.5, 0.0), limit=0.01).status == "not_enough_data"
    assert error_rate("A", "B", [], limit=0.01).status == "not_enough_data"


def test_no_failures_yet_is_not_proof_of_a_zero_error_rate() -> None:
    clean = [RequestObs("A" if i % 2 else "B", f"u{i}", False, 10.0) for i in range(120)]
    assert error_rate("A", "B", clean, limit=0.01).status == "not_enough_data"


def test_latency_p95_worse_only_beyond_the_tolerated_increase() -> None:
    slow = latency_p95("A", "B", _requests(4000, 0.01, 200.0), limit_ms=50.0)
    assert slow.status == "worse"
    assert slow.difference is not None and slow.difference > 150
    tolerated = latency_p95("A", "B", _requests(4000, 0.01, 5.0), limit_ms=50.0)
    assert tolerated.status == "not_worse"
    assert tolerated.limit == 50.0


def test_shadow_disagreement_against_the_limit() -> None:
    rng = np.random.default_rng(1)
    shadows = [ShadowObs("2.0", f"u{i % 200}", bool(rng.random() < 0.5)) for i in range(1000)]
    assert disagreement_rate("B", "2.0", shadows, limit=0.2).status == "worse"
    calm = [ShadowObs("2.0", f"u{i % 200}", bool(rng.random() < 0.02)) for i in range(1000)]
    assert disagreement_rate("B", "2.0", calm, limit=0.2).status == "not_worse"
    failed_only = [ShadowObs("2.0", "u1", None)] * 50
    assert disagreement_rate("B", "2.0", failed_only, limit=0.2).status == "not_enough_data"


def test_assess_guardrails_names_shadowed_versions_by_their_variant() -> None:
    shadows = [ShadowObs("2.0", f"u{i}", False) for i in range(50)]
    results = assess_guardrails(
        "A", ["B"], _requests(400, 0.01, 0.0), shadows, GuardrailLimits(), {"A": "1", "B": "2.0"}
    )
    assert [(r.candidate, r.metric) for r in results] == [
        ("B", "error_rate"),
        ("B", "latency_p95_ms"),
        ("B", "disagreement_rate"),
    ]
