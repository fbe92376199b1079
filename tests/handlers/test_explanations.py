"""Explanations in the handler: integrated gradients over the embeddings, merged to words.

Completeness (the attributions of a text add up to the target logit's difference between the
text and the baseline), word offsets that cover the text, batch-awareness, predictions and
explanations sharing a batch, and a model trained here for a few hundred steps that puts its
attribution on the positive words of a positive review.
"""

from __future__ import annotations

import itertools
import random
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from ts.context import RequestProcessor

from handlers.star_handler import StarHandler
from starrating.artifacts import load_artifacts, save_artifacts
from starrating.labels import star_to_id
from starrating.text import encode_batch
from tests.conftest import build_tiny_model
from tests.handlers.conftest import make_context

POSITIVE = "I loved it! I will recommend this to everyone."
TEXTS = [POSITIVE, "It's OK.", "Really bad. I hope they don't make this anymore."]
# Integrated gradients is an integral taken with `steps` points (Gauss-Legendre): its error on
# these models stays far below this at 32 steps (measured: under 1e-3 of the logit difference).
COMPLETENESS_TOLERANCE = 0.02


def run(handler: StarHandler, rows: list[dict[str, Any]], explain: list[bool]) -> list[Any]:
    """One TorchServe batch; ``explain[i]``: request i came through the explanations API."""
    context = handler.context
    context.request_ids = {i: f"req-{i}" for i in range(len(rows))}
    context.request_processor = [
        RequestProcessor({"explain": "True"} if e else {}) for e in explain
    ]
    context.metrics.request_ids = context.request_ids
    answers: list[Any] = handler.handle(rows, context)
    return answers


def make_handler(model_dir: Path, **handler_settings: Any) -> StarHandler:
    yaml_config = {"handler": {"threads": 1, **handler_settings}}
    context = make_context(model_dir, yaml_config=yaml_config)
    handler = StarHandler()
    handler.initialize(context)
    handler.context = context
    return handler


@pytest.fixture
def handler(handler_model_dir: Path) -> StarHandler:
    return make_handler(handler_model_dir)


def test_explanation_is_the_prediction_plus_words_with_offsets(handler: StarHandler) -> None:
    [predicted] = run(handler, [{"body": {"text": POSITIVE}}], [False])
    [explained] = run(handler, [{"body": {"text": POSITIVE}}], [True])

    assert {k: explained[k] for k in predicted} == predicted
    assert explained["text"] == POSITIVE and explained["steps"] == 32
    words = explained["words"]
    assert [w["word"] for w in words] == re.findall(r"\w+|[^\w\s]", POSITIVE)
    for word in words:
        assert POSITIVE[word["start"] : word["end"]] == word["word"]
    starts = [w["start"] for w in words]
    assert starts == sorted(starts)
    assert all(a["end"] <= b["start"] for a, b in itertools.pairwise(words))
    covered = {i for w in words for i in range(w["start"], w["end"])}
    assert covered == {i for i, c in enumerate(POSITIVE) if not c.isspace()}
    assert explained["truncated"] is False


def test_attributions_add_up_to_the_logit_difference(
    handler: StarHandler, handler_model_dir: Path
) -> None:
    answers = run(handler, [{"body": {"texts": TEXTS}}], [True])[0]

    artifacts = load_artifacts(handler_model_dir / "model")
    encoding = encode_batch(artifacts.tokenizer, TEXTS, artifacts.max_length)
    special = torch.tensor([[w is None for w in encoding.word_ids(i)] for i in range(len(TEXTS))])
    baseline = torch.where(special, encoding["input_ids"], artifacts.tokenizer.pad_token_id)
    with torch.no_grad():
        at_text = artifacts.model(**encoding).logits
        at_baseline = artifacts.model(
            input_ids=baseline, attention_mask=encoding["attention_mask"]
        ).logits
    for row, answer in enumerate(answers):
        target = star_to_id(answer["stars"])
        assert target == int(at_text[row].argmax())  # toward the predicted star
        expected = float(at_text[row, target] - at_baseline[row, target])
        total = sum(w["attribution"] for w in answer["words"]) + answer["special_tokens"]
        assert answer["logit_difference"] == pytest.approx(expected, abs=1e-4)
        assert abs(total - expected) <= COMPLETENESS_TOLERANCE * max(1.0, abs(expected))
        assert answer["convergence_delta"] == pytest.approx(total - expected, abs=1e-4)


