"""Shared fixtures: a tiny randomly initialised DistilBERT with a working tokenizer (no network)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

WORDS = (
    "i loved it will recommend this to everyone it's ok really bad hope they don't make "
    "anymore great good terrible awful excellent fine product works well broke after a day "
    "the and is was not very love hate best worst quality price cheap value return refund "
    "amazing poor decent okay average disappointed happy sound picture battery screen player"
).split()


def build_vocab() -> dict[str, int]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens = specials + sorted({t for w in WORDS for t in re.findall(r"\w+|[^\w\s]", w)})
    tokens += list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'")
    tokens += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    return {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}


def build_tiny_model(seed: int = 0, max_length: int = 64):  # type: ignore[no-untyped-def]
    """A 2-layer, 32-wide DistilBERT classifier with the star label scheme."""
    import torch
    from transformers import (
        DistilBertConfig,
        DistilBertForSequenceClassification,
        DistilBertTokenizerFast,
    )

    from starrating.labels import ID2LABEL, LABEL2ID, NUM_LABELS

    tokenizer = DistilBertTokenizerFast(vocab=build_vocab(), do_lower_case=True)
    config = DistilBertConfig(  # type: ignore[call-arg]
        vocab_size=len(tokenizer),
        dim=32,
        hidden_dim=64,
        n_layers=2,
        n_heads=2,
        max_position_embeddings=128,
        num_labels=NUM_LABELS,
        id2label=dict(ID2LABEL),
        label2id=dict(LABEL2ID),
    )
    torch.manual_seed(seed)
    model = DistilBertForSequenceClassification(config)
    tokenizer.model_max_length = max_length
    return model, tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny model directory as ``starrating.save_artifacts`` writes it."""
    from starrating.artifacts import save_artifacts

    model, tokenizer = build_tiny_model(seed=0)
    return save_artifacts(tmp_path_factory.mktemp("tiny-model"), model, tokenizer, max_length=64)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small train/validation/test splits in the prepared format, with a learnable signal."""
    import random

    rng = random.Random(0)
    phrases = {
        1: ["really bad", "terrible", "awful", "worst quality", "broke after a day"],
        2: ["poor", "disappointed", "not very good", "cheap"],
        3: ["it's ok", "okay", "average", "decent", "fine"],
        4: ["good", "works well", "good value", "happy"],
        5: ["i loved it", "excellent", "amazing", "best", "love this"],
    }
    out = tmp_path_factory.mktemp("tiny-data")
    for split, n in (("train", 200), ("validation", 40), ("test", 40)):
        with (out / f"{split}.jsonl").open("w") as handle:
            for i in range(n):
                stars = i % 5 + 1
                text = f"{rng.choice(phrases[stars])} {rng.choice(WORDS)} the product"
                handle.write(json.dumps({"text": text, "stars": stars}) + "\n")
    return out
