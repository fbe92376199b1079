"""Reading only what arrived since the last look: a cursor per table, and the rows past them.

Each table the assessment reads has an id that grows with every row stored (``predictions.seq``
since migration 0002, the autoincrement ids of the others). A look reads the rows above its
cursor, of every experiment (so that the ids it has seen have no holes but real ones), keeps
those of its experiment, and moves the cursor on.

**Late rows.** Ids are handed out before commit (a PostgreSQL sequence; on SQLite writers are
serialised and an id is only ever given at commit time), so with several gateway replicas a row
with a smaller id can become visible after one with a larger id was read: a hole in the ids
seen. A cursor remembers each hole: for ``GAP_GRACE_S`` the look re-reads from just below the
oldest hole (ids it has already taken are skipped), then the hole is probed by id at every look
(``id IN (...)``; at most ``MAX_STALE_IDS`` of them, the oldest given up beyond that). A hole
that never fills is an id a rolled-back transaction took (a refused duplicate, a lost race):
it costs one probe per look. A late row is added at the look that finds it, after the rows
already taken: the running sums are what a full recompute gives; only the order in which the
always-valid tests read it differs from the arrival order a full recompute would sort it into.

**Pairs** (feedback on a request a shadow version answered too) are counted once, at the look
that has taken both the feedback and the shadow answer, whichever came last.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from abtesting.observations import (
    FeedbackObs,
    Increment,
    PairedObs,
    PredictionObs,
    RequestObs,
    ShadowCopyObs,
    ShadowObs,
)
from abtesting.store.tables import (
    FailedPredictionRow,
    FeedbackRow,
    PredictionRow,
    ShadowPredictionRow,
    aware,
)

GAP_GRACE_S = 60.0
"""How long a hole in the ids is re-read as part of the range before it is probed by id."""
MAX_STALE_IDS = 10_000
"""Holes probed by id at most; beyond, the oldest are given up (a transaction that has held an
id that long is not coming back)."""


@dataclass
class IdCursor:
    """Where a look stands in one table: ``high``, the largest id taken; the holes below it."""

    high: int = 0
    young: dict[int, float] = field(default_factory=dict)
    """Holes re-read as part of the range: id -> when first missed (monotonic seconds)."""
    stale: dict[int, None] = field(default_factory=dict)
    """Older holes, probed by id (insertion-ordered: oldest first)."""

    def since(self) -> int:
        """Read the ids above this one (and the stale holes)."""
        return min(self.young) - 1 if self.young else self.high

    def newer(self, column: InstrumentedAttribute[int]) -> ColumnElement[bool]:
        """The rows the next look reads."""
        above = column > self.since()
        return or_(above, column.in_(list(self.stale))) if self.stale else above

    def take(self, ids: Iterable[int], now: float) -> set[int]:
        """Of the ids read, those not taken before (now taken); new holes are remembered."""
        fresh: set[int] = set()
        above: set[int] = set()
        for i in ids:
            if i > self.high:
                above.add(i)
            elif i in self.young:
                del self.young[i]
            elif i in self.stale:
                del self.stale[i]
            else:
                continue
            fresh.add(i)
        if above:
            top = max(above)
            self.young.update((i, now) for i in range(self.high + 1, top) if i not in above)
            self.high = top
        for i, missed in list(self.young.items()):
            if now - missed > GAP_GRACE_S:
                del self.young[i]
                self.stale[i] = None
        while len(self.stale) > MAX_STALE_IDS:
            del self.stale[next(iter(self.stale))]
        return fresh

    def has(self, i: int) -> bool:
        """Whether id ``i`` was taken by this look or one before."""
        return i <= self.high and i not in self.young and i not in self.stale


@dataclass
class Cursors:
    """A look's place in each table it reads."""

    predictions: IdCursor = field(default_factory=IdCursor)
    failures: IdCursor = field(default_factory=IdCursor)
    feedback: IdCursor = field(default_factory=IdCursor)
    shadows: IdCursor = field(default_factory=IdCursor)


def _unit(user_hash: str | None, request_id: str) -> str:
    return user_hash if user_hash is not None else request_id


def _take(
    session: Session,
    cursor: IdCursor,
    now: float,
    key: InstrumentedAttribute[int],
    *columns: InstrumentedAttribute[Any],
    request_id: InstrumentedAttribute[str] | None = None,
) -> tuple[list[Any], set[int]]:
    """The rows past ``cursor`` that it had not taken (``key``, then ``columns``; joined with
    their prediction on ``request_id`` when given), in ``key`` order, and their keys."""
    query = select(key, *columns)
    if request_id is not None:
        query = query.join(PredictionRow, PredictionRow.request_id == request_id)
    rows = session.execute(query.where(cursor.newer(key)).order_by(key)).all()
    fresh = cursor.take((row[0] for row in rows), now)
    return [row for row in rows if row[0] in fresh], fresh


