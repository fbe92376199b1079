"""The running assessment equals the reference (``assess`` of everything, read afresh), however the
traffic is cut into looks; the store's cursors take each row once, late ones too."""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from dataclasses import dataclass, field, fields, is_dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, select

from abtesting import stats
from abtesting.assessment import Assessment
from abtesting.autopilot import assess_experiment, observe
from abtesting.experiment import OVERRIDE_VARIANT, ExperimentConfig
from abtesting.guardrails import (
    GUARDRAIL_MIXTURE_SD,
    STATUS_NAMES,
    latency_test,
    status_codes,
)
from abtesting.live_assessment import LiveAssessment
from abtesting.observations import RequestObs
from abtesting.report import build_report
from abtesting.running_stats import ExceedanceArm, RunningComparison, UnitCodes
from abtesting.store import ExperimentStore, FailureRecord, PredictionRecord
from abtesting.store.increments import GAP_GRACE_S, Cursors, IdCursor
from abtesting.store.tables import (
    Base,
    FailedPredictionRow,
    FeedbackRow,
    ShadowPredictionRow,
)
from tests.abtesting.test_store import database_url, postgres_url  # noqa: F401 - fixtures

NAME = "running"
T0 = datetime(2026, 12, 1, tzinfo=UTC)
ACCURACY = {"A": 0.6, "B": 0.7, "C": 0.55}
FAILURES = {"A": 0.02, "B": 0.03, "C": 0.12}
LATENCY_MS = {"A": 20.0, "B": 24.0, "C": 60.0}


def _config(weights: dict[str, float], shadow: str) -> ExperimentConfig:
    versions = {"A": "1.0", "B": "2.0", "C": "3.0"}
    return ExperimentConfig.model_validate(
        {
            "name": NAME,
            "variants": [
                {"name": v, "version": versions[v], "weight": w} for v, w in weights.items()
            ],
            "shadow": {"version": shadow, "sample": 0.3},
            "autopilot": {"mode": "off", "guardrails": {"latency_p95_ms": 30}},
        }
    )


