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

Explanations: a request that comes through TorchServe's explanations API
(``/explanations/stars/V``) is answered with its prediction plus the words' integrated-gradients
attributions toward the predicted star (``handlers/explain.py``), with the fp32 weights (loaded
once, on the first explanation, when the predictions run in another precision). TorchServe's
own handler asks only the first request of a batch whether it wants an explanation; this one
asks each, so predictions and explanations can share a batch.

Review text is never logged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

from handlers import MODEL_SUBDIR, RUN_SUBDIR
from handlers.batch import (
    PreparedBatch,
    RequestError,
    RequestSlot,
    ScoredBatch,
    parse_request,
    score,
)
from handlers.config import HandlerConfig
from handlers.explain import explain
from handlers.numerics import (
    NUMERICS_FILE,
    NumericsRecord,
    Precision,
    apply_precision,
    choose_precision,
)
from starrating.artifacts import Artifacts, load_artifacts
from starrating.cpus import available_cpus
from starrating.labels import ID2LABEL, id_to_star, star_to_id
from starrating.service import MODEL_NAME
from starrating.text import encode_batch

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

BATCH_METRIC = "StarsHandlerBatches"


class StarHandler(BaseHandler):  # type: ignore[misc]
    """TorchServe handler for the ``stars`` model (TorchServe wants it alone in its module)."""

    def __init__(self) -> None:
        super().__init__()
        self.artifacts: Artifacts | None = None
        self.config = HandlerConfig()
        self.model_version = "unknown"
        self._batch_metric: Any = None
        self.numerics: NumericsRecord | None = None
        self.precision: Precision = "fp32"
        self.precision_reason = ""
        self._model_dir: Path | None = None
        self._explainer: PreTrainedModel | None = None

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
        # The launcher decides the threads per worker (serving.sizing) and passes them on;
        # told nothing, the handler takes every CPU it may use.
        torch.set_num_threads(
            self.config.threads if self.config.threads is not None else available_cpus()
        )
        self.manifest = context.manifest
        self.model_version = str(self.manifest.get("model", {}).get("modelVersion", "unknown"))
        archive_dir = Path(properties["model_dir"])
        self._model_dir = archive_dir / MODEL_SUBDIR
        artifacts = load_artifacts(self._model_dir, device=self.device)
        self.numerics = NumericsRecord.read(archive_dir / RUN_SUBDIR / NUMERICS_FILE)
        self.precision, self.precision_reason = choose_precision(
            self.config.precision, self.numerics, self.device
        )
        self.artifacts = replace(artifacts, model=apply_precision(artifacts.model, self.precision))
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
            "threads=%d strategy=%s sub_batch_size=%d precision=%s",
            self.model_version,
            self.device,
            self.artifacts.max_length,
            self.artifacts.temperature,
            torch.get_num_threads(),
            self.config.strategy,
            self.config.sub_batch_size,
            self.precision,
        )
        logger.info("numerics %s: %s", self.precision, self.precision_reason)
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
        return ScoredBatch(data.slots, score(self.artifacts, data.encoding, self.config))

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

    def _is_explain(self) -> bool:
        # BaseHandler asks the batch's first request only and then explains all or none;
        # handle() asks every request instead.
        return False

    def handle(self, data: Sequence[Mapping[str, Any]], context: Any) -> list[Any]:
        """Predictions for the batch; the requests that asked for it also get explanations."""
        answers: list[Any] = super().handle(data, context)
        rows = [i for i in range(len(data)) if context.get_request_header(i, "explain") == "True"]
        if rows:
            self._add_explanations(data, answers, rows)
        return answers

    def _add_explanations(
        self, data: Sequence[Mapping[str, Any]], answers: list[Any], rows: list[int]
    ) -> None:
        """Merge attributions into the answers of ``rows``: all their texts in one call."""
        assert self.artifacts is not None, "initialize() must run first"
        texts: list[str] = []
        places: list[tuple[int, int | None]] = []  # (row, index in a "texts" answer, or None)
        for row in rows:
            if isinstance(answers[row], dict) and "error" in answers[row]:
                continue
            request_texts, many = parse_request(data[row], self.config)
            texts.extend(request_texts)
            places.extend((row, i if many else None) for i in range(len(request_texts)))
        if not texts:
            return
        targets = [
            star_to_id((answers[row] if i is None else answers[row][i])["stars"])
            for row, i in places
        ]
        explanations = explain(
            self._explainer_model(),
            self.artifacts.tokenizer,
            texts,
            targets,
            max_length=self.artifacts.max_length,
            steps=self.config.explain_steps,
            internal_batch_size=self.config.explain_internal_batch_size,
        )
        for (row, i), explanation in zip(places, explanations, strict=True):
            extra = {**explanation.as_answer(), "steps": self.config.explain_steps}
            if i is None:
                answers[row] = {**answers[row], **extra}
            else:
                answers[row][i] = {**answers[row][i], **extra}

    def _explainer_model(self) -> PreTrainedModel:
        """The fp32 model: gradients need it (an int8 model has none, bf16 loses precision)."""
        assert self.artifacts is not None and self._model_dir is not None
        if self.precision == "fp32":
            return self.artifacts.model
        if self._explainer is None:
            self._explainer = load_artifacts(self._model_dir, device=self.device).model
        return self._explainer

    def describe_handle(self) -> dict[str, Any]:
        """TorchServe's customized describe (``GET /models/stars/V?customized=true``): the
        numerics this worker serves, why, and the accuracies the archive measured."""
        return {
            "precision": self.precision,
            "precision_reason": self.precision_reason,
            "numerics": self.numerics.to_json() if self.numerics is not None else None,
            "threads": torch.get_num_threads(),
            "device": str(self.device),
        }

    def _count_batch(self, size: int) -> None:
        if self._batch_metric is not None:
            self._batch_metric.add_or_update(
                1,
                [
                    self.manifest["model"].get("modelName", MODEL_NAME),
                    self.model_version,
                    str(size),
                ],
            )

    def _set_status(self, index: int, code: int, phrase: str) -> None:
        if self.context is not None and getattr(self.context, "request_processor", None):
            self.context.set_response_status(code, phrase, idx=index)
