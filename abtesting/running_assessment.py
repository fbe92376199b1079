"""The experiment's assessment kept up to date: each look adds what arrived since the last one.

``RunningAssessment`` is fed the experiment's observations in increments (``Increment``, what
the store received since the previous look, each list in arrival order) and gives, at any
moment, the ``Assessment`` that ``abtesting.assessment.assess`` (the reference, pure and
from scratch) gives on everything fed so far, in time proportional to the increment:

* the split comparisons (``stats.sequential_comparison`` per candidate and metric): each arm's
  per-unit (n_k, S_k) and ``stats.ClusterSums``, the running minimum of the always-valid
  p-value, and the per-feedback difference, variance and usability arrays the interval history
  (``Comparison.history``, at most ``MAX_LOOKS`` looks) is drawn from;
* the paired comparisons (``stats.paired_comparison`` per shadowed version and metric);
* the guardrails (``abtesting.running_guardrails``; the latency guardrail's running minimum is
  taken over looks, see there);
* the sample-ratio check's units per revision and variant (``ExperimentStore.assigned_units``,
  a COUNT DISTINCT, kept as a set of units per revision and variant) and what ``srm_cause``
  reads from the requests;
* the report's per-variant numbers (requests, predicted stars, accuracy and MAE from a histogram
  of errors, latency quantiles with their intervals from latencies kept in order) and its
  shadow agreement.

Everything above is exactly what the reference computes (to the last bit where the sums are of
integers, which they are), but the latency guardrail's p-value, and except for the order: the
increments are read in the order the looks took them, which is arrival order except for a row
that became visible late (``abtesting.store.increments``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from abtesting import observations as obs
from abtesting import stats
from abtesting.assessment import (
    MAX_LOOKS,
    Assessment,
    Comparison,
    RequestCounts,
    assemble,
    interval_history,
    paired_result,
    primary_values,
    serving_names,
    split_comparison,
    srm_cause,
    traffic_share,
)
from abtesting.guardrails import GuardrailLimits, GuardrailResult, shadowed
from abtesting.running_guardrails import RunningDisagreement, RunningErrorRate, RunningLatency
from abtesting.running_stats import (
    Growable,
    IntArray,
    RunningComparison,
    RunningPaired,
    SortedSample,
    UnitCodes,
)
from starrating.labels import STARS

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
ERRORS = np.arange(STARS[-1] - STARS[0] + 1)  # |predicted - true| can be 0..4 stars


@dataclass(frozen=True)
class VariantNumbers:
    """A variant's numbers in the report (intervals as ``abtesting.stats`` computes them)."""

    requests: int
    stars: dict[str, int]
    feedback: int
    accuracy: stats.Estimate | None
    mae: stats.Estimate | None
    off_by_one: stats.Estimate | None
    latency_p50_s: stats.Estimate | None
    latency_p95_s: stats.Estimate | None


@dataclass(frozen=True)
class ShadowNumbers:
    """A shadowed version's copies in the report."""

    version: str
    copies: int
    errors: int
    agreement: stats.Estimate | None


class _SplitTrack:
    """One split comparison (candidate vs control on one metric) after every feedback."""

    def __init__(self, metric: stats.Metric) -> None:
        self.test = RunningComparison(stats.MIXTURE_SD[metric], binary=metric == "accuracy")
        self.difference = Growable(np.float64)
        self.variance = Growable(np.float64)
        self.usable = Growable(np.bool_)
        self.control = 0
        self.candidate = 0


class _VariantTally:
    """A variant's running report numbers."""

    def __init__(self) -> None:
        self.requests = 0
        self.stars = np.zeros(STARS[-1] + 1, dtype=np.int64)
        self.errors = np.zeros(ERRORS.size, dtype=np.int64)
        self.latencies = SortedSample()

    def numbers(self) -> VariantNumbers:
        n = int(self.errors.sum())
        within = int(self.errors[:2].sum())
        latencies = self.latencies

        def quantile(q: float) -> stats.Estimate | None:
            return latencies.interval(q) if len(latencies) else None

        return VariantNumbers(
            requests=self.requests,
            stars={str(s): int(self.stars[s]) for s in STARS},
            feedback=n,
            accuracy=stats.wilson_interval(int(self.errors[0]), n) if n else None,
            mae=stats.counts_mean_interval(ERRORS, self.errors) if n else None,
            off_by_one=stats.wilson_interval(within, n) if n else None,
            latency_p50_s=quantile(0.5),
            latency_p95_s=quantile(0.95),
        )


