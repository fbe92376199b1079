"""The handler in-process with a TorchServe context: batching, errors, parity with training."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from handlers.config import HandlerConfig
from handlers.star_handler import StarHandler
from starrating.artifacts import load_artifacts
from starrating.cpus import available_cpus
from starrating.text import encode_batch
from tests.handlers.conftest import MODEL_CONFIG, make_context, start_batch
from training.data.streaming import ReviewStream

RunBatch = Callable[[list[dict[str, Any]]], tuple[list[Any], list[int]]]
SAMPLE_REVIEWS = [
    "I loved it! I will recommend this to everyone.",
    "It's OK.",
    "Really bad. I hope they don't make this anymore.",
]


def direct_probabilities(model_dir: Path, texts: list[str]) -> torch.Tensor:
    """Calling the model ourselves, one text at a time, through load_artifacts."""
    artifacts = load_artifacts(model_dir)
    rows = []
    with torch.inference_mode():
        for text in texts:
            logits = artifacts.model(**encode_batch(artifacts.tokenizer, [text])).logits
            rows.append(artifacts.probabilities(logits)[0])
    return torch.stack(rows)


def as_tensor(answer: dict[str, Any]) -> torch.Tensor:
    return torch.tensor([answer["probabilities"][str(s)] for s in range(1, 6)])


def test_batch_of_n_requests_gets_n_answers_in_order(run_batch: RunBatch) -> None:
    rows = [{"body": {"text": t}} for t in SAMPLE_REVIEWS * 3]
    answers, statuses = run_batch(rows)
    assert len(answers) == len(rows)
    assert statuses == [200] * len(rows)
    for answer in answers:
        assert answer["stars"] in {1, 2, 3, 4, 5}
        assert set(answer["probabilities"]) == {"1", "2", "3", "4", "5"}
        assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert answer["model_version"] == "1.0"
    # The same text answers the same wherever it sits in the batch.
    for first, again in ((0, 3), (2, 8)):
        assert answers[first]["stars"] == answers[again]["stars"]
        torch.testing.assert_close(as_tensor(answers[first]), as_tensor(answers[again]))


def test_predictions_equal_calling_the_model_directly(
    run_batch: RunBatch, tiny_model_dir: Path
) -> None:
    texts = [*SAMPLE_REVIEWS, "great sound, the battery broke after a day", "ok"]
    answers, _ = run_batch([{"body": {"text": t}} for t in texts])
    expected = direct_probabilities(tiny_model_dir, texts)
    got = torch.stack([as_tensor(a) for a in answers])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert [a["stars"] for a in answers] == (expected.argmax(dim=1) + 1).tolist()


def test_malformed_requests_get_their_own_errors_and_do_not_fail_the_batch(
    run_batch: RunBatch,
) -> None:
    rows: list[dict[str, Any]] = [
        {"body": {"text": SAMPLE_REVIEWS[0]}},
        {"body": b"{not json"},
        {"body": {"text": "   \x00 "}},
        {"body": {"texts": []}},
        {"body": {"review": "x"}},
        {"body": {"text": "a", "texts": ["b"]}},
        {"body": {"texts": ["fine", 3]}},
        {"body": {"texts": ["x"] * 65}},
        {"body": {"text": "x" * 20_001}},
        {"body": b"\xff\xfe"},
        {"data": json.dumps({"text": SAMPLE_REVIEWS[2]})},
        {"body": bytearray(json.dumps({"texts": [SAMPLE_REVIEWS[1]]}).encode())},
    ]
    answers, statuses = run_batch(rows)
    codes = [a["error"]["code"] if isinstance(a, dict) and "error" in a else None for a in answers]
    assert codes == [
        None,
        "invalid_json",
        "empty_text",
        "invalid_request",
        "invalid_request",
        "invalid_request",
        "invalid_request",
        "too_many_texts",
        "text_too_long",
        "invalid_encoding",
        None,
        None,
    ]
    assert statuses == [200] + [400] * 9 + [200, 200]
    assert answers[0]["stars"] in range(1, 6)
    assert answers[10]["stars"] in range(1, 6)
    assert isinstance(answers[11], list) and len(answers[11]) == 1


def test_a_batch_of_only_bad_requests_answers_each_with_an_error(run_batch: RunBatch) -> None:
    answers, statuses = run_batch([{"body": b""}, {"body": {"text": ""}}])
    assert [a["error"]["code"] for a in answers] == ["invalid_json", "empty_text"]
    assert statuses == [400, 400]


def test_multi_text_request_answers_a_list_matching_single_requests(run_batch: RunBatch) -> None:
    singles_rows: list[dict[str, Any]] = [{"body": {"text": t}} for t in SAMPLE_REVIEWS]
    rows: list[dict[str, Any]] = [
        {"body": {"texts": SAMPLE_REVIEWS}},
        *singles_rows,
        {"body": {"texts": SAMPLE_REVIEWS[:1]}},
    ]
    answers, _ = run_batch(rows)
    many, singles, one = answers[0], answers[1:4], answers[4]
    assert isinstance(many, list) and len(many) == 3
    for listed, single in zip(many, singles, strict=True):
        assert listed["stars"] == single["stars"]
        torch.testing.assert_close(as_tensor(listed), as_tensor(single), atol=1e-5, rtol=1e-4)
    assert isinstance(one, list) and one[0]["stars"] == singles[0]["stars"]


@pytest.mark.parametrize(
    ("strategy", "sub_batch_size"), [("padded", 8), ("sorted", 1), ("sorted", 3)]
)
def test_every_batching_strategy_gives_the_same_answers(
    handler_model_dir: Path, tiny_model_dir: Path, strategy: str, sub_batch_size: int
) -> None:
    config = yaml.safe_load(MODEL_CONFIG.read_text())
    config["handler"]["batching"]["cpu"] = {"strategy": strategy, "sub_batch_size": sub_batch_size}
    context = make_context(handler_model_dir, yaml_config=config)
    handler = StarHandler()
    handler.initialize(context)
    assert (handler.config.strategy, handler.config.sub_batch_size) == (strategy, sub_batch_size)
    texts = [
        "ok",
        *SAMPLE_REVIEWS,
        "the worst quality, it broke after a day and the refund was poor",
        "fine",
    ]
    start_batch(context, len(texts))
    answers = handler.handle([{"body": {"text": t}} for t in texts], context)
    expected = direct_probabilities(tiny_model_dir, texts)
    torch.testing.assert_close(
        torch.stack([as_tensor(a) for a in answers]), expected, atol=1e-5, rtol=1e-4
    )


def test_handler_tokenises_exactly_like_training(handler_model_dir: Path, tmp_path: Path) -> None:
    """Parity: the handler's input_ids equal the training stream's for the same reviews."""
    context = make_context(handler_model_dir)
    handler = StarHandler()
    handler.initialize(context)
    assert handler.artifacts is not None
    texts = [
        "  I LOVED it!\tWill   recommend\n",
        "caf\u0065\u0301 was ok\x00",  # decomposed é and a NUL byte: normalised on both sides
        "really bad " * 50,  # longer than max_length: truncated the same way
        "It's OK.",
    ]
    split = tmp_path / "test.jsonl"
    split.write_text("".join(json.dumps({"text": t, "stars": 3}) + "\n" for t in texts))
    stream = ReviewStream(
        [split],
        handler.artifacts.tokenizer,
        batch_size=len(texts),
        max_length=handler.artifacts.max_length,
        shuffle=False,
    )
    training_batch = next(iter(stream))

    start_batch(context, len(texts))
    prepared = handler.preprocess([{"body": {"text": t}} for t in texts])
    assert prepared.encoding is not None
    assert torch.equal(prepared.encoding["input_ids"], training_batch["input_ids"])
    assert torch.equal(prepared.encoding["attention_mask"], training_batch["attention_mask"])
    assert prepared.encoding["input_ids"].shape[1] == handler.artifacts.max_length


def test_batch_sizes_are_counted_in_a_torchserve_metric(
    handler_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    context = make_context(handler_model_dir, version="2.0")
    handler = StarHandler()
    handler.initialize(context)
    start_batch(context, 3)
    with caplog.at_level(logging.INFO):
        handler.handle([{"body": {"text": t}} for t in SAMPLE_REVIEWS], context)
    metric_lines = [
        r.getMessage() for r in caplog.records if "StarsHandlerBatches" in r.getMessage()
    ]
    assert len(metric_lines) == 1
    assert "ModelName:stars,ModelVersion:2.0,BatchSize:3" in metric_lines[0]


def test_review_text_is_never_logged(
    handler_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "zebra quantum marmalade"
    with caplog.at_level(logging.DEBUG):
        context = make_context(handler_model_dir)
        handler = StarHandler()
        handler.initialize(context)
        start_batch(context, 2)
        handler.handle(
            [{"body": {"text": secret}}, {"body": {"text": secret + "\x00" * 3}}], context
        )
        start_batch(context, 1)
        handler.handle([{"body": json.dumps({"texts": [secret, ""]})}], context)
    assert caplog.records, "the handler should log something (load, metrics)"
    assert secret not in caplog.text


def test_config_reads_yaml_per_device_and_env_overrides() -> None:
    section = yaml.safe_load(MODEL_CONFIG.read_text())["handler"]
    cpu = HandlerConfig.resolve(section, "cpu", {})
    cuda = HandlerConfig.resolve(section, "cuda", {})
    assert (cpu.strategy, cuda.strategy) == ("sorted", "padded")
    assert cpu.threads is None  # the launcher's STARRATING_HANDLER_THREADS decides
    env = {
        "STARRATING_HANDLER_THREADS": "2",
        "STARRATING_HANDLER_STRATEGY": "padded",
        "STARRATING_HANDLER_SUB_BATCH_SIZE": "1",
    }
    tuned = HandlerConfig.resolve(section, "cpu", env)
    assert (tuned.threads, tuned.strategy, tuned.sub_batch_size) == (2, "padded", 1)
    with pytest.raises(ValueError, match="strategy"):
        HandlerConfig.resolve(section, "cpu", {"STARRATING_HANDLER_STRATEGY": "fastest"})
    with pytest.raises(ValueError, match="threads"):
        HandlerConfig.resolve(section, "cpu", {"STARRATING_HANDLER_THREADS": "0"})


def test_without_a_thread_setting_the_handler_uses_the_cpus_it_may(
    handler_model_dir: Path,
) -> None:
    # Pinned to one CPU (as `taskset` or a cpuset would), the handler takes one thread, not
    # one per core of the host.
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        StarHandler().initialize(make_context(handler_model_dir))
        assert available_cpus() == 1
        assert torch.get_num_threads() == 1
    finally:
        os.sched_setaffinity(0, allowed)


def test_threads_per_worker_come_from_config(handler_model_dir: Path) -> None:
    before = torch.get_num_threads()
    try:
        config = yaml.safe_load(MODEL_CONFIG.read_text())
        config["handler"]["threads"] = 1
        StarHandler().initialize(make_context(handler_model_dir, yaml_config=config))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
