"""The TorchServe handler of the ``stars`` model: review texts in, 1-5 stars with probabilities out.

``initialize`` loads the archived model once through ``starrating.load_artifacts`` (labels, max
length and calibration temperature come from the artefact). ``preprocess`` takes TorchServe's
whole batch, validates each request on its own and tokenises every text of the batch in one
``starrating.encode_batch`` call; ``inference`` runs under ``torch.inference_mode()``;
``postprocess`` answers each request in order: one object for ``{"text": ...}``, a list for
``{"texts": [...]}``, an ``{"error": {...}}`` object (HTTP 400) for a malformed request only.

How a batch is run is configurable per device (``handler.batching`` in ``model-config.yaml``, or
``STARRATING_HANDLER_*`` environment variables): ``padded`` runs the batch as one forward pass
padded to its longest text (right on a GPU); ``sorted`` runs length-sorted sub-batches of
``sub_batch_size`` texts, each trimmed to its own longest text (on a CPU, padding a short review
to the longest one of its batch costs more than batching saves; ``sub_batch_size: 1`` runs one
text at a time).

Review text is never logged.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

from starrating.artifacts import Artifacts, load_artifacts
from starrating.labels import ID2LABEL, NUM_LABELS, id_to_star
from starrating.text import encode_batch, normalize_text

logger = logging.getLogger(__name__)

# Where the archive keeps the save_artifacts folder, relative to TorchServe's model_dir.
MODEL_SUBDIR = "model"
BATCH_METRIC = "StarsHandlerBatches"
Strategy = Literal["padded", "sorted"]
_STRATEGIES: tuple[Strategy, ...] = ("padded", "sorted")
_ENV_PREFIX = "STARRATING_HANDLER_"


class RequestError(ValueError):
    """A request of the batch that cannot be answered; only that request gets the error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def as_answer(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


@dataclass(frozen=True)
class HandlerConfig:
    """Run-time knobs of the handler (``handler:`` section of model-config.yaml, env overrides)."""

    threads: int | None = None
    strategy: Strategy = "padded"
    sub_batch_size: int = 8
    max_texts_per_request: int = 64
    max_text_chars: int = 20_000

    @classmethod
    def resolve(
        cls, section: Mapping[str, Any] | None, device_type: str, env: Mapping[str, str]
    ) -> HandlerConfig:
        """Values from ``section`` (batching per device type), overridden by the environment."""
        section = section or {}
        batching = section.get("batching", {}) or {}
        per_device = batching.get(device_type, batching.get("default", {})) or {}
        raw: dict[str, Any] = {
            "threads": section.get("threads"),
            "strategy": per_device.get("strategy", "padded"),
            "sub_batch_size": per_device.get("sub_batch_size", 8),
            "max_texts_per_request": section.get("max_texts_per_request", 64),
            "max_text_chars": section.get("max_text_chars", 20_000),
        }
        for name in raw:
            value = env.get(_ENV_PREFIX + name.upper())
            if value:
                raw[name] = value
        try:
            threads = int(raw["threads"]) if raw["threads"] not in (None, "") else None
            config = cls(
                threads=threads,
                strategy=str(raw["strategy"]),  # type: ignore[arg-type]
                sub_batch_size=int(raw["sub_batch_size"]),
                max_texts_per_request=int(raw["max_texts_per_request"]),
                max_text_chars=int(raw["max_text_chars"]),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid handler configuration {raw}: {exc}") from exc
        if config.strategy not in _STRATEGIES:
            raise ValueError(f"handler batching strategy must be one of {_STRATEGIES}")
        if min(config.sub_batch_size, config.max_texts_per_request, config.max_text_chars) < 1:
            raise ValueError(f"handler sizes must be positive: {config}")
        if config.threads is not None and config.threads < 1:
            raise ValueError(f"handler threads must be positive, got {config.threads}")
        return config


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


class StarHandler(BaseHandler):  # type: ignore[misc]
    """TorchServe handler for the ``stars`` model."""

    def __init__(self) -> None:
        super().__init__()
        self.artifacts: Artifacts | None = None
        self.config = HandlerConfig()
        self.model_version = "unknown"
        self._batch_metric: Any = None

    def initialize(self, context: Any) -> None:
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        if torch.cuda.is_available() and gpu_id is not None:
            self.device = torch.device(f"cuda:{gpu_id}")
        else:
            self.device = torch.device("cpu")
        yaml_config = getattr(context, "model_yaml_config", None) or {}
        self.config = HandlerConfig.resolve(
            yaml_config.get("handler"), self.device.type, os.environ
        )
        if self.config.threads is not None:
            torch.set_num_threads(self.config.threads)
        self.manifest = context.manifest
        self.model_version = str(self.manifest.get("model", {}).get("modelVersion", "unknown"))
        model_dir = Path(properties["model_dir"]) / MODEL_SUBDIR
        self.artifacts = load_artifacts(model_dir, device=self.device)
        self.model = self.artifacts.model
        metrics = getattr(context, "metrics", None)
        if metrics is not None:
            self._batch_metric = metrics.add_metric_to_cache(
                BATCH_METRIC,
                unit="count",
                dimension_names=["ModelName", "ModelVersion", "BatchSize"],
                metric_type=MetricTypes.COUNTER,
            )
        logger.info(
            "loaded stars model version %s on %s: max_length=%d temperature=%.3f "
            "threads=%d strategy=%s sub_batch_size=%d",
            self.model_version,
            self.device,
            self.artifacts.max_length,
            self.artifacts.temperature,
            torch.get_num_threads(),
            self.config.strategy,
            self.config.sub_batch_size,
        )
        self.initialized = True

    def preprocess(self, data: Sequence[Mapping[str, Any]]) -> PreparedBatch:
        assert self.artifacts is not None, "initialize() must run first"
        self._count_batch(len(data))
        texts: list[str] = []
        slots: list[RequestSlot] = []
        for row in data:
            try:
                request_texts, many = parse_request(row, self.config)
            except RequestError as error:
                slots.append(RequestSlot(error=error))
                continue
            slots.append(RequestSlot(start=len(texts), count=len(request_texts), many=many))
            texts.extend(request_texts)
        if not texts:
            return PreparedBatch(slots, None)
        encoding = encode_batch(self.artifacts.tokenizer, texts, self.artifacts.max_length)
        return PreparedBatch(slots, {k: v.to(self.device) for k, v in encoding.items()})

    def inference(self, data: PreparedBatch, *args: Any, **kwargs: Any) -> ScoredBatch:
        """Calibrated probabilities, one row per valid text, in the order of the batch."""
        assert self.artifacts is not None, "initialize() must run first"
        if data.encoding is None:
            return ScoredBatch(data.slots, None)
        mask = data.encoding["attention_mask"]
        lengths = mask.sum(dim=1)
        right_padded = getattr(self.artifacts.tokenizer, "padding_side", "right") == "right"
        probabilities = torch.empty(len(lengths), NUM_LABELS)
        with torch.inference_mode():
            for rows in sub_batches(lengths.cpu(), self.config):
                rows = rows.to(mask.device)
                longest = int(lengths[rows].max())
                window = slice(0, longest) if right_padded else slice(-longest, None)
                inputs = {k: v[rows][:, window] for k, v in data.encoding.items()}
                logits = self.artifacts.model(**inputs).logits
                probabilities[rows.cpu()] = self.artifacts.probabilities(logits).cpu()
        return ScoredBatch(data.slots, probabilities)

    def postprocess(self, data: ScoredBatch) -> list[Any]:
        """One answer per request, in order: an object, a list of objects, or an error."""
        # load_artifacts has checked that the artefact's id2label is the star scheme.
        per_text: list[dict[str, Any]] = []
        if data.probabilities is not None:
            best = data.probabilities.argmax(dim=1).tolist()
            for row, class_id in zip(data.probabilities.tolist(), best, strict=True):
                per_text.append(
                    {
                        "stars": id_to_star(class_id),
                        "probabilities": {ID2LABEL[i]: p for i, p in enumerate(row)},
                        "model_version": self.model_version,
                    }
                )
        answers: list[Any] = []
        for index, slot in enumerate(data.slots):
            if slot.error is not None:
                self._set_status(index, 400, slot.error.code)
                answers.append(slot.error.as_answer())
            elif slot.many:
                answers.append(per_text[slot.start : slot.start + slot.count])
            else:
                answers.append(per_text[slot.start])
        return answers

    def _count_batch(self, size: int) -> None:
        if self._batch_metric is not None:
            self._batch_metric.add_or_update(
                1, [self.manifest["model"].get("modelName", "stars"), self.model_version, str(size)]
            )

    def _set_status(self, index: int, code: int, phrase: str) -> None:
        if self.context is not None and getattr(self.context, "request_processor", None):
            self.context.set_response_status(code, phrase, idx=index)