def _requests(
    experiment: str, predictions: Sequence[Any], failures: Sequence[Any]
) -> list[RequestObs]:
    """The split's requests (a forced version has no revision), answered and failed, in the
    order ``Reads.request_observations`` gives them: time stored, answered first, then id."""
    keyed = [
        ((aware(at), 0, seq), RequestObs(variant, _unit(h, rid), False, lat * 1000.0, rev))
        for seq, exp, rev, variant, h, rid, _, lat, at in predictions
        if exp == experiment and rev is not None
    ]
    keyed += [
        ((aware(at), 1, i), RequestObs(variant, _unit(h, rid), True, None, rev))
        for i, exp, rev, variant, h, rid, at in failures
        if exp == experiment and rev is not None
    ]
    keyed.sort(key=lambda pair: pair[0])
    return [request for _, request in keyed]


def _copy(version: str, live: list[int], shadow: list[int] | None) -> ShadowCopyObs:
    if shadow is None:
        return ShadowCopyObs(version, True, 0, 0)
    agreeing = sum(a == b for a, b in zip(live, shadow, strict=True))
    return ShadowCopyObs(version, False, len(live), agreeing)


def read_increment(
    session: Session, experiment: str, cursors: Cursors, *, paired: bool, now: float
) -> Increment:
    """What ``experiment`` received since ``cursors`` (which move on); ``paired``: read the
    pairs of feedback and shadow answers too. ``now``: monotonic seconds (holes' age)."""
    fb, s = cursors.feedback, cursors.shadows
    pair_rows: Sequence[Any] = ()
    if paired:
        # Before the cursors move: the pairs of any feedback or shadow answer this look reads.
        columns = (
            FeedbackRow.id, ShadowPredictionRow.id, ShadowPredictionRow.version,
            PredictionRow.experiment, PredictionRow.variant, PredictionRow.user_hash,
            PredictionRow.request_id, FeedbackRow.item, FeedbackRow.stars, PredictionRow.stars,
            ShadowPredictionRow.stars,
        )  # fmt: skip
        both = (
            select(*columns)
            .join(ShadowPredictionRow, ShadowPredictionRow.request_id == FeedbackRow.request_id)
            .join(PredictionRow, PredictionRow.request_id == FeedbackRow.request_id)
        )
        pair_rows = [
            *session.execute(both.where(fb.newer(FeedbackRow.id))).all(),
            *session.execute(both.where(s.newer(ShadowPredictionRow.id))).all(),
        ]
    p, f = PredictionRow, FailedPredictionRow
    predictions, _ = _take(
        session, cursors.predictions, now, p.seq, p.experiment, p.revision, p.variant,
        p.user_hash, p.request_id, p.stars, p.latency_s, p.created_at,
    )  # fmt: skip
    failures, _ = _take(
        session, cursors.failures, now, f.id, f.experiment, f.revision, f.variant, f.user_hash,
        f.request_id, f.created_at,
    )  # fmt: skip
    feedback, fresh_feedback = _take(
        session, fb, now, FeedbackRow.id, p.experiment, p.variant, p.user_hash, p.request_id,
        FeedbackRow.item, FeedbackRow.stars, p.stars, FeedbackRow.created_at,
        request_id=FeedbackRow.request_id,
    )  # fmt: skip
    shadows, fresh_shadows = _take(
        session, s, now, ShadowPredictionRow.id, p.experiment, p.variant, p.stars, p.user_hash,
        p.request_id, ShadowPredictionRow.version, ShadowPredictionRow.stars,
        request_id=ShadowPredictionRow.request_id,
    )  # fmt: skip
    mine = [row for row in shadows if row[1] == experiment]
    pairs: dict[tuple[int, int], Any] = {}
    for row in pair_rows:
        f_id, s_id, experiment_of = row[0], row[1], row[3]
        taken_now = (f_id in fresh_feedback and s.has(s_id)) or (
            s_id in fresh_shadows and fb.has(f_id)
        )
        if experiment_of == experiment and taken_now:
            pairs[f_id, s_id] = row
    return Increment(
        requests=_requests(experiment, predictions, failures),
        predictions=[
            PredictionObs(variant, tuple(stars), lat)
            for _, exp, _, variant, _, _, stars, lat, _ in predictions
            if exp == experiment
        ],
        feedback=[
            FeedbackObs(variant, _unit(h, rid), stars, predicted[item], aware(at))
            for _, exp, variant, h, rid, item, stars, predicted, at in feedback
            if exp == experiment
        ],
        shadows=[
            ShadowObs(version, _unit(h, rid), None if shadow is None else list(shadow) != live)
            for _, _, _, live, h, rid, version, shadow in mine
        ],
        copies=[_copy(version, live, shadow) for _, _, _, live, _, _, version, shadow in mine],
        paired=[
            PairedObs(version, variant, _unit(h, rid), stars, live[item], shadow[item])
            for _, _, version, _, variant, h, rid, item, stars, live, shadow in (
                pairs[key] for key in sorted(pairs)
            )
            if shadow is not None and item < len(shadow)  # a failed copy has no answer
        ],
    )
