"""The statistics of ``abtesting.stats``, kept up to date observation batch by batch.

``stats`` computes a sequence's running moments and always-valid p-values from the whole
sequence; the objects here keep what that computation carries from one observation to the next
(each unit's count n_k and sum S_k, the ``stats.ClusterSums`` so far, the running minimum of the
p-value) and go on from there with the next batch, in time proportional to the batch. Fed a
sequence in batches they give what ``stats`` gives on the whole of it: the same formulas
(``ClusterSums.accumulate``, ``compare_arms``, ``paired_test``) on the same sums, and the metrics
here are integer-valued (stars, 0/1), so every sum is an integer and exact in float64 however it
is grouped (``tests/abtesting/test_running_assessment.py`` checks the equality).

No I/O; the caller maps unit ids to integer codes once (``UnitCodes``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from abtesting import stats
from abtesting.stats import ClusterSums, FloatArray

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class Growable:
    """An append-only numpy array (capacity doubles, so appending n values costs O(n))."""

    def __init__(self, dtype: npt.DTypeLike, capacity: int = 1024) -> None:
        self._data = np.empty(capacity, dtype=dtype)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def view(self) -> npt.NDArray[np.generic]:
        """The values so far (a view: valid until the next ``extend``)."""
        return self._data[: self._size]

    def extend(self, values: npt.ArrayLike) -> None:
        new = np.asarray(values, dtype=self._data.dtype)
        end = self._size + new.size
        if end > self._data.size:
            grown = np.empty(max(end, 2 * self._data.size), dtype=self._data.dtype)
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[self._size : end] = new
        self._size = end


class UnitCodes:
    """Integer codes of unit ids, given in order of first sight and kept for good."""

    def __init__(self) -> None:
        self._codes: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._codes)

    def codes(self, units: Iterable[str]) -> IntArray:
        table = self._codes
        return np.fromiter((table.setdefault(u, len(table)) for u in units), dtype=np.int64)


def _grown(array: FloatArray, size: int) -> FloatArray:
    if size <= array.size:
        return array
    grown = np.zeros(max(size, 2 * array.size), dtype=np.float64)
    grown[: array.size] = array
    return grown


def _nothing() -> ClusterSums:
    zero = np.zeros(1, dtype=np.float64)
    return ClusterSums(zero, zero, zero, zero, zero, zero)


class RunningClusterMoments:
    """``stats.running_cluster_moments`` of a group, continued batch by batch."""

    def __init__(self) -> None:
        self._sum = np.zeros(0, dtype=np.float64)  # S_k, by unit code
        self._count = np.zeros(0, dtype=np.float64)  # n_k
        self.sums = _nothing()
        """The sums after the last observation (arrays of one)."""

    def extend(
        self, values: npt.ArrayLike, units: IntArray, include: npt.ArrayLike | None = None
    ) -> ClusterSums:
        """Add a batch (``include`` False: not this group's, skipped); the sums after each of
        its observations."""
        x = np.asarray(values, dtype=np.float64)
        mask = np.ones(x.shape, dtype=bool) if include is None else np.asarray(include, bool)
        if not x.size:
            return ClusterSums(*(np.zeros(0, np.float64) for _ in range(6)))
        size = int(units.max()) + 1
        self._sum, self._count = _grown(self._sum, size), _grown(self._count, size)
        y = np.where(mask, x, 0.0)
        c = mask.astype(np.float64)
        prior_sum = self._sum[units] + stats.exclusive_group_cumsum(y, units)
        prior_count = self._count[units] + stats.exclusive_group_cumsum(c, units)
        sums = ClusterSums.accumulate(y, c, prior_sum, prior_count, self.sums)
        np.add.at(self._sum, units, y)
        np.add.at(self._count, units, c)
        self.sums = sums.last()
        return sums

    def shift(self, units: IntArray, deltas: FloatArray) -> None:
        """Values already added change: one observation of ``units[i]`` by ``deltas[i]`` (the
        latency guardrail's indicator when its threshold moves). Counts stay as they are."""
        if not units.size:
            return
        touched, where = np.unique(units, return_inverse=True)
        delta = np.bincount(where, weights=deltas, minlength=touched.size)
        before = self._sum[touched]
        after = before + delta
        self._sum[touched] = after
        s = self.sums
        self.sums = ClusterSums(
            s.count,
            s.total + delta.sum(),
            s.sum_sq + float((after * after - before * before).sum()),
            s.sum_cross + float((delta * self._count[touched]).sum()),
            s.count_sq,
            s.clusters,
        )

    def moments(self) -> stats.RunningMoments:
        """The moments after the last observation (arrays of one)."""
        return self.sums.moments()


class RunningComparison:
    """``stats.sequential_comparison`` (candidate minus control), continued batch by batch."""

    def __init__(
        self,
        mixture_sd: float,
        *,
        null: float = 0.0,
        binary: bool = False,
        burn_in: int = stats.SEQUENTIAL_BURN_IN,
        control: RunningClusterMoments | None = None,
        candidate: RunningClusterMoments | None = None,
    ) -> None:
        """``control``/``candidate``: arms kept by someone else (only ``look`` then)."""
        self.control = control or RunningClusterMoments()
        self.candidate = candidate or RunningClusterMoments()
        self.mixture_sd, self.null, self.binary, self.burn_in = mixture_sd, null, binary, burn_in
        self.p_min = 1.0
        """The always-valid p-value: the minimum over every look so far."""

    def _test(
        self, control: stats.RunningMoments, candidate: stats.RunningMoments
    ) -> stats.SequentialComparison:
        test = stats.compare_arms(
            control, candidate, self.mixture_sd, null=self.null, binary=self.binary,
            burn_in=self.burn_in, start=self.p_min,
        )  # fmt: skip
        if test.p_value.size:
            self.p_min = float(test.p_value[-1])
        return test

    def extend(
        self,
        is_candidate: npt.ArrayLike,
        values: npt.ArrayLike,
        units: IntArray,
        include: npt.ArrayLike | None = None,
    ) -> stats.SequentialComparison:
        """Add a batch; the comparison after each of its observations."""
        arm = np.asarray(is_candidate, dtype=bool)
        mask = np.ones(arm.shape, dtype=bool) if include is None else np.asarray(include, bool)
        control = self.control.extend(values, units, mask & ~arm)
        candidate = self.candidate.extend(values, units, mask & arm)
        return self._test(control.moments(), candidate.moments())

    def look(self) -> stats.SequentialComparison:
        """The comparison now (arrays of one), its p-value the minimum over every look; where
        the arms changed without new observations (``RunningClusterMoments.shift``), this look
        joins that minimum."""
        return self._test(self.control.moments(), self.candidate.moments())


class RunningPaired:
    """``stats.paired_comparison`` of paired differences, continued batch by batch."""

    def __init__(self, mixture_sd: float, *, binary: bool = False) -> None:
        self.moments = RunningClusterMoments()
        self.squares = 0.0
        self.mixture_sd, self.binary = mixture_sd, binary
        self.p_min = 1.0

    def _test(self, moments: stats.RunningMoments, squares: FloatArray) -> stats.PairedSequence:
        test = stats.paired_test(
            moments, squares, self.mixture_sd, binary=self.binary, start=self.p_min
        )
        if test.p_value.size:
            self.p_min = float(test.p_value[-1])
        return test

    def extend(self, differences: npt.ArrayLike, units: IntArray) -> stats.PairedSequence:
        d = np.asarray(differences, dtype=np.float64)
        sums = self.moments.extend(d, units)
        squares = self.squares + np.cumsum(d * d)
        if squares.size:
            self.squares = float(squares[-1])
        return self._test(sums.moments(), squares)

    def look(self) -> stats.PairedSequence:
        return self._test(self.moments.moments(), np.array([self.squares]))

    @property
    def count(self) -> int:
        return int(self.moments.sums.count[-1])


class SortedSample:
    """A sample kept in ascending order, each value with the unit it came from: quantiles and
    their order-statistic intervals in O(1), an insertion in O(n) memory moves (no sort)."""

    def __init__(self) -> None:
        self.values = np.zeros(0, dtype=np.float64)
        self.units = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.values.size)

    def insert(self, values: npt.ArrayLike, units: IntArray | None = None) -> None:
        new = np.asarray(values, dtype=np.float64)
        if not new.size:
            return
        order = np.argsort(new, kind="stable")
        new = new[order]
        at = np.searchsorted(self.values, new, side="right")
        self.values = np.insert(self.values, at, new)
        codes = np.zeros(new.size, np.int64) if units is None else units[order]
        self.units = np.insert(self.units, at, codes)

    def quantile(self, q: float) -> float:
        """``np.quantile`` of the sample."""
        return stats.sorted_quantile(self.values, q)

    def interval(self, q: float, confidence: float = 0.95) -> stats.Estimate:
        """``stats.quantile_interval`` of the sample."""
        return stats.sorted_quantile_interval(self.values, q, confidence)

    def units_between(self, low: float, high: float) -> IntArray:
        """The units of the values in (low, high]."""
        lo, hi = np.searchsorted(self.values, [low, high], side="right")
        return self.units[lo:hi]


class ExceedanceArm:
    """One arm of the latency guardrail's test: per request 1{latency > cutoff}, clustered by
    unit, the cutoff moved at each look (the control's p95 moves as requests come in). Moving it
    changes the indicator only of the requests between the old and the new cutoff, found in the
    sorted latencies, so a look costs the requests that changed side, not the history."""

    def __init__(self) -> None:
        self.latencies = SortedSample()
        self.moments = RunningClusterMoments()
        self.cutoff = math.inf

    def move(self, cutoff: float) -> None:
        if cutoff == self.cutoff:
            return
        low, high = sorted((cutoff, self.cutoff))
        flipped = self.latencies.units_between(low, high)
        # Lower cutoff: those requests turn slow (+1); higher: they stop being slow (-1).
        delta = 1.0 if cutoff < self.cutoff else -1.0
        self.moments.shift(flipped, np.full(flipped.size, delta))
        self.cutoff = cutoff

    def insert(self, latencies: FloatArray, units: IntArray) -> None:
        """New requests, counted against the cutoff in force (``move`` may follow)."""
        self.latencies.insert(latencies, units)
        self.moments.extend((latencies > self.cutoff).astype(np.float64), units)
