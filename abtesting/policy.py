"""The autopilot's policy: from an assessment to ramp, roll back or promote decisions (pure).

* **Roll back** (candidate weight to 0) at once when a guardrail is significantly worse than
  tolerated, or, on a trustworthy split, the primary metric is significantly worse (Holm). A
  guardrail rollback applies even while the sample-ratio check fails: rolling back sends users
  to the known-good control, so acting on a possibly biased alarm costs at most a re-run, while
  ignoring a real one costs users; a broken split is often the candidate itself failing.
* **Promote** when the split is trustworthy, the control and candidate have at least
  ``min_feedback`` feedbacks, the primary metric is significantly better (always-valid p-value,
  Holm-adjusted across candidates) and no guardrail of it is worse. One promotion ends the
  experiment: with several candidates the one with the smallest adjusted p-value wins.
  "The primary metric" is the candidate's evidence (``Assessment.evidence``): its split
  comparison and, where its version is shadowed with paired evaluation on, the paired one,
  Holm-adjusted together; either may decide, as may its feedback count.
* **Ramp** the candidate's share of traffic one step up the ramp when the split is trustworthy,
  no guardrail is worse, the primary metric is not worse, and enough feedback came in: step j of
  the ramp (0-based) waits for max(1, j) * ``min_feedback`` feedbacks in all, so each step is
  watched for ``min_feedback`` feedbacks before the next. Counting from the total keeps the
  policy stateless: a restart or another replica reaches the same decision.

While the sample-ratio check fails nothing else happens. Rules are written once, elementwise
(``action_codes``), so a simulation of many experiments applies the very rules ``decide`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from abtesting import stats
from abtesting.assessment import Assessment, Comparison
from abtesting.guardrails import GuardrailLimits

Action = Literal["ramp", "rollback", "promote"]
NO_ACTION, RAMP, ROLLBACK, PROMOTE = 0, 1, 2, 3
ACTION_NAMES: dict[int, Action] = {RAMP: "ramp", ROLLBACK: "rollback", PROMOTE: "promote"}
DEFAULT_RAMP = (0.05, 0.1, 0.25, 0.5)


@dataclass(frozen=True)
class AutopilotSettings:
    mode: Literal["off", "dry-run", "on"] = "off"
    primary_metric: stats.Metric = "accuracy"
    ramp: tuple[float, ...] = DEFAULT_RAMP  # the candidate's share of traffic, step by step
    min_feedback: int = 200
    limits: GuardrailLimits = field(default_factory=GuardrailLimits)


@dataclass(frozen=True)
class Decision:
    action: Action
    candidate: str
    weight_before: float  # the candidate's share of traffic (weights normalised to sum 1)
    weight_after: float
    reason: str
    numbers: dict[str, float | int | str | None]


def action_codes(
    *,
    trustworthy: npt.ArrayLike,
    guardrail_worse: npt.ArrayLike,
    primary_better: npt.ArrayLike,
    primary_worse: npt.ArrayLike,
    enough_feedback: npt.ArrayLike,
    enough_feedback_for_step: npt.ArrayLike,
    can_ramp: npt.ArrayLike,
) -> npt.NDArray[np.int8]:
    """The policy's rule, elementwise: NO_ACTION, RAMP, ROLLBACK or PROMOTE per candidate."""
    trusted = np.asarray(trustworthy, dtype=bool)
    guard = np.asarray(guardrail_worse, dtype=bool)
    worse = np.asarray(primary_worse, dtype=bool)
    rollback = guard | (trusted & worse)
    promote = trusted & np.asarray(primary_better, bool) & np.asarray(enough_feedback, bool)
    ramp = (
        trusted & np.asarray(enough_feedback_for_step, bool) & np.asarray(can_ramp, bool) & ~worse
    )
    return np.asarray(
        np.where(rollback, ROLLBACK, np.where(promote, PROMOTE, np.where(ramp, RAMP, NO_ACTION))),
        dtype=np.int8,
    )


def next_ramp_step(share: float, ramp: tuple[float, ...]) -> int | None:
    """Index of the first ramp step above the current share, None at the top of the ramp."""
    return next((j for j, step in enumerate(ramp) if step > share + 1e-9), None)


def feedback_for_step(step: int, min_feedback: int) -> int:
    """Feedbacks in all before ramp step ``step`` (0-based) may be taken."""
    return max(1, step) * min_feedback


