"""Training rules checked while training, in the manner of SageMaker Debugger's built-in rules.

- ``LossNotDecreasing``: the mean training loss over windows of logged steps has not fallen
  below its best for ``patience`` windows in a row.
- ``Overfit``: validation loss rose (by more than noise) while training loss fell, ``patience``
  evaluations in a row.

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
    """The mean training loss over windows of ``window`` logged values: an issue when
    ``patience`` windows in a row end no lower than the best window before them.

    Single windows are noisy (batches grouped by length differ in difficulty), so one window
    above the previous is no issue; several in a row are.
    """

    window: int = 10
    patience: int = 3
    min_delta_percent: float = 0.0
    losses: list[float] = field(default_factory=list)
    best: float | None = None
    streak: int = 0
    issue: str | None = None

    name = "LossNotDecreasing"

    def observe_train(self, step: int, loss: float) -> str | None:
        self.losses.append(loss)
        if self.issue is not None or len(self.losses) < self.window:
            return None
        latest = sum(self.losses) / len(self.losses)
        self.losses = []
        if self.best is None or latest < self.best * (1 - self.min_delta_percent / 100):
            self.best, self.streak = latest, 0
            return None
        self.streak += 1
        if self.streak < self.patience:
            return None
        self.issue = (
            f"at step {step} the mean training loss of the last {self.patience} windows of "
            f"{self.window} logged steps has not fallen below {self.best:.4f} "
            f"(latest {latest:.4f})"
        )
        return self.issue

    def observe_eval(self, step: int, train_loss: float, val_loss: float) -> str | None:
        return None


@dataclass
class Overfit:
    """Validation loss up while training loss down, ``patience`` evaluations in a row."""

    patience: int = 1
    # Rises smaller than this share are noise, not overfitting.
    min_rise_percent: float = 0.5
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
            rising = val_loss > last_val * (1 + self.min_rise_percent / 100)
            diverging = rising and train_loss < last_train
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
