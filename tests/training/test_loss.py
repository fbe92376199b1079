"""The rating loss: plain cross-entropy, or one that knows 1 star is far from 5."""

from __future__ import annotations

import torch

from training.step import rating_loss


def _logits(probabilities: list[float]) -> torch.Tensor:
    return torch.tensor([probabilities]).log()


def test_ordinal_weight_makes_far_mistakes_cost_more_than_near_ones() -> None:
    label = torch.tensor([0])  # a 1-star review
    near = _logits([0.5, 0.4, 0.05, 0.03, 0.02])  # the rest of the mass on 2 stars
    far = _logits([0.5, 0.02, 0.03, 0.05, 0.4])  # ... or on 5 stars
    assert torch.isclose(rating_loss(near, label, 0.0), rating_loss(far, label, 0.0))
    assert rating_loss(far, label, 1.0) > rating_loss(near, label, 1.0) + 1.0


def test_a_certain_right_answer_costs_nothing_either_way() -> None:
    label = torch.tensor([3])
    logits = torch.tensor([[-30.0, -30.0, -30.0, 30.0, -30.0]])
    assert float(rating_loss(logits, label, 0.0)) < 1e-6
    assert float(rating_loss(logits, label, 2.0)) < 1e-6
