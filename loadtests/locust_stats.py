"""locust's ``--csv`` statistics, read per endpoint."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path


class LocustStatsError(RuntimeError):
    """A statistics file without a row to read."""


@dataclass(frozen=True)
class EndpointStats:
    """One row of locust's ``*_stats.csv``."""

    name: str
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


def read_locust_stats(path: Path) -> list[EndpointStats]:
    """Rows of locust's ``--csv`` stats file, the ``Aggregated`` row included."""
    rows = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            rows.append(
                EndpointStats(
                    name=row["Name"],
                    requests=int(row["Request Count"]),
                    failures=int(row["Failure Count"]),
                    rps=float(row["Requests/s"]),
                    p50_ms=_number(row["50%"]),
                    p95_ms=_number(row["95%"]),
                    p99_ms=_number(row["99%"]),
                )
            )
    if not rows:
        raise LocustStatsError(f"{path} holds no locust statistics")
    return rows


def _number(value: str) -> float:
    return float(value) if value not in ("", "N/A") else float("nan")