def test_a_batch_explains_each_text_as_alone_and_predictions_ride_along(
    handler: StarHandler,
) -> None:
    alone = [run(handler, [{"body": {"text": t}}], [True])[0] for t in TEXTS]
    rows = [{"body": {"text": t}} for t in TEXTS] + [{"body": {"text": TEXTS[0]}}]
    together = run(handler, rows, [True, True, True, False])

    for single, batched in zip(alone, together[:3], strict=True):
        assert [w["word"] for w in batched["words"]] == [w["word"] for w in single["words"]]
        torch.testing.assert_close(
            torch.tensor([w["attribution"] for w in batched["words"]]),
            torch.tensor([w["attribution"] for w in single["words"]]),
            atol=1e-4,
            rtol=1e-3,
        )
    assert "words" not in together[3]
    assert together[3]["stars"] == alone[0]["stars"]


def test_a_bad_request_in_an_explained_batch_gets_its_own_error(handler: StarHandler) -> None:
    answers = run(handler, [{"body": {"text": "  "}}, {"body": {"text": "good"}}], [True, True])

    assert answers[0]["error"]["code"] == "empty_text"
    assert answers[1]["words"][0]["word"] == "good"


def test_steps_are_configurable(handler_model_dir: Path) -> None:
    coarse = make_handler(handler_model_dir, explain_steps=2)
    fine = make_handler(handler_model_dir, explain_steps=64)
    text = TEXTS[2]

    [rough] = run(coarse, [{"body": {"text": text}}], [True])
    [exact] = run(fine, [{"body": {"text": text}}], [True])

    assert (rough["steps"], exact["steps"]) == (2, 64)
    assert abs(exact["convergence_delta"]) <= abs(rough["convergence_delta"])


# Reviews of one sentiment word among neutral words at random places: the neutral words appear
# at every rating, so only the sentiment word says the stars. (The shared tiny splits of
# tests/conftest.py open every 5-star review with "i", which a model rightly learns as a cue.)
SIGNAL = {
    1: ["terrible", "awful", "hate"],
    2: ["poor", "disappointed", "cheap"],
    3: ["okay", "average", "fine"],
    4: ["good", "happy", "decent"],
    5: ["loved", "love", "amazing", "excellent"],
}
NEUTRAL = (
    "i it will recommend this to everyone the product player screen battery and is was a day "
    "sound picture price ! ."
).split()


def review(rng: random.Random, stars: int) -> str:
    words = rng.choices(NEUTRAL, k=rng.randint(3, 10))
    words.insert(rng.randint(0, len(words)), rng.choice(SIGNAL[stars]))
    return " ".join(words)


@pytest.fixture(scope="module")
def trained_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny DistilBERT trained 300 steps on reviews whose stars only the middle word says."""
    model, tokenizer = build_tiny_model(seed=0)
    rng = random.Random(0)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(300):
        stars = [rng.randint(1, 5) for _ in range(16)]
        texts = [review(rng, s) for s in stars]
        encoding = encode_batch(tokenizer, texts, 64)
        labels = torch.tensor([star_to_id(s) for s in stars])
        loss = model(**encoding, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    out = tmp_path_factory.mktemp("trained-extracted")
    save_artifacts(out / "model", model, tokenizer, max_length=64)
    return out


def test_a_trained_models_top_words_for_a_positive_review_are_the_positive_ones(
    trained_model_dir: Path,
) -> None:
    handler = make_handler(trained_model_dir)
    [answer] = run(handler, [{"body": {"text": POSITIVE}}], [True])

    assert answer["stars"] == 5
    ranked = sorted(answer["words"], key=lambda w: w["attribution"], reverse=True)
    assert ranked[0]["word"] == "loved", ranked
