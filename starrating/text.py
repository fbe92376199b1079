"""Text preprocessing and tokenisation shared by training and the TorchServe handler.

There is one path from review text to ``input_ids``: ``normalize_text`` then ``encode_batch``.
The maximum length is the tokenizer's ``model_max_length``, which ``save_artifacts`` writes
into the saved tokenizer, so serving truncates exactly as training did.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import BatchEncoding, PreTrainedTokenizerBase

DEFAULT_MAX_LENGTH = 256
_WHITESPACE = re.compile(r"\s+")
# C0/C1 control characters other than whitespace (NUL and friends) carry no meaning in a review.
_CONTROL_CHARACTERS = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
_CONTROL = re.compile(f"[{_CONTROL_CHARACTERS}]")
NON_BLANK_PATTERN = rf"[^\s{_CONTROL_CHARACTERS}]"
"""A text in which this matches somewhere keeps a character after ``normalize_text`` (for JSON
Schema ``pattern``, which matches anywhere): refused texts are not in the gateway's schema."""


def normalize_text(text: str) -> str:
    """Unicode NFC, control characters removed, whitespace collapsed, ends stripped."""
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub(" ", text)
    return _WHITESPACE.sub(" ", text).strip()


def encode_batch(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int | None = None,
    *,
    offsets: bool = False,
) -> BatchEncoding:
    """Tokenise a whole batch in one call, padded to the longest text, truncated to max length.

    ``max_length`` defaults to the tokenizer's ``model_max_length`` (set by ``save_artifacts``).
    ``offsets`` adds ``offset_mapping``: each token's character span in the normalised text
    (a fast tokenizer's); take it out before calling the model.
    """
    limit = max_length if max_length is not None else effective_max_length(tokenizer)
    encoded: BatchEncoding = tokenizer(
        [normalize_text(t) for t in texts],
        padding="longest",
        truncation=True,
        max_length=limit,
        return_tensors="pt",
        return_offsets_mapping=offsets,
    )
    return encoded


def effective_max_length(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's max length, or the default when it carries none (a huge sentinel)."""
    limit = int(getattr(tokenizer, "model_max_length", DEFAULT_MAX_LENGTH))
    return limit if 0 < limit <= 100_000 else DEFAULT_MAX_LENGTH
