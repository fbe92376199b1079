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
    # Windows of 10 logged values: the first sets the best, three more without progress.
    findings = [f for step in range(1, 61) for f in rules.observe_train(step, 1.6)]
    assert len(findings) == 1 and findings[0].startswith("LossNotDecreasing: at step 40 ")
    status = rules.statuses()["LossNotDecreasing"]
    assert status["status"] == "IssuesFound" and "has not fallen below 1.6000" in status["issue"]


def test_one_noisy_window_is_not_an_issue() -> None:
    rules = TrainingRules()
    window_means = [1.5, 1.4, 1.45, 1.42, 1.3, 1.35, 1.2]  # up twice, but never three in a row
    findings = [
        f
        for number, mean in enumerate(window_means)
        for step in range(10)
        for f in rules.observe_train(number * 10 + step + 1, mean)
    ]
    assert findings == []


def test_rising_validation_loss_with_falling_training_loss_is_overfitting() -> None:
    rules = TrainingRules()
    assert rules.observe_eval(100, train_loss=0.9, val_loss=0.80) == []
    findings = rules.observe_eval(200, train_loss=0.5, val_loss=0.85)
    assert findings and findings[0].startswith("Overfit:")
    assert rules.statuses()["Overfit"]["status"] == "IssuesFound"


def test_rule_state_survives_a_checkpoint() -> None:
    rules = TrainingRules()
    for step in range(1, 40):
        rules.observe_train(step, 1.6)
    rules.observe_eval(39, train_loss=0.9, val_loss=0.8)
    restored = TrainingRules()
    restored.load_state_dict(rules.state_dict())
    # The 40th flat value completes the fourth window: both must now report it.
    assert restored.observe_train(40, 1.6) == rules.observe_train(40, 1.6) != []
    assert restored.observe_eval(50, 0.5, 0.9) == rules.observe_eval(50, 0.5, 0.9) != []
    assert restored.statuses(finished=False)["Overfit"]["status"] == "IssuesFound"
    assert TrainingRules().statuses(finished=False)["Overfit"]["status"] == "InProgress"


def test_a_validation_loss_that_rises_by_noise_is_not_overfitting() -> None:
    rules = TrainingRules()
    rules.observe_eval(100, train_loss=0.9, val_loss=0.8000)
    assert rules.observe_eval(200, train_loss=0.8, val_loss=0.8001) == []
    assert rules.statuses()["Overfit"]["status"] == "NoIssuesFound"