def _numbers(
    primary: Comparison | None, assessment: Assessment, candidate: str
) -> dict[str, float | int | str | None]:
    numbers: dict[str, float | int | str | None] = {
        "srm_p_value": assessment.srm.p_value,
    }
    if primary is not None:
        numbers.update(
            {
                "metric": primary.metric,
                "feedbacks": primary.feedbacks,
                "difference": primary.difference,
                "low": primary.low,
                "high": primary.high,
                "p_value": primary.p_value,
                "p_value_holm": primary.p_value_holm,
            }
        )
    for c in assessment.evidence(candidate):
        if c.shadow_version is not None:
            numbers.update(
                {
                    "paired_feedbacks": c.feedbacks,
                    "paired_difference": c.difference,
                    "paired_p_value_holm": c.p_value_holm,
                }
            )
    for g in assessment.guardrails:
        if g.candidate == candidate:
            numbers[f"{g.metric}_difference"] = g.difference
            numbers[f"{g.metric}_p_value"] = g.p_value
            numbers[f"{g.metric}_status"] = g.status
    return numbers


def decide(
    assessment: Assessment,
    settings: AutopilotSettings,
    weights: Mapping[str, float],
    feedbacks: int,
) -> list[Decision]:
    """The decisions to take now: rollbacks first, then at most one promotion, else ramps.

    ``weights``: the current weights of all variants (the control included; any scale).
    ``feedbacks``: all feedbacks of the control and the candidates so far (see the ramp rule).
    Mode "off" decides nothing; in "dry-run" the caller records the decisions unapplied.
    """
    if settings.mode == "off":
        return []
    total = sum(weights.values())
    if total <= 0:
        return []
    share = {name: w / total for name, w in weights.items()}
    primary = {r.candidate: r for r in assessment.primary}
    candidates = [name for name in weights if name != assessment.control and share[name] > 0]
    chosen: dict[int, list[Decision]] = {RAMP: [], ROLLBACK: [], PROMOTE: []}
    for candidate in candidates:
        result = primary.get(candidate)
        evidence = assessment.evidence(candidate)
        worse_guards = [
            g for g in assessment.guardrails if g.candidate == candidate and g.status == "worse"
        ]
        step = next_ramp_step(share[candidate], settings.ramp)
        code = int(
            action_codes(
                trustworthy=assessment.trustworthy,
                guardrail_worse=bool(worse_guards),
                primary_better=assessment.better(candidate),
                primary_worse=assessment.worse(candidate),
                enough_feedback=any(c.feedbacks >= settings.min_feedback for c in evidence),
                enough_feedback_for_step=step is not None
                and feedbacks >= feedback_for_step(step, settings.min_feedback),
                can_ramp=step is not None,
            )
        )
        if code == NO_ACTION:
            continue
        numbers = _numbers(result, assessment, candidate)
        if code == ROLLBACK:
            if worse_guards:
                reason = "guardrail worse than tolerated: " + ", ".join(
                    f"{g.metric} {_fmt(g.control_value)} -> {_fmt(g.candidate_value)} "
                    f"(tolerated increase {g.limit:g})"
                    for g in worse_guards
                )
            else:
                reason = f"{settings.primary_metric} significantly worse than the control"
            after = 0.0
        elif code == PROMOTE:
            reason = f"{settings.primary_metric} significantly better than the control"
            after = 1.0
        else:
            assert step is not None
            after = settings.ramp[step]
            reason = f"no guardrail worse after {feedbacks} feedbacks: ramp step {step + 1}"
        chosen[code].append(
            Decision(ACTION_NAMES[code], candidate, share[candidate], after, reason, numbers)
        )
    if chosen[PROMOTE]:
        best = min(
            chosen[PROMOTE],
            key=lambda d: min(_holm_of(c) for c in assessment.evidence(d.candidate)),
        )
        return [*chosen[ROLLBACK], best]
    ramps = chosen[RAMP]
    # Candidates' shares after the ramp must leave the control some traffic.
    if (
        sum(d.weight_after for d in ramps)
        + sum(share[c] for c in candidates if c not in {d.candidate for d in ramps})
        >= 1.0
    ):
        ramps = []
    return [*chosen[ROLLBACK], *ramps]


def _holm_of(result: Comparison) -> float:
    return 1.0 if result.p_value_holm is None else result.p_value_holm


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