class RunningAssessment:
    """The assessment of one experiment setup (control, candidates, guardrail limits): a
    change of those starts a new one. Not thread-safe: one look at a time."""

    def __init__(
        self, control: str, candidates: Sequence[str], limits: GuardrailLimits = GuardrailLimits()
    ) -> None:
        self.control, self.candidates, self.limits = control, tuple(candidates), limits
        self.units = UnitCodes()
        # Feedback: the split comparisons and when each feedback was stored.
        self.feedbacks = 0
        self._at = Growable(np.int64)  # microseconds since the epoch, UTC
        self._split = {(m, c): _SplitTrack(m) for m in stats.METRICS for c in self.candidates}
        # Paired comparisons of each shadowed version (its pairs on the control's answers).
        self._paired: dict[tuple[str, stats.Metric], RunningPaired] = {}
        self._paired_versions: set[str] = set()
        # Guardrails.
        self._errors = {c: RunningErrorRate(control, c, limits.error_rate) for c in candidates}
        self._latency = RunningLatency(control, self.candidates, limits.latency_p95_ms)
        self._disagreement: dict[str, RunningDisagreement] = {}
        self._shadowed: set[str] = set()
        # The sample-ratio check and its likely cause.
        self._assigned: dict[tuple[int, str], np.ndarray[tuple[int], np.dtype[np.bool_]]] = {}
        self._units_assigned: Counter[tuple[int, str]] = Counter()
        self._per_unit: dict[str, np.ndarray[tuple[int], np.dtype[np.int64]]] = {}
        self._total: Counter[str] = Counter()
        self._failed: Counter[str] = Counter()
        # The report's numbers.
        self._variants: dict[str, _VariantTally] = {}
        self._copies: dict[str, Counter[str]] = {}

    # -- adding what arrived ---------------------------------------------------------------

    def add(self, new: obs.Increment) -> None:
        """Add what arrived since the last increment (each part may be empty)."""
        self._add_requests(new.requests)
        self._add_feedback(new.feedback)
        self._add_shadows(new.shadows)
        self._add_paired(new.paired)
        self._add_predictions(new.predictions)
        self._add_copies(new.copies)

    def _add_requests(self, requests: Sequence[obs.RequestObs]) -> None:
        if not requests:
            return
        variants = np.array([r.variant for r in requests], dtype=object)
        units = self.units.codes(r.unit for r in requests)
        failed = np.array([r.failed for r in requests], dtype=np.float64)
        latency = np.array(
            [np.nan if r.latency_ms is None else r.latency_ms for r in requests], np.float64
        )
        for errors in self._errors.values():
            errors.add(variants, failed, units)
        self._latency.add(variants, latency, units)
        span = len(self.units)
        revisions = np.array([-1 if r.revision is None else r.revision for r in requests])
        for revision, variant in sorted(
            {(int(r), str(v)) for r, v in zip(revisions, variants, strict=True)}
        ):
            mine = units[(revisions == revision) & (variants == variant)]
            self._per_unit[variant] = _count_into(self._per_unit.get(variant), mine, span)
            if revision < 0:
                continue  # not assigned by the split's weights
            seen = _grow(self._assigned.get((revision, variant)), span)
            self._units_assigned[revision, variant] += int(np.unique(mine[~seen[mine]]).size)
            seen[mine] = True
            self._assigned[revision, variant] = seen
        self._total.update(r.variant for r in requests)
        self._failed.update(r.variant for r in requests if r.failed)

    def _add_feedback(self, feedback: Sequence[obs.FeedbackObs]) -> None:
        if not feedback:
            return
        variants = np.array([f.variant for f in feedback], dtype=object)
        units = self.units.codes(f.unit for f in feedback)
        true = np.array([f.true_stars for f in feedback], dtype=np.int64)
        predicted = np.array([f.predicted_stars for f in feedback], dtype=np.int64)
        self._at.extend([(f.at - EPOCH) // MICROSECOND for f in feedback])
        values = {m: primary_values(m, true, predicted) for m in stats.METRICS}
        is_control = variants == self.control
        for (metric, candidate), track in self._split.items():
            is_candidate = variants == candidate
            test = track.test.extend(is_candidate, values[metric], units, is_control | is_candidate)
            track.difference.extend(test.difference)
            track.variance.extend(test.variance)
            track.usable.extend(test.usable)
            track.control += int(is_control.sum())
            track.candidate += int(is_candidate.sum())
        self.feedbacks += len(feedback)
        errors = np.abs(true - predicted)
        for variant in set(variants):
            tally = self._tally(variant)
            tally.errors += np.bincount(errors[variants == variant], minlength=ERRORS.size)

    def _add_shadows(self, shadows: Sequence[obs.ShadowObs]) -> None:
        self._shadowed.update(s.version for s in shadows)
        answered = [s for s in shadows if s.disagree is not None]
        for version in sorted({s.version for s in answered}):
            mine = [s for s in answered if s.version == version]
            running = self._disagreement.get(version)
            if running is None:
                running = self._disagreement[version] = RunningDisagreement(
                    self.limits.disagreement_rate
                )
            disagree = np.array([bool(s.disagree) for s in mine], dtype=np.float64)
            running.add(disagree, self.units.codes(s.unit for s in mine))

    def _add_paired(self, paired: Sequence[obs.PairedObs]) -> None:
        self._paired_versions.update(p.shadow_version for p in paired)
        on_control = [p for p in paired if p.live_variant == self.control]
        for version in sorted({p.shadow_version for p in on_control}):
            rows = [p for p in on_control if p.shadow_version == version]
            truth = np.array([p.true_stars for p in rows], dtype=np.int64)
            units = self.units.codes(p.unit for p in rows)
            for metric in stats.METRICS:
                difference = primary_values(
                    metric, truth, [p.shadow_stars for p in rows]
                ) - primary_values(metric, truth, [p.live_stars for p in rows])
                running = self._paired.get((version, metric))
                if running is None:
                    running = self._paired[version, metric] = RunningPaired(
                        stats.MIXTURE_SD[metric], binary=metric == "accuracy"
                    )
                running.extend(difference, units)

    def _add_predictions(self, predictions: Sequence[obs.PredictionObs]) -> None:
        for variant in {p.variant for p in predictions}:
            mine = [p for p in predictions if p.variant == variant]
            tally = self._tally(variant)
            tally.requests += len(mine)
            stars = [s for p in mine for s in p.stars]
            tally.stars += np.bincount(stars, minlength=tally.stars.size)[: tally.stars.size]
            tally.latencies.insert([p.latency_s for p in mine])

    def _add_copies(self, copies: Sequence[obs.ShadowCopyObs]) -> None:
        for c in copies:
            counts = self._copies.setdefault(c.version, Counter())
            counts.update(copies=1, errors=int(c.failed), items=c.items, agreeing=c.agreeing)

    def _tally(self, variant: str) -> _VariantTally:
        tally = self._variants.get(variant)
        if tally is None:
            tally = self._variants[variant] = _VariantTally()
        return tally

    # -- reading it --------------------------------------------------------------------------

    def assigned_units(self) -> dict[int, dict[str, int]]:
        """``ExperimentStore.assigned_units`` of what was added."""
        assigned: dict[int, dict[str, int]] = {}
        for (revision, variant), n in sorted(self._units_assigned.items()):
            assigned.setdefault(revision, {})[variant] = n
        return assigned

    def request_counts(self) -> RequestCounts:
        """What ``srm_cause`` reads from the requests added."""
        return RequestCounts(dict(self._total), dict(self._failed), dict(self._per_unit))

    def assessment(
        self,
        srm: stats.SampleRatioCheck,
        *,
        primary_metric: stats.Metric = "accuracy",
        shadow_versions: Mapping[str, str] | None = None,
        weights: Mapping[str, float] | None = None,
        alpha: float = stats.ALPHA,
        max_looks: int = MAX_LOOKS,
    ) -> Assessment:
        """``assess`` of everything added, its arguments as there."""
        cause = srm_cause(srm.expected, self.request_counts()) if srm.mismatch else None
        share = traffic_share(self.control, self.candidates, weights)
        serving = serving_names(self.candidates, shadow_versions)
        split = {
            metric: [
                self._split_comparison(metric, c, share[c], alpha, max_looks)
                for c in self.candidates
            ]
            for metric in stats.METRICS
        }
        paired = {
            metric: [
                self._paired_comparison(metric, v, serving.get(v, v), alpha)
                for v in sorted(self._paired_versions)
            ]
            for metric in stats.METRICS
        }
        guardrails: list[GuardrailResult] = []
        for candidate in self.candidates:
            guardrails.append(self._errors[candidate].result(alpha))
            guardrails.append(self._latency.result(candidate, alpha))
        for name, version in shadowed(self.control, self._shadowed, shadow_versions or {}):
            running = self._disagreement.get(version)
            running = running or RunningDisagreement(self.limits.disagreement_rate)
            guardrails.append(running.result(name, alpha))
        return assemble(self.control, srm, cause, split, paired, guardrails, primary_metric, alpha)

    def _split_comparison(
        self, metric: stats.Metric, candidate: str, share: float, alpha: float, max_looks: int
    ) -> Comparison:
        track = self._split[metric, candidate]
        feedbacks = track.control + track.candidate
        if not (track.control and track.candidate):
            return split_comparison(metric, candidate, feedbacks, None, (), share, alpha)
        at = self._at.view

        def when(t: int) -> datetime:
            return EPOCH + int(at[t]) * MICROSECOND

        history = interval_history(
            metric,
            track.difference.view.astype(np.float64, copy=False),
            track.variance.view.astype(np.float64, copy=False),
            track.usable.view.astype(np.bool_, copy=False),
            when,
            alpha,
            max_looks,
        )
        return split_comparison(
            metric, candidate, feedbacks, track.test.look(), history, share, alpha
        )

    def _paired_comparison(
        self, metric: stats.Metric, version: str, name: str, alpha: float
    ) -> Comparison:
        running = self._paired.get((version, metric))
        if running is None or not running.count:
            return paired_result(metric, version, name, 0, None, alpha)
        return paired_result(metric, version, name, running.count, running.look(), alpha)

    def variant_numbers(self, variant: str) -> VariantNumbers:
        """The report's numbers of ``variant`` (a variant without requests: zeros)."""
        return self._variants.get(variant, _VariantTally()).numbers()

    def shadow_numbers(self) -> list[ShadowNumbers]:
        """The report's shadow section, by version."""
        return [
            ShadowNumbers(
                version,
                c["copies"],
                c["errors"],
                stats.wilson_interval(c["agreeing"], c["items"]) if c["items"] else None,
            )
            for version, c in sorted(self._copies.items())
        ]


def _grow(
    array: np.ndarray[tuple[int], np.dtype[np.bool_]] | None, size: int
) -> np.ndarray[tuple[int], np.dtype[np.bool_]]:
    if array is None:
        return np.zeros(size, dtype=bool)
    if array.size >= size:
        return array
    return np.concatenate([array, np.zeros(max(size, 2 * array.size) - array.size, bool)])


def _count_into(
    counts: np.ndarray[tuple[int], np.dtype[np.int64]] | None, units: IntArray, size: int
) -> np.ndarray[tuple[int], np.dtype[np.int64]]:
    grown = np.zeros(size, dtype=np.int64) if counts is None else counts
    if grown.size < size:
        grown = np.concatenate([grown, np.zeros(max(size, 2 * grown.size) - grown.size, np.int64)])
    np.add.at(grown, units, 1)
    return grown
