"""Training rules: they flag a stuck loss and overfitting, and stay quiet on healthy training."""

from __future__ import annotations

from training.rules import TrainingRules


def test_healthy_training_ends_without_issues() -> None:
    rules = TrainingRules()
    findings = [f for step in range(1, 41) for f in rules.observe_train(step, 2.0 / step)]
    findings += rules.observe_eval(40, train_loss=0.5, val_loss=1.0)
    findings += rules.observe_eval(80, train_loss=0.4, val_loss=0.9)
    assert findings == []
    assert {name: r["status"] for name, r in rules.statuses().items()} == {
        "LossNotDecreasing": "NoIssuesFound",
        "Overfit": "NoIssuesFound",
    }


def test_a_flat_loss_is_reported_once() -> None:
    rules = TrainingRules()
    findings = [f for step in range(1, 31) for f in rules.observe_train(step, 1.6)]
    assert len(findings) == 1 and findings[0].startswith("LossNotDecreasing:")
    status = rules.statuses()["LossNotDecreasing"]
    assert status["status"] == "IssuesFound" and "not below" in status["issue"]


def test_rising_validation_loss_with_falling_training_loss_is_overfitting() -> None:
    rules = TrainingRules()
    assert rules.observe_eval(100, train_loss=0.9, val_loss=0.80) == []
    findings = rules.observe_eval(200, train_loss=0.5, val_loss=0.85)
    assert findings and findings[0].startswith("Overfit:")
    assert rules.statuses()["Overfit"]["status"] == "IssuesFound"


def test_rule_state_survives_a_checkpoint() -> None:
    rules = TrainingRules()
    for step in range(1, 10):
        rules.observe_train(step, 1.6)
    rules.observe_eval(9, train_loss=0.9, val_loss=0.8)
    restored = TrainingRules()
    restored.load_state_dict(rules.state_dict())
    # The 10th flat value completes the second window: both must now report it.
    assert restored.observe_train(10, 1.6) == rules.observe_train(10, 1.6) != []
    assert restored.observe_eval(20, 0.5, 0.9) == rules.observe_eval(20, 0.5, 0.9) != []
    assert restored.statuses(finished=False)["Overfit"]["status"] == "IssuesFound"
    assert TrainingRules().statuses(finished=False)["Overfit"]["status"] == "InProgress"