@dataclass
class Traffic:
    """Random traffic written to a store in batches, as the gateway writes it."""

    store: ExperimentStore
    rng: np.random.Generator
    shadow: str
    broken: bool  # the candidate C loses most of its users: a sample-ratio mismatch
    config: ExperimentConfig = field(init=False)
    revision: int = field(init=False)
    clock_ms: int = 0
    requests: int = 0
    unrated: list[tuple[str, int, int, str]] = field(
        default_factory=list
    )  # id, item, stars, variant

    def __post_init__(self) -> None:
        self.set_weights({"A": 0.5, "B": 0.3, "C": 0.2})

    def set_weights(self, weights: dict[str, float]) -> None:
        self.config = _config(weights, self.shadow)
        self.revision = self.store.save_experiment(NAME, self.config.model_dump(mode="json"))

    def _variant(self, user: str | None) -> str:
        weights = {v.name: v.weight for v in self.config.variants}
        point = self.rng.random() if user is None else int(user[1:]) * 0.6180339887 % 1.0
        edges = np.cumsum(list(weights.values())) / sum(weights.values())
        return list(weights)[int(np.searchsorted(edges, point, side="right"))]

    def batch(self, size: int) -> None:
        predictions, failures = [], []
        for _ in range(size):
            self.requests += 1
            rid = f"r{self.requests}"
            user = None if self.rng.random() < 0.1 else f"u{self.rng.integers(150)}"
            if self.rng.random() >= 0.2:  # sometimes two requests stored at the same time
                self.clock_ms += 1
            at = T0 + timedelta(milliseconds=self.clock_ms)
            if self.rng.random() < 0.03:  # a forced version: no revision, counted apart
                variant, revision = OVERRIDE_VARIANT, None
            else:
                variant, revision = self._variant(user), self.revision
                if self.broken and variant == "C" and (user is None or int(user[1:]) % 4):
                    continue  # most of its users' requests are never recorded
            version = {"A": "1.0", "B": "2.0", "C": "3.0"}.get(variant, "9.9")
            if variant in FAILURES and self.rng.random() < FAILURES[variant]:
                failures.append(
                    FailureRecord(rid, NAME, revision, variant, version, user, "boom", 0.5, at)
                )
                continue
            stars = tuple(int(s) for s in self.rng.integers(1, 6, self.rng.integers(1, 4)))
            latency = LATENCY_MS.get(variant, 20.0) * self.rng.lognormal(0, 0.3) / 1000
            probabilities = tuple({str(s): 1.0} for s in stars)
            predictions.append(
                PredictionRecord(
                    rid, NAME, revision, variant, version, user, stars, probabilities, latency, at
                )
            )
            self.unrated += [(rid, item, s, variant) for item, s in enumerate(stars)]
        if predictions:
            self.store.add_predictions(predictions)
        self.store.add_failures(failures)
        copies = [  # shadow copies, stored before any feedback on them
            {
                "request_id": p.request_id, "version": self.shadow, "latency_s": 0.02,
                "stars": None if failed else [
                    s if self.rng.random() < 0.8 else int(self.rng.integers(1, 6))
                    for s in p.stars
                ],
                "error": "timeout" if failed else None, "created_at": p.created_at,
            }
            for p in predictions
            if self.rng.random() < 0.3
            for failed in [bool(self.rng.random() < 0.1)]
        ]  # fmt: skip
        _bulk(self.store, ShadowPredictionRow, copies)
        self.feedback(int(self.rng.integers(0, len(self.unrated) + 1) * 0.6))

    def feedback(self, n: int) -> None:
        order = self.rng.permutation(len(self.unrated))
        chosen = [self.unrated[i] for i in order[:n]]
        self.unrated = [self.unrated[i] for i in order[n:]]
        rows = []
        for rid, item, predicted, variant in chosen:
            right = self.rng.random() < ACCURACY.get(variant, 0.6)
            wrong = [s for s in range(1, 6) if s != predicted]
            stars = predicted if right else int(self.rng.choice(wrong))
            self.clock_ms += 1
            at = T0 + timedelta(milliseconds=self.clock_ms)
            rows.append({"request_id": rid, "item": item, "stars": stars, "created_at": at})
        _bulk(self.store, FeedbackRow, rows)


def _bulk(store: ExperimentStore, table: type[Base], rows: list[dict[str, Any]]) -> None:
    """Rows written in one transaction, in order (the ids grow with it)."""
    if rows:
        with store.engine.begin() as connection:
            connection.execute(insert(table), rows)


def _latency_p_now(control: str, candidate: str, requests: list[RequestObs]) -> float | None:
    """The reference latency test's p-value at the last request (not its running minimum)."""
    tested = latency_test(control, candidate, requests, 30.0)
    if tested is None:
        return None
    *_, test = tested
    sd = GUARDRAIL_MIXTURE_SD["latency_p95_ms"]
    return float(
        stats.always_valid_p_values(test.difference[-1], test.variance[-1], sd, test.usable[-1])
    )


def _assert_same(got: Any, want: Any, path: str = "") -> None:
    """Equal field by field, floats within 1e-9."""
    if is_dataclass(got) and not isinstance(got, type):
        assert type(got) is type(want), path
        for f in fields(got):
            _assert_same(getattr(got, f.name), getattr(want, f.name), f"{path}.{f.name}")
    elif isinstance(got, (list, tuple)):
        assert len(got) == len(want), f"{path}: {len(got)} != {len(want)}"
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            _assert_same(a, b, f"{path}[{i}]")
    elif isinstance(got, dict):
        assert got.keys() == want.keys(), path
        for k in got:
            _assert_same(got[k], want[k], f"{path}[{k!r}]")
    elif isinstance(got, float) and isinstance(want, float):
        assert (math.isnan(got) and math.isnan(want)) or math.isclose(
            got, want, rel_tol=1e-9, abs_tol=1e-9
        ), f"{path}: {got} != {want}"
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"


