"""Why a rating: layer integrated gradients over the embedding layer, merged back to words.

Captum's ``LayerIntegratedGradients`` on the model's input (word piece) embeddings integrates
the gradient of the target star's logit along the straight path from a baseline to the text:
the baseline is the same sequence with every word piece replaced by the pad token ([CLS],
[SEP] and padding stay), so a word's attribution says how much that word moved the logit. The
attributions of a text add up to ``logit(text) - logit(baseline)`` up to the integral's error
(``convergence_delta``): the completeness property of integrated gradients. Per token they are
summed over the embedding dimension, then per word of the text, with the word's character span
from the fast tokenizer's offsets (into the normalised text, which each explanation carries).

Batch-aware: every text of a batch goes through one ``attribute`` call, ``steps`` points on the
path each, at most ``internal_batch_size`` rows per forward pass. captum is imported on the
first explanation only: a worker that only predicts never loads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from starrating.text import encode_batch, normalize_text

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class WordAttribution:
    word: str
    start: int
    """Character offset of the word in the explanation's ``text``."""
    end: int
    attribution: float

    def as_answer(self) -> dict[str, Any]:
        return {
            "word": self.word,
            "start": self.start,
            "end": self.end,
            "attribution": self.attribution,
        }


@dataclass(frozen=True)
class Explanation:
    """One text's attributions toward ``target`` (a class id of the model)."""

    text: str
    """The normalised text the offsets point into."""
    target: int
    words: list[WordAttribution]
    special_tokens: float
    """The attribution of [CLS]/[SEP]; with the words' it makes up the total."""
    logit_difference: float
    """logit(text) - logit(baseline) of the target: what the attributions add up to."""
    convergence_delta: float
    """total attribution - logit_difference: the integral's error."""
    truncated: bool
    """The text was longer than the model's max length: its tail has no words here."""

    def as_answer(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "words": [word.as_answer() for word in self.words],
            "special_tokens": self.special_tokens,
            "logit_difference": self.logit_difference,
            "convergence_delta": self.convergence_delta,
            "truncated": self.truncated,
        }


def explain(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    targets: Sequence[int],
    *,
    max_length: int,
    steps: int,
    internal_batch_size: int,
) -> list[Explanation]:
    """Attributions of each text's words toward its target class, all texts in one call."""
    from captum.attr import LayerIntegratedGradients

    encoding = encode_batch(tokenizer, texts, max_length, offsets=True)
    offsets = encoding.pop("offset_mapping")
    device = next(model.parameters()).device
    input_ids = encoding["input_ids"].to(device)
    names = [name for name in encoding if name != "input_ids"]
    extra = tuple(encoding[name].to(device) for name in names)
    word_ids = [encoding.word_ids(row) for row in range(len(texts))]
    is_word = torch.tensor(
        [[word is not None for word in row] for row in word_ids], device=device, dtype=torch.bool
    )
    baseline = torch.where(is_word, torch.full_like(input_ids, _pad_id(tokenizer)), input_ids)

    def logits(ids: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        output: torch.Tensor = model(input_ids=ids, **dict(zip(names, rest, strict=True))).logits
        return output.float()

    target = torch.tensor(list(targets), device=device)
    with torch.no_grad():
        rows = torch.arange(len(texts), device=device)
        at_text = logits(input_ids, *extra)[rows, target]
        difference = at_text - logits(baseline, *extra)[rows, target]
    integrated = LayerIntegratedGradients(logits, model.get_input_embeddings())
    attributions, delta = integrated.attribute(
        inputs=input_ids,
        baselines=baseline,
        additional_forward_args=extra,
        target=target,
        n_steps=steps,
        internal_batch_size=internal_batch_size,
        return_convergence_delta=True,
    )
    per_token = attributions.sum(dim=-1).detach().cpu()
    explanations = []
    for row, text in enumerate(texts):
        normalised = normalize_text(text)
        words = _words(normalised, word_ids[row], offsets[row].tolist(), per_token[row].tolist())
        word_total = sum(word.attribution for word in words)
        explanations.append(
            Explanation(
                text=normalised,
                target=int(targets[row]),
                words=words,
                special_tokens=float(per_token[row].sum()) - word_total,
                logit_difference=float(difference[row]),
                convergence_delta=float(delta[row]),
                truncated=bool(words) and words[-1].end < len(normalised),
            )
        )
    return explanations


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    pad = tokenizer.pad_token_id
    if pad is None:
        raise ValueError("explanations need a tokenizer with a pad token (the baseline)")
    return int(pad)


def _words(
    text: str,
    word_ids: list[int | None],
    offsets: list[list[int]],
    scores: list[float],
) -> list[WordAttribution]:
    """Word pieces summed into the words they came from, in the order of the text."""
    spans: dict[int, list[float]] = {}
    for word, (start, end), score in zip(word_ids, offsets, scores, strict=True):
        if word is None:
            continue
        span = spans.setdefault(word, [start, end, 0.0])
        span[0], span[1] = min(span[0], start), max(span[1], end)
        span[2] += score
    return [
        WordAttribution(text[int(s) : int(e)], int(s), int(e), total)
        for s, e, total in (spans[w] for w in sorted(spans))
    ]
