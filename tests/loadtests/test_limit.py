"""The in-process limit: batching, padding strategies, throughput bookkeeping, accuracy."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import pytest
import torch

from loadtests.limit import make_batches, measure_limit
from starrating.labels import id_to_star


def token_lengths(artifacts: Any, texts: Any) -> list[int]:
    return [len(ids) for ids in artifacts.tokenizer(list(texts), truncation=True)["input_ids"]]


def test_sorted_batches_group_similar_lengths_and_keep_every_text(tiny_artifacts, tiny_reviews):
    texts = tiny_reviews.texts
    batches = make_batches(tiny_artifacts, texts, 8, "sorted")
    assert Counter(t for b in batches for t in b) == Counter(texts)
    assert all(1 <= len(b) <= 8 for b in batches)
    lengths = [token_lengths(tiny_artifacts, b) for b in batches]
    ranges = sorted((min(ls), max(ls)) for ls in lengths)
    # Length ranges of sorted batches never interleave: each batch starts where the last ended.
    assert all(prev[1] <= nxt[0] for prev, nxt in itertools.pairwise(ranges))


def test_plain_batches_are_consecutive_chunks_of_the_input(tiny_artifacts, tiny_reviews):
    texts = tiny_reviews.texts[:20]
    batches = make_batches(tiny_artifacts, texts, 8, "plain")
    expected = [texts[0:8], texts[8:16], texts[16:20]]
    assert sorted(batches) == sorted(expected)


def test_batch_size_must_be_positive(tiny_artifacts):
    with pytest.raises(ValueError, match="batch size"):
        make_batches(tiny_artifacts, ["good"], 0, "plain")


def test_measure_limit_times_every_thread_count_batch_size_and_padding(
    tiny_artifacts, tiny_reviews
):
    before = torch.get_num_threads()
    runs = measure_limit(
        tiny_artifacts, tiny_reviews.texts, batch_sizes=(1, 4), threads=(1, 2), seconds=0.2
    )
    assert torch.get_num_threads() == before
    assert [(r.threads, r.batch_size, r.padding) for r in runs] == [
        (threads, size, padding)
        for threads in (1, 2)
        for size in (1, 4)
        for padding in ("plain", "sorted")
    ]
    for run in runs:
        assert run.reviews >= run.batch_size
        assert run.seconds >= 0.2
        assert run.reviews_per_s == pytest.approx(run.reviews / run.seconds)
        assert len(run.batch_seconds) >= 1
        assert sum(run.batch_seconds) <= run.seconds


def test_rate_gives_calibrated_probabilities(tiny_artifacts):
    probabilities = tiny_artifacts.rate(["really bad", "i loved it, great product"])
    assert probabilities.shape == (2, 5)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(2))


def test_accuracy_counts_matching_stars(tiny_artifacts, tiny_reviews):
    texts = tiny_reviews.texts[:30]
    predicted = [id_to_star(int(i)) for i in tiny_artifacts.rate(texts).argmax(dim=1)]
    truth = [p if i % 3 else p % 5 + 1 for i, p in enumerate(predicted)]  # every third wrong
    assert tiny_artifacts.accuracy(texts, truth, batch_size=7) == pytest.approx(20 / 30)
    with pytest.raises(ValueError, match="as many"):
        tiny_artifacts.accuracy(texts, truth[:-1])