def _compare(
    got: Assessment, want: Assessment, latency_p: dict[str, float], requests: list[RequestObs]
) -> None:
    """``got`` (running) equals ``want`` (reference) but for the latency guardrails' p-values,
    whose running minimum runs over looks: those equal ``latency_p``, the minimum over the looks
    of the reference's p-value at each look's last request (and the status follows from it and
    the difference of exceedance rates at the last request, ``requests`` all of them)."""
    expected = []
    for g, w in zip(got.guardrails, want.guardrails, strict=True):
        if w.metric == "latency_p95_ms" and w.p_value is not None:
            p = latency_p[w.candidate]
            assert g.p_value is not None and math.isclose(g.p_value, p, rel_tol=1e-9, abs_tol=1e-12)
            tested = latency_test(want.control, w.candidate, requests, w.limit)
            assert tested is not None
            excess = float(tested[2].difference[-1])
            w = replace(w, p_value=g.p_value, status=STATUS_NAMES[int(status_codes(p, excess))])
        expected.append(w)
    statuses_agree = [g.status for g in want.guardrails] == [w.status for w in expected]
    want = replace(want, guardrails=expected)
    if not statuses_agree:  # the verdict names worse guardrails: it follows the statuses
        got = replace(got, verdict=want.verdict)
    _assert_same(got, want, "assessment")


def _run(store: ExperimentStore, seed: int, looks: int) -> tuple[LiveAssessment, Traffic]:
    """``looks`` looks at random traffic, batches of it between them; the last equals the
    reference."""
    rng = np.random.default_rng(seed)
    traffic = Traffic(store, rng, shadow="2.0" if seed % 2 else "4.0", broken=seed % 3 == 0)
    live = LiveAssessment(store)
    latency_p: dict[str, float] = {}
    for look in range(looks):
        for _ in range(int(rng.integers(1, 4))):
            traffic.batch(int(rng.integers(0, 120)))
        if look == looks // 2:
            traffic.set_weights({"A": 0.4, "B": 0.4, "C": 0.2})  # a ramp: a new revision
        reading = live.read(traffic.config)
        requests = store.request_observations(NAME)
        for candidate in ("B", "C"):
            p = _latency_p_now("A", candidate, requests)
            if p is not None:
                latency_p[candidate] = min(latency_p.get(candidate, 1.0), p)
    want = assess_experiment(traffic.config, observe(store, traffic.config))
    _compare(reading.assessment, want, latency_p, store.request_observations(NAME))
    assert reading.feedbacks == len(store.feedback_observations(NAME))
    return live, traffic


def _interval(e: stats.Estimate | None, scale: float = 1.0) -> dict[str, Any] | None:
    if e is None:
        return None
    return {
        "value": e.value * scale,
        "low": None if e.low is None else e.low * scale,
        "high": None if e.high is None else e.high * scale,
    }


def _variants_as_before(store: ExperimentStore, report: Any) -> list[dict[str, Any]]:
    """The report's per-variant numbers as it computed them before, from every prediction."""
    latencies: dict[str, list[float]] = {}
    stars: dict[str, Counter[int]] = {}
    for variant, _, s, latency in store.predictions(NAME):
        latencies.setdefault(variant, []).append(latency)
        stars.setdefault(variant, Counter()).update(s)
    feedback = store.feedback_observations(NAME)
    out = []
    for v in report.variants:
        errors = np.array(
            [abs(f.predicted_stars - f.true_stars) for f in feedback if f.variant == v.name],
            np.float64,
        )
        n, lat = errors.size, latencies.get(v.name, [])

        def wilson(hits: int, n: int = n) -> dict[str, Any] | None:
            return _interval(stats.wilson_interval(hits, n)) if n else None

        def quantile(q: float, lat: list[float] = lat) -> dict[str, Any] | None:
            return _interval(stats.quantile_interval(lat, q), 1000.0) if lat else None

        out.append(
            {
                "name": v.name, "version": v.version, "weight": v.weight, "requests": len(lat),
                "units": v.units, "feedback": n, "accuracy": wilson(int((errors == 0).sum())),
                "mae": _interval(stats.mean_interval(errors)) if n else None,
                "off_by_one": wilson(int((errors <= 1).sum())),
                "latency_p50_ms": quantile(0.5), "latency_p95_ms": quantile(0.95),
                "stars": {str(s): stars.get(v.name, Counter()).get(s, 0) for s in range(1, 6)},
            }
        )  # fmt: skip
    return out


