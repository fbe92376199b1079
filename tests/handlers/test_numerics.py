"""Opt-in inference numerics (bf16, dynamic int8) in the handler and its configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from handlers.config import HandlerConfig
from handlers.numerics import apply_precision
from handlers.star_handler import StarHandler
from tests.conftest import build_tiny_model
from tests.handlers.conftest import MODEL_CONFIG, make_context, start_batch

TEXTS = ["i loved it, will recommend", "it's ok", "really bad, broke after a day", "fine"]


def answers_with(handler_model_dir: Path, precision: str) -> tuple[StarHandler, list[Any]]:
    config = yaml.safe_load(MODEL_CONFIG.read_text())
    config["handler"]["batching"]["cpu"]["precision"] = precision
    context = make_context(handler_model_dir, yaml_config=config)
    handler = StarHandler()
    before = torch.get_num_threads()
    try:
        handler.initialize(context)
        start_batch(context, len(TEXTS))
        answers = handler.handle([{"body": {"text": t}} for t in TEXTS], context)
    finally:
        torch.set_num_threads(before)
    return handler, answers


def probabilities(answers: list[Any]) -> torch.Tensor:
    return torch.tensor([[a["probabilities"][str(s)] for s in range(1, 6)] for a in answers])


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_answers_close_to_fp32(handler_model_dir: Path, precision: str) -> None:
    fp32_handler, fp32 = answers_with(handler_model_dir, "fp32")
    handler, reduced = answers_with(handler_model_dir, precision)
    assert handler.config.precision == precision
    assert fp32_handler.config.precision == "fp32"
    assert [set(a) for a in reduced] == [set(a) for a in fp32]
    torch.testing.assert_close(probabilities(reduced), probabilities(fp32), atol=0.05, rtol=0)
    assert all(a["stars"] in (1, 2, 3, 4, 5) for a in reduced)


def test_int8_quantizes_every_linear_layer_and_bf16_casts_weights() -> None:
    int8 = apply_precision(build_tiny_model()[0].eval(), "int8")
    assert not any(type(m) is torch.nn.Linear for m in int8.modules())
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in int8.modules())
    bf16 = apply_precision(build_tiny_model()[0].eval(), "bf16")
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    fp32 = build_tiny_model()[0]
    assert apply_precision(fp32, "fp32") is fp32
    with pytest.raises(ValueError, match="precision must be one of"):
        apply_precision(fp32, "fp8")


def test_precision_comes_from_config_per_device_and_env() -> None:
    section = yaml.safe_load(MODEL_CONFIG.read_text())["handler"]
    assert HandlerConfig.resolve(section, "cpu", {}).precision == "fp32"
    env = {"STARRATING_HANDLER_PRECISION": "int8"}
    assert HandlerConfig.resolve(section, "cpu", env).precision == "int8"
    with pytest.raises(ValueError, match="precision"):
        HandlerConfig.resolve(section, "cpu", {"STARRATING_HANDLER_PRECISION": "int4"})
