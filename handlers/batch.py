"""One TorchServe batch on its way through the handler: request parsing and validation, where
each request's texts sit in the batch, and how the batch is split into forward passes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from handlers.config import HandlerConfig
from starrating.labels import NUM_LABELS
from starrating.text import normalize_text

if TYPE_CHECKING:
    from starrating.artifacts import Artifacts


class RequestError(ValueError):
    """A request of the batch that cannot be answered; only that request gets the error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def as_answer(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


@dataclass(frozen=True)
class RequestSlot:
    """Where one request's texts sit in the batch's flat list of texts, or why it failed."""

    start: int = 0
    count: int = 0
    many: bool = False
    error: RequestError | None = None


@dataclass(frozen=True)
class PreparedBatch:
    """The output of ``preprocess``: one encoding for all valid texts, one slot per request."""

    slots: list[RequestSlot]
    encoding: Mapping[str, torch.Tensor] | None


@dataclass(frozen=True)
class ScoredBatch:
    """The output of ``inference``: the slots and one probability row per valid text."""

    slots: list[RequestSlot]
    probabilities: torch.Tensor | None


def parse_request(row: Mapping[str, Any], config: HandlerConfig) -> tuple[list[str], bool]:
    """The normalised texts of one TorchServe request and whether it asked for a list."""
    body = row.get("body", row.get("data"))
    if isinstance(body, (bytes, bytearray)):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestError("invalid_encoding", "request body must be UTF-8 JSON") from exc
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except json.JSONDecodeError as exc:
            raise RequestError("invalid_json", f"request body is not JSON: {exc.msg}") from exc
    if not isinstance(body, Mapping) or ("text" in body) == ("texts" in body):
        raise RequestError(
            "invalid_request", 'request body must be {"text": str} or {"texts": [str, ...]}'
        )
    many = "texts" in body
    texts = body["texts"] if many else [body["text"]]
    if not isinstance(texts, list) or not texts:
        raise RequestError("invalid_request", '"texts" must be a non-empty list of strings')
    if len(texts) > config.max_texts_per_request:
        raise RequestError(
            "too_many_texts",
            f"at most {config.max_texts_per_request} texts per request, got {len(texts)}",
        )
    cleaned: list[str] = []
    for i, text in enumerate(texts):
        where = f"texts[{i}]" if many else "text"
        if not isinstance(text, str):
            raise RequestError("invalid_request", f"{where} must be a string")
        if len(text) > config.max_text_chars:
            raise RequestError(
                "text_too_long", f"{where} has more than {config.max_text_chars} characters"
            )
        text = normalize_text(text)
        if not text:
            raise RequestError("empty_text", f"{where} is empty")
        cleaned.append(text)
    return cleaned, many


def sub_batches(lengths: torch.Tensor, config: HandlerConfig) -> list[torch.Tensor]:
    """Row indices of each forward pass: all rows, or length-sorted chunks of sub_batch_size."""
    if config.strategy == "padded":
        return [torch.arange(len(lengths))]
    order = torch.argsort(lengths, stable=True)
    return list(torch.split(order, config.sub_batch_size))


def score(
    artifacts: Artifacts, encoding: Mapping[str, torch.Tensor], config: HandlerConfig
) -> torch.Tensor:
    """Calibrated probabilities, one row per text of ``encoding`` (on the model's device), in
    order: the forward passes of ``sub_batches``, each trimmed to its own longest text."""
    mask = encoding["attention_mask"]
    lengths = mask.sum(dim=1)
    right_padded = getattr(artifacts.tokenizer, "padding_side", "right") == "right"
    probabilities = torch.empty(len(lengths), NUM_LABELS)
    with torch.inference_mode():
        for rows in sub_batches(lengths.cpu(), config):
            rows = rows.to(mask.device)
            longest = int(lengths[rows].max())
            window = slice(0, longest) if right_padded else slice(-longest, None)
            inputs = {k: v[rows][:, window] for k, v in encoding.items()}
            logits = artifacts.model(**inputs).logits
            probabilities[rows.cpu()] = artifacts.probabilities(logits).cpu()
    return probabilities
