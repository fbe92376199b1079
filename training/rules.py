"""Training rules checked while training, in the manner of SageMaker Debugger's built-in rules.

- ``LossNotDecreasing``: the mean training loss of the latest window of logged steps is not
  lower than the mean of the window before it.
- ``Overfit``: validation loss rose while training loss fell, ``patience`` evaluations in a row.

Each rule ends as ``NoIssuesFound`` or ``IssuesFound`` (with what it saw); ``--early-stop``
stops training at the first issue. Rules keep their state in plain data so a resumed run
continues them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class RuleStatus(StrEnum):
    IN_PROGRESS = "InProgress"
    NO_ISSUES_FOUND = "NoIssuesFound"
    ISSUES_FOUND = "IssuesFound"


@dataclass
class LossNotDecreasing:
    """Compares the mean training loss of consecutive windows of ``window`` logged values."""

    window: int = 5
    min_delta_percent: float = 0.0
    losses: list[float] = field(default_factory=list)
    issue: str | None = None

    name = "LossNotDecreasing"

    def observe_train(self, step: int, loss: float) -> str | None:
        self.losses.append(loss)
        n = len(self.losses)
        if self.issue is not None or n < 2 * self.window or n % self.window:
            return None
        previous = sum(self.losses[-2 * self.window : -self.window]) / self.window
        latest = sum(self.losses[-self.window :]) / self.window
        if latest >= previous * (1 - self.min_delta_percent / 100):
            self.issue = (
                f"at step {step} the mean training loss of the last {self.window} logged steps "
                f"({latest:.4f}) is not below the window before ({previous:.4f})"
            )
            return self.issue
        return None

    def observe_eval(self, step: int, train_loss: float, val_loss: float) -> str | None:
        return None


@dataclass
class Overfit:
    """Validation loss up while training loss down, ``patience`` evaluations in a row."""

    patience: int = 1
    last: tuple[float, float] | None = None
    streak: int = 0
    issue: str | None = None

    name = "Overfit"

    def observe_train(self, step: int, loss: float) -> str | None:
        return None

    def observe_eval(self, step: int, train_loss: float, val_loss: float) -> str | None:
        found = None
        if self.last is not None and self.issue is None:
            last_train, last_val = self.last
            diverging = val_loss > last_val and train_loss < last_train
            self.streak = self.streak + 1 if diverging else 0
            if self.streak >= self.patience:
                self.issue = found = (
                    f"at step {step} validation loss rose to {val_loss:.4f} (from {last_val:.4f}) "
                    f"while training loss fell to {train_loss:.4f} (from {last_train:.4f})"
                )
        self.last = (train_loss, val_loss)
        return found


class TrainingRules:
    """The rules of one run: feed them losses, read their findings and final statuses."""

    def __init__(self) -> None:
        self.rules: list[LossNotDecreasing | Overfit] = [LossNotDecreasing(), Overfit()]

    def observe_train(self, step: int, loss: float) -> list[str]:
        findings = [r.observe_train(step, loss) for r in self.rules]
        return [f"{r.name}: {f}" for r, f in zip(self.rules, findings, strict=True) if f]

    def observe_eval(self, step: int, train_loss: float, val_loss: float) -> list[str]:
        findings = [r.observe_eval(step, train_loss, val_loss) for r in self.rules]
        return [f"{r.name}: {f}" for r, f in zip(self.rules, findings, strict=True) if f]

    def statuses(self, finished: bool = True) -> dict[str, dict[str, Any]]:
        """Each rule's status and, where it found one, the issue."""
        out: dict[str, dict[str, Any]] = {}
        for rule in self.rules:
            if rule.issue is not None:
                status = RuleStatus.ISSUES_FOUND
            else:
                status = RuleStatus.NO_ISSUES_FOUND if finished else RuleStatus.IN_PROGRESS
            out[rule.name] = {"status": str(status), "issue": rule.issue}
        return out

    def state_dict(self) -> dict[str, Any]:
        return {rule.name: asdict(rule) for rule in self.rules}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for rule in self.rules:
            saved = dict(state.get(rule.name, {}))
            if "last" in saved and saved["last"] is not None:
                saved["last"] = tuple(saved["last"])
            for key, value in saved.items():
                setattr(rule, key, value)
