"""The guardrails of ``abtesting.guardrails``, kept up to date request batch by request batch.

* **Error rate** and **shadow disagreement** are exactly ``guardrails.error_rate`` and
  ``guardrails.disagreement_rate`` of the whole sequence: their per-request indicators never
  change once seen, so the running sums and the running minimum of the p-value over every
  request go on from batch to batch (``running_stats``).
* **Latency p95** compares 1{candidate latency > q + limit} with 1{control latency > q}, q the
  control's p95, which the reference re-estimates at each assessment: a new q changes the
  indicator of past requests. Here the latencies stay sorted per arm (``ExceedanceArm``), so a
  look moves the cutoff and updates only the requests between the old and the new one, and the
  sums at the last request are exactly the reference's. The running minimum of the p-value,
  though, is taken over the *looks* (assessments, the autopilot's and the report's alike), each
  at the q of its look, where the reference takes it over every request at the last q (which it
  can only do by recomputing the whole history). That minimum is still always valid: at each
  look the statistic is the mSPRT's at a stopping time of the request sequence, with the
  threshold plugged in as the reference plugs it in (its premise: q is taken as known), and
  the minimum over a subset of stopping times is never below the minimum over all of them, so
  its chance of ever falling below alpha under the null is at most what the reference's is.
  ``tests/abtesting/test_running_assessment.py`` checks it equals the minimum, over the looks,
  of the reference's p-value at each look's last request.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from abtesting import stats
from abtesting.guardrails import (
    GUARDRAIL_MIXTURE_SD,
    LATENCY_QUANTILE,
    GuardrailResult,
    disagreement_p_values,
    disagreement_result,
    error_rate_result,
    latency_result,
    no_data,
)
from abtesting.running_stats import (
    ExceedanceArm,
    IntArray,
    RunningClusterMoments,
    RunningComparison,
)
from abtesting.stats import FloatArray

ObjectArray = npt.NDArray[np.object_]


class RunningErrorRate:
    """``guardrails.error_rate`` of one candidate."""

    def __init__(self, control: str, candidate: str, limit: float) -> None:
        self.control, self.candidate, self.limit = control, candidate, limit
        self.test = RunningComparison(GUARDRAIL_MIXTURE_SD["error_rate"], null=limit, binary=True)
        self.requests = 0

    def add(self, variants: ObjectArray, failed: FloatArray, units: IntArray) -> None:
        is_candidate = variants == self.candidate
        pair = is_candidate | (variants == self.control)
        if pair.any():
            self.test.extend(is_candidate, failed, units, pair)
            self.requests += int(pair.sum())

    def result(self, alpha: float = stats.ALPHA) -> GuardrailResult:
        if not self.requests:
            return no_data(self.candidate, "error_rate", self.limit)
        # Clusters only grow, so "usable now" is "ever usable", what the reference asks.
        return error_rate_result(self.candidate, self.limit, self.test.look(), alpha)


class RunningLatency:
    """``guardrails.latency_p95`` of every candidate: one control arm, one arm per candidate."""

    def __init__(self, control: str, candidates: Sequence[str], limit_ms: float) -> None:
        self.control, self.limit_ms = control, limit_ms
        self.control_arm = ExceedanceArm()
        self.arms = {c: ExceedanceArm() for c in candidates}
        mixture_sd = GUARDRAIL_MIXTURE_SD["latency_p95_ms"]
        self.tests = {
            c: RunningComparison(
                mixture_sd, binary=True, control=self.control_arm.moments, candidate=arm.moments
            )
            for c, arm in self.arms.items()
        }

    def add(self, variants: ObjectArray, latency_ms: FloatArray, units: IntArray) -> None:
        """A batch of requests; ``latency_ms`` NaN where one failed."""
        answered = ~np.isnan(latency_ms)
        for name, arm in [(self.control, self.control_arm), *self.arms.items()]:
            mine = answered & (variants == name)
            if mine.any():
                arm.insert(latency_ms[mine], units[mine])
        if not len(self.control_arm.latencies):
            return
        threshold = self.control_arm.latencies.quantile(LATENCY_QUANTILE)
        self.control_arm.move(threshold)
        for arm in self.arms.values():
            arm.move(threshold + self.limit_ms)

    def result(self, candidate: str, alpha: float = stats.ALPHA) -> GuardrailResult:
        """The guardrail at this look (which joins the running minimum of its p-value)."""
        arm = self.arms[candidate]
        if not len(self.control_arm.latencies) or not len(arm.latencies):
            return no_data(candidate, "latency_p95_ms", self.limit_ms)
        threshold = self.control_arm.latencies.quantile(LATENCY_QUANTILE)
        candidate_p95 = arm.latencies.quantile(LATENCY_QUANTILE)
        test = self.tests[candidate].look()
        return latency_result(candidate, self.limit_ms, threshold, candidate_p95, test, alpha)


class RunningDisagreement:
    """``guardrails.disagreement_rate`` of one shadowed version."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.moments = RunningClusterMoments()
        self.p_min = 1.0

    def add(self, disagree: FloatArray, units: IntArray) -> None:
        """Answered copies: 1 where the shadow's answer differs from the live one."""
        sums = self.moments.extend(disagree, units)
        if sums.count.size:
            p_value = disagreement_p_values(sums.moments(), self.limit, start=self.p_min)
            self.p_min = float(p_value[-1])

    def result(self, name: str, alpha: float = stats.ALPHA) -> GuardrailResult:
        moments = self.moments.moments() if self.moments.sums.count[-1] else None
        return disagreement_result(name, self.limit, moments, self.p_min, alpha)
