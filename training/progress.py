"""The progress bar of rank 0: steps, epoch, loss, samples/s and time left (rich, on stderr).

Disabled on other ranks and where stderr is not a terminal (SageMaker, CI), where the metric
log lines carry the same numbers.
"""

from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainingProgress:
    def __init__(self, *, enabled: bool, total: int | None, completed: int = 0) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} samples/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not self.enabled,
        )
        self._task: TaskID = self._progress.add_task(
            "training", total=total, completed=completed, loss="-", rate="-"
        )

    def epoch(self, number: int, of: int | None) -> None:
        label = f"epoch {number}/{of}" if of else f"epoch {number}"
        self._progress.update(self._task, description=label)

    def advance(self) -> None:
        self._progress.advance(self._task)

    def show(self, *, loss: float, samples_per_sec: float) -> None:
        self._progress.update(self._task, loss=f"{loss:.4f}", rate=f"{samples_per_sec:.1f}")

    def __enter__(self) -> TrainingProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()