def _shadows_as_before(store: ExperimentStore) -> list[dict[str, Any]]:
    by_version: dict[str, list[tuple[tuple[int, ...], tuple[int, ...] | None]]] = {}
    for pair in store.shadow_pairs(NAME):
        by_version.setdefault(pair.shadow_version, []).append((pair.live_stars, pair.shadow_stars))
    out = []
    for version, pairs in sorted(by_version.items()):
        answered = [(live, shadow) for live, shadow in pairs if shadow is not None]
        items = sum(len(live) for live, _ in answered)
        agree = sum(a == b for live, shadow in answered for a, b in zip(live, shadow, strict=True))
        agreement = _interval(stats.wilson_interval(agree, items)) if items else None
        out.append(
            {
                "version": version,
                "copies": len(pairs),
                "errors": len(pairs) - len(answered),
                "agreement": agreement,
            }
        )
    return out


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), looks=st.integers(2, 9))
def test_the_running_assessment_equals_the_reference_however_the_looks_fall(
    seed: int, looks: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = ExperimentStore(f"sqlite:///{Path(tmp) / 'ab.db'}")
        try:
            _run(store, seed, looks)
        finally:
            store.close()


def test_the_running_assessment_equals_the_reference_on_each_database(
    database_url: str,  # noqa: F811
) -> None:
    store = ExperimentStore(database_url)
    try:
        _run(store, seed=7, looks=6)
    finally:
        store.close()


def test_the_report_shows_the_running_assessment_and_the_numbers_it_showed_before(
    tmp_path: Path,
) -> None:
    """The report reads the autopilot's assessment, and its per-variant numbers (from running
    state) are what it computed before from every prediction."""
    store = ExperimentStore(f"sqlite:///{tmp_path / 'ab.db'}")
    live, traffic = _run(store, seed=5, looks=4)
    reading = live.read(traffic.config)
    report = build_report(store, traffic.config, traffic.revision, assessment=live)
    assert report.verdict == reading.assessment.verdict
    assert report.guardrails[1].p_value == reading.assessment.guardrails[1].p_value
    _assert_same([v.model_dump() for v in report.variants], _variants_as_before(store, report))
    _assert_same([s.model_dump() for s in report.shadow], _shadows_as_before(store))
    overrides = sum(1 for v, *_ in store.predictions(NAME) if v == OVERRIDE_VARIANT)
    assert report.override_requests == overrides > 0
    store.close()


def test_a_change_of_candidates_starts_afresh_and_a_ramp_does_not(tmp_path: Path) -> None:
    store = ExperimentStore(f"sqlite:///{tmp_path / 'ab.db'}")
    traffic = Traffic(store, np.random.default_rng(3), shadow="4.0", broken=False)
    live = LiveAssessment(store)
    traffic.batch(200)
    first = live.read(traffic.config)
    assert live.read(traffic.config) is first  # nothing new: the same reading
    traffic.set_weights({"A": 0.3, "B": 0.5, "C": 0.2})
    ramped = live.read(traffic.config)
    assert ramped.version == first.version and ramped.shares["B"] == 0.5
    two = _config({"A": 0.5, "B": 0.5}, "4.0")
    reading = live.read(two)
    assert reading.version > first.version
    want = assess_experiment(two, observe(store, two))
    assert [c.candidate for c in reading.assessment.primary] == ["B"]
    requests = store.request_observations(NAME)
    _compare(reading.assessment, want, {"B": _latency_p_now("A", "B", requests) or 1.0}, requests)
    store.close()


def _failure(i: int) -> dict[str, Any]:
    return {
        "id": i, "request_id": f"f{i}", "experiment": NAME, "revision": 1, "variant": "A",
        "version": "1.0", "user_hash": f"u{i}", "error": "boom", "latency_s": 0.5,
        "created_at": T0 + timedelta(seconds=i),
    }  # fmt: skip


def test_a_row_that_becomes_visible_late_is_taken_once(tmp_path: Path) -> None:
    """Ids are handed out before commit: id 2 may become visible after id 3 was read. The hole
    is re-read for ``GAP_GRACE_S``, then probed by id; either way the row is taken once."""
    store = ExperimentStore(f"sqlite:///{tmp_path / 'ab.db'}")
    cursors = Cursors()

    def write(*ids: int) -> None:
        with store.engine.begin() as connection:
            connection.execute(insert(FailedPredictionRow), [_failure(i) for i in ids])

    def taken(now: float) -> list[str]:
        new = store.increment(NAME, cursors, paired=False, now=now)
        return sorted(r.unit for r in new.requests)

    write(1, 3, 6)
    assert taken(0.0) == ["u1", "u3", "u6"]
    assert (cursors.failures.high, set(cursors.failures.young)) == (6, {2, 4, 5})
    write(2)  # late, within the grace: read again with the range
    assert taken(1.0) == ["u2"]
    assert taken(2.0) == []  # taken once
    assert taken(GAP_GRACE_S + 10) == []  # holes 4 and 5 go stale: probed by id from now on
    assert set(cursors.failures.stale) == {4, 5} and cursors.failures.since() == 6
    write(5, 7)
    assert taken(GAP_GRACE_S + 11) == ["u5", "u7"]
    assert set(cursors.failures.stale) == {4} and cursors.failures.high == 7
    with store.engine.connect() as connection:
        stored = connection.execute(select(FailedPredictionRow.id)).scalars().all()
    assert sorted(stored) == [1, 2, 3, 5, 6, 7]
    store.close()


def test_holes_are_remembered_up_to_a_limit() -> None:
    cursor = IdCursor()
    assert cursor.take([1, 2, 5], now=0.0) == {1, 2, 5}
    assert cursor.since() == 2 and not cursor.has(3) and cursor.has(5)
    assert cursor.take([3, 4, 5], now=1.0) == {3, 4}  # 5 was taken already
    assert cursor.since() == 5 and not cursor.young


@pytest.mark.parametrize("chunks", [[500], [1, 2, 3, 494], [100] * 5, [250, 0, 250]])
def test_a_comparison_fed_in_chunks_is_the_whole_sequences(chunks: list[int]) -> None:
    rng = np.random.default_rng(len(chunks))
    n = sum(chunks)
    arm = rng.random(n) < 0.4
    values = rng.integers(0, 5, n).astype(np.float64)
    units = rng.integers(0, 80, n)
    include = rng.random(n) < 0.9
    whole = stats.sequential_comparison(arm, values, units, 0.1, include=include)
    running = RunningComparison(0.1)
    codes = UnitCodes()
    parts = []
    start = 0
    for size in chunks:
        part = slice(start, start + size)
        unit_codes = codes.codes(str(u) for u in units[part])
        parts.append(running.extend(arm[part], values[part], unit_codes, include[part]))
        start += size
    for name in ("difference", "variance", "p_value", "usable"):
        got = np.concatenate([getattr(p, name) for p in parts])
        np.testing.assert_array_equal(got, getattr(whole, name), err_msg=name)
    assert running.look().p_value[-1] == whole.p_value[-1]


def test_an_exceedance_arm_follows_its_cutoff_both_ways() -> None:
    rng = np.random.default_rng(0)
    latencies = rng.lognormal(3, 0.5, 400)
    units = rng.integers(0, 30, 400)
    arm = ExceedanceArm()
    for cutoff, part in [(20.0, slice(0, 100)), (35.0, slice(100, 250)), (15.0, slice(250, 400))]:
        arm.insert(latencies[part], units[part])
        arm.move(cutoff)
        seen = slice(0, part.stop)
        want = stats.running_cluster_moments(
            (latencies[seen] > cutoff).astype(np.float64), units[seen]
        )
        got = arm.moments.moments()
        for name in ("count", "mean", "variance_of_mean", "clusters"):
            np.testing.assert_allclose(getattr(got, name)[-1], getattr(want, name)[-1], rtol=1e-12)
