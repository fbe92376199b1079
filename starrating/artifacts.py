"""Saving and loading a trained model: the one format training writes and serving reads.

A run's model directory is a plain ``save_pretrained`` folder (model + tokenizer). What serving
must agree on travels inside it: the label scheme in the config (``id2label``/``label2id``), the
maximum length as the tokenizer's ``model_max_length``, and the calibration temperature as
``config.starrating_temperature``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from starrating.labels import ID2LABEL, LABEL2ID, NUM_LABELS, id_to_star
from starrating.text import effective_max_length, encode_batch

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TEMPERATURE_KEY = "starrating_temperature"


class ArtifactError(ValueError):
    """A model directory is missing or does not carry the starrating label scheme."""


@dataclass(frozen=True)
class Artifacts:
    """A loaded model ready for inference."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    max_length: int
    temperature: float

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities: softmax of logits divided by the temperature."""
        return (logits.float() / self.temperature).softmax(dim=-1)

    def rate(self, texts: Sequence[str]) -> torch.Tensor:
        """Calibrated probabilities of one batch, as the handler computes them."""
        import torch

        encoded = encode_batch(self.tokenizer, texts, self.max_length)
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            logits = self.model(**{k: v.to(device) for k, v in encoded.items()}).logits
        return self.probabilities(logits).cpu()

    def predict_stars(self, texts: Sequence[str], batch_size: int = 32) -> list[int]:
        """The most likely star of each text, in order."""
        stars: list[int] = []
        for start in range(0, len(texts), batch_size):
            ids = self.rate(texts[start : start + batch_size]).argmax(dim=-1).tolist()
            stars.extend(id_to_star(i) for i in ids)
        return stars

    def accuracy(self, texts: Sequence[str], stars: Sequence[int], batch_size: int = 32) -> float:
        """Share of ``texts`` whose predicted star equals the true one."""
        if len(texts) != len(stars) or not texts:
            raise ValueError("need as many true stars as texts, and at least one text")
        predicted = self.predict_stars(texts, batch_size)
        return sum(p == t for p, t in zip(predicted, stars, strict=True)) / len(texts)


def save_artifacts(
    directory: str | Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int | None = None,
    temperature: float | None = None,
) -> Path:
    """Write model and tokenizer with the label scheme, max length and temperature inside."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model.config.id2label = dict(ID2LABEL)
    model.config.label2id = dict(LABEL2ID)
    model.config.num_labels = NUM_LABELS
    if temperature is not None:
        if not temperature > 0:
            raise ArtifactError(f"temperature must be positive, got {temperature}")
        setattr(model.config, TEMPERATURE_KEY, float(temperature))
    tokenizer.model_max_length = (
        max_length if max_length is not None else effective_max_length(tokenizer)
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def load_artifacts(directory: str | Path, device: str | torch.device = "cpu") -> Artifacts:
    """Load a directory written by ``save_artifacts``, in eval mode on ``device``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(directory)
    if not (path / "config.json").is_file():
        raise ArtifactError(
            f"{path} is not a saved starrating model (no config.json); "
            "point at a run's model directory written by `starrating train`"
        )
    model = AutoModelForSequenceClassification.from_pretrained(path)
    labels = {int(k): str(v) for k, v in model.config.id2label.items()}
    if labels != ID2LABEL:
        raise ArtifactError(
            f"{path} carries labels {labels}, expected the star scheme {ID2LABEL}; "
            "was it saved with starrating.save_artifacts?"
        )
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.to(device)
    model.eval()
    temperature = float(getattr(model.config, TEMPERATURE_KEY, 1.0) or 1.0)
    return Artifacts(model, tokenizer, effective_max_length(tokenizer), temperature)
