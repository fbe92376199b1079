"""The shared core: label scheme, one preprocessing path, artefacts that carry their settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from starrating.artifacts import ArtifactError, load_artifacts
from starrating.labels import ID2LABEL, LABEL2ID, id_to_star, star_to_id
from starrating.text import encode_batch, normalize_text

SAMPLE_REVIEWS = [
    "I loved it! I will recommend this to everyone.",
    "It's OK.",
    "Really bad. I hope they don't make this anymore.",
]


def test_label_scheme_round_trips_and_refuses_out_of_range() -> None:
    assert [id_to_star(star_to_id(s)) for s in range(1, 6)] == [1, 2, 3, 4, 5]
    assert ID2LABEL[0] == "1" and LABEL2ID["5"] == 4
    for bad in (0, 6, True, 2.5):
        with pytest.raises(ValueError):
            star_to_id(bad)  # type: ignore[arg-type]


def test_label_scheme_imports_without_torch() -> None:
    code = "import sys, starrating.labels, starrating; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_normalize_text_removes_controls_and_collapses_whitespace() -> None:
    assert normalize_text("  good\x00\tvalue\n\n  ") == "good value"
    assert normalize_text("cafe\u0301") == "café"


def test_encode_batch_pads_to_longest_and_truncates_at_saved_max_length(tiny_model_dir) -> None:
    artifacts = load_artifacts(tiny_model_dir)
    batch = encode_batch(artifacts.tokenizer, ["good", "good value " * 200])
    assert batch["input_ids"].shape == (2, artifacts.max_length)
    short = encode_batch(artifacts.tokenizer, ["good", "bad"])
    assert short["input_ids"].shape[1] < artifacts.max_length
    assert short["attention_mask"].sum().item() == short["input_ids"].numel()


def test_saved_config_carries_label_scheme_max_length_and_temperature(tmp_path) -> None:
    from starrating.artifacts import save_artifacts
    from tests.conftest import build_tiny_model

    model, tokenizer = build_tiny_model()
    save_artifacts(tmp_path, model, tokenizer, max_length=48, temperature=1.7)
    loaded = load_artifacts(tmp_path)
    id2label = loaded.model.config.id2label or {}
    assert {int(k): v for k, v in id2label.items()} == ID2LABEL
    assert loaded.model.config.label2id == LABEL2ID
    assert loaded.max_length == 48 and loaded.temperature == pytest.approx(1.7)
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]])
    assert torch.allclose(loaded.probabilities(logits), (logits / 1.7).softmax(-1))


def test_load_artifacts_explains_a_wrong_directory(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="starrating train"):
        load_artifacts(tmp_path)


def test_tiny_tokenizer_really_tokenizes(tiny_model_dir) -> None:
    tokenizer = load_artifacts(tiny_model_dir).tokenizer
    ids = tokenizer("i loved it")["input_ids"]
    assert tokenizer.unk_token_id not in ids and len(ids) == 5
