"""Soft labels: a review's distribution over stars (its raters' shares) as training target."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import build_tiny_model
from training.config import TrainConfig, parse_args
from training.data.embedded import ratings_distribution
from training.data.readers import DataFormatError
from training.data.streaming import ReviewStream
from training.step import rating_loss


def test_raters_shares_per_star() -> None:
    # Ratings -4..+4 map to stars 1 1 2 2 3 4 5 5 5 by the label cut points.
    assert ratings_distribution([0, 0, 0, 4]) == [0.0, 0.0, 0.75, 0.0, 0.25]
    assert ratings_distribution([-4, -1, 1, 2]) == [0.25, 0.25, 0.0, 0.25, 0.25]


@pytest.mark.parametrize("ordinal_weight", [0.0, 0.5])
def test_a_one_hot_distribution_is_the_hard_label_loss(ordinal_weight: float) -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(8, 5), torch.randint(0, 5, (8,))
    one_hot = torch.nn.functional.one_hot(labels, 5).float()
    hard = rating_loss(logits, labels, ordinal_weight)
    soft = rating_loss(logits, labels, ordinal_weight, one_hot)
    assert soft.item() == pytest.approx(hard.item(), rel=1e-6)


def test_the_soft_loss_prefers_the_raters_distribution_to_their_majority_star() -> None:
    # Raters split 60/40 between 4 and 5 stars: predicting that split costs less than
    # predicting 4 stars for sure, which is what the hard label (4 stars) would reward.
    distribution = torch.tensor([[0.0, 0.0, 0.0, 0.6, 0.4]])
    labels = torch.tensor([3])
    matching = torch.log(torch.tensor([[1e-4, 1e-4, 1e-4, 0.6, 0.4]]))
    certain = torch.log(torch.tensor([[1e-4, 1e-4, 1e-4, 0.9997, 1e-4]]))
    soft = [rating_loss(x, labels, 0.0, distribution).item() for x in (matching, certain)]
    hard = [rating_loss(x, labels, 0.0).item() for x in (matching, certain)]
    assert soft[0] < soft[1] and hard[0] > hard[1]


def test_the_ordinal_term_weighs_the_distance_to_every_rater_s_star() -> None:
    # All mass predicted on 1 star; raters say 3 stars (half) and 5 stars (half): expected
    # distance (2 + 4) / 2 = 3 stars.
    logits = torch.tensor([[50.0, 0.0, 0.0, 0.0, 0.0]])
    distribution = torch.tensor([[0.0, 0.0, 0.5, 0.0, 0.5]])
    base = rating_loss(logits, torch.tensor([2]), 0.0, distribution)
    with_ordinal = rating_loss(logits, torch.tensor([2]), 1.0, distribution)
    assert (with_ordinal - base).item() == pytest.approx(3.0, abs=1e-4)


def _stream(path: Path, soft_labels: bool) -> ReviewStream:
    _, tokenizer = build_tiny_model()
    return ReviewStream(
        [path], tokenizer, batch_size=4, max_length=32, shuffle=False, soft_labels=soft_labels
    )


def test_batches_carry_the_distribution_only_when_asked(tmp_path: Path) -> None:
    rows = [
        {"text": "good", "stars": 4, "distribution": [0, 0, 0.2, 0.5, 0.3]},
        {"text": "bad", "stars": 1},  # a row without raters counts as its star
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    batch = next(iter(_stream(path, soft_labels=True)))
    assert batch["distribution"].tolist() == [
        pytest.approx([0, 0, 0.2, 0.5, 0.3]),
        [1.0, 0.0, 0.0, 0.0, 0.0],
    ]
    assert batch["labels"].tolist() == [3, 0]
    assert "distribution" not in next(iter(_stream(path, soft_labels=False)))


def test_a_malformed_distribution_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"text": "x", "stars": 2, "distribution": [0.5, 0.6]}) + "\n")
    with pytest.raises(DataFormatError, match=r"review #0 .* 5 shares summing to 1"):
        next(iter(_stream(path, soft_labels=True)))


def test_the_option_is_off_by_default_and_on_with_its_flag(tmp_path: Path) -> None:
    assert TrainConfig(out=tmp_path).soft_labels is False
    for split in ("train", "validation"):
        (tmp_path / f"{split}.jsonl").write_text('{"text": "fine", "stars": 3}\n')
    config = parse_args(["--out", str(tmp_path), "--data", str(tmp_path), "--soft-labels"])
    assert config.soft_labels is True
