"""The experiment's one assessment, kept current: what the autopilot decides on and the report
shows, read at the same moment from the same state, so the two cannot disagree.

``LiveAssessment`` (one per gateway process, owned by ``abtesting.service.ABTesting``) holds the
running state of the experiment in force (``running_assessment.RunningAssessment``) and its
cursors in the store (``store.increments``). Each ``read`` takes what arrived since the previous
one, adds it, and assesses: a look costs what arrived, not the history. A change of the
experiment's control, candidates, guardrail limits or paired evaluation starts the state afresh
(one full read); a ramp (new weights) does not. A look that fails part-way drops the state, so
the next one starts afresh rather than from cursors that moved past rows it never added.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from abtesting import stats
from abtesting.assessment import Assessment, GuardrailLimits
from abtesting.experiment import OVERRIDE_VARIANT, ExperimentConfig
from abtesting.running_assessment import RunningAssessment, ShadowNumbers, VariantNumbers
from abtesting.store import ExperimentStore
from abtesting.store.increments import Cursors

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExperimentSettings:
    """What an experiment is assessed with, from its config."""

    name: str
    control: str
    candidates: tuple[str, ...]
    primary_metric: stats.Metric
    limits: GuardrailLimits
    versions: Mapping[str, str]
    """Each variant's model version (a shadowed version counts for its variant)."""
    weights: Mapping[str, float]
    paired: bool
    """Feedback grades the shadow's answers too (paired comparisons)."""

    @classmethod
    def of(cls, config: ExperimentConfig) -> ExperimentSettings:
        settings = config.autopilot.settings()
        return cls(
            name=config.name,
            control=config.control.name,
            candidates=tuple(v.name for v in config.variants[1:]),
            primary_metric=settings.primary_metric,
            limits=settings.limits,
            versions={v.name: v.version for v in config.variants},
            weights={v.name: v.weight for v in config.variants},
            paired=config.shadow is not None and config.shadow.paired,
        )

    def running_key(self) -> tuple[object, ...]:
        """What the running state depends on: a change starts it afresh."""
        return (self.name, self.control, self.candidates, self.limits, self.paired)


def traffic_shares(config: ExperimentConfig) -> dict[str, float]:
    total = sum(v.weight for v in config.variants)
    return {v.name: v.weight / total for v in config.variants}


def split_check(
    assigned: Mapping[int, Mapping[str, int]], weights: Mapping[int, Mapping[str, float]]
) -> stats.SampleRatioCheck:
    """The experiment's sample-ratio check: units per variant against the weights of the
    revisions they were assigned under. Forced versions were not drawn from the weights: they
    are counted apart, not here."""
    drawn = {
        revision: {v: n for v, n in counts.items() if v != OVERRIDE_VARIANT}
        for revision, counts in assigned.items()
    }
    return stats.assignment_check(drawn, weights)


@dataclass(frozen=True)
class Reading:
    """One look at the experiment."""

    assessment: Assessment
    feedbacks: int
    """All feedbacks of the experiment so far (the policy's ramp counts from the total)."""
    shares: dict[str, float]
    """The traffic share of each variant in the revision in force."""
    version: int
    """Changes whenever the state took something new (or started afresh)."""
    variants: dict[str, VariantNumbers] = field(default_factory=dict)
    """The report's per-variant numbers, forced versions under ``OVERRIDE_VARIANT`` (only
    when asked for)."""
    shadows: list[ShadowNumbers] = field(default_factory=list)


class LiveAssessment:
    """The running assessment of the experiment in force, read by the autopilot and the report.

    ``read`` blocks (database and numpy): call it on a worker thread. Reads are serialised by a
    lock, so a report and an autopilot look never see the state half-updated."""

    def __init__(self, store: ExperimentStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._state: RunningAssessment | None = None
        self._key: tuple[object, ...] | None = None
        self._cursors = Cursors()
        self._version = 0
        self._cached: tuple[tuple[int, str], Reading] | None = None

    def read(self, config: ExperimentConfig, *, numbers: bool = False) -> Reading:
        """Take what arrived since the last read, and assess (``numbers``: with the report's
        per-variant and shadow numbers)."""
        settings = ExperimentSettings.of(config)
        with self._lock:
            state = self._take(settings)
            key = (self._version, config.model_dump_json())
            if self._cached is None or self._cached[0] != key:
                srm = split_check(
                    state.assigned_units(), self.store.experiment_weights(config.name)
                )
                assessment = state.assessment(
                    srm,
                    primary_metric=settings.primary_metric,
                    shadow_versions=settings.versions,
                    weights=settings.weights,
                )
                reading = Reading(
                    assessment, state.feedbacks, traffic_shares(config), self._version
                )
                self._cached = (key, reading)
            reading = self._cached[1]
            if not numbers:
                return reading
            names = [v.name for v in config.variants] + [OVERRIDE_VARIANT]
            return Reading(
                reading.assessment,
                reading.feedbacks,
                reading.shares,
                reading.version,
                {name: state.variant_numbers(name) for name in names},
                state.shadow_numbers(),
            )

    def _take(self, settings: ExperimentSettings) -> RunningAssessment:
        """The running state of the experiment, with what arrived since the last read."""
        if self._state is None or self._key != settings.running_key():
            if self._state is not None:
                logger.info("the experiment changed: its assessment starts afresh")
            self._state = RunningAssessment(settings.control, settings.candidates, settings.limits)
            self._key = settings.running_key()
            self._cursors = Cursors()
            self._version += 1
        state = self._state
        try:
            new = self.store.increment(settings.name, self._cursors, paired=settings.paired)
            if new:
                state.add(new)
                self._version += 1
        except BaseException:
            self._state = None  # its cursors may have moved past rows it never added
            raise
        return state
