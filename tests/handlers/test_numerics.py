"""Inference numerics (auto, fp32, bf16, int8): the archive's record, the handler's choice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from handlers import RUN_SUBDIR
from handlers.config import HandlerConfig
from handlers.numerics import (
    CHANGED_SIGNIFICANCE,
    NUMERICS_FILE,
    NumericsRecord,
    apply_precision,
    changed_above_tolerance,
    choose_precision,
    measure_numerics,
)
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
    assert HandlerConfig.resolve(section, "cpu", {}).precision == "auto"
    assert HandlerConfig.resolve(section, "cuda", {}).precision == "auto"
    env = {"STARRATING_HANDLER_PRECISION": "int8"}
    assert HandlerConfig.resolve(section, "cpu", env).precision == "int8"
    with pytest.raises(ValueError, match="precision"):
        HandlerConfig.resolve(section, "cpu", {"STARRATING_HANDLER_PRECISION": "int4"})


CPU = torch.device("cpu")
MEASURED = {"fp32": 0.660, "bf16": 0.658, "int8": 0.640}


def record(kept: tuple[str, ...], requested: str = "auto") -> NumericsRecord:
    refused = {p: "-2.00 accuracy points" for p in ("bf16", "int8") if p not in kept}
    return NumericsRecord(
        requested=requested,  # type: ignore[arg-type]
        split="validation.jsonl",
        rows=500,
        accuracy=MEASURED,
        kept=kept,  # type: ignore[arg-type]
        refused=refused,
    )


def test_auto_serves_the_fastest_kept_numerics_the_device_runs_natively(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("handlers.numerics.has_fast_bf16", lambda device: True)
    assert choose_precision("auto", record(("fp32", "bf16", "int8")), CPU)[0] == "bf16"
    assert choose_precision("auto", record(("fp32", "int8")), CPU)[0] == "int8"
    monkeypatch.setattr("handlers.numerics.has_fast_bf16", lambda device: False)
    precision, why = choose_precision("auto", record(("fp32", "bf16", "int8")), CPU)
    assert precision == "int8" and "-2.00 accuracy points" in why
    precision, why = choose_precision("auto", record(("fp32", "bf16")), CPU)
    assert precision == "fp32"
    assert "int8: -2.00 accuracy points" in why and "no native bf16" in why


def test_explicit_numerics_win_over_auto_and_an_old_archive_serves_fp32() -> None:
    assert choose_precision("int8", record(("fp32",)), CPU)[0] == "int8"
    assert choose_precision("auto", record(("fp32",), requested="bf16"), CPU)[0] == "bf16"
    precision, why = choose_precision("auto", None, CPU)
    assert precision == "fp32" and NUMERICS_FILE in why


def test_measure_numerics_keeps_what_stays_within_half_a_point(
    handler_model_dir: Path,
) -> None:
    from starrating.artifacts import load_artifacts

    artifacts = load_artifacts(handler_model_dir / "model")
    stars = [(i % 5) + 1 for i in range(len(TEXTS * 5))]
    measured = measure_numerics(artifacts, TEXTS * 5, stars)
    assert set(measured.accuracy) == {"fp32", "bf16", "int8"}
    assert measured.rows == 20 and measured.requested == "auto"
    for name in ("bf16", "int8"):
        lost = 100 * (measured.accuracy["fp32"] - measured.accuracy[name])
        changed = 100 * measured.changed[name]
        # A numerics can only move accuracy by the share of answers it changes.
        assert abs(lost) <= changed + 1e-9
        significantly_more = (
            changed_above_tolerance(changed / 100, measured.rows) < CHANGED_SIGNIFICANCE
        )
        assert (name in measured.kept) == (lost <= 0.5 and not significantly_more)
        assert (name in measured.refused) == (name not in measured.kept)
    # The caller's fp32 model is untouched (bf16 is measured on a copy).
    assert {p.dtype for p in artifacts.model.parameters()} == {torch.float32}
    assert NumericsRecord.from_json(measured.to_json()) == measured
    with pytest.raises(ValueError, match="malformed"):
        NumericsRecord.from_json({"requested": "fp8"})


def test_the_handler_serves_what_the_archive_kept_and_describes_it(
    handler_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("handlers.numerics.has_fast_bf16", lambda device: False)
    archive = tmp_path / "extracted"
    (archive / RUN_SUBDIR).mkdir(parents=True)
    (archive / "model").symlink_to(handler_model_dir / "model", target_is_directory=True)
    stored = record(("fp32", "int8"))
    (archive / RUN_SUBDIR / NUMERICS_FILE).write_text(json.dumps(stored.to_json()))
    handler = StarHandler()
    handler.initialize(make_context(archive))
    assert handler.precision == "int8"
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in handler.model.modules())
    described = handler.describe_handle()
    assert described["precision"] == "int8" and described["numerics"] == stored.to_json()
    assert "CPU" in described["precision_reason"]


@pytest.mark.parametrize(
    ("changed", "rows", "kept"),
    [
        (2, 370, True),  # bf16 on the CPU with AVX512-BF16: two near-ties of 370
        (4, 370, True),
        (5, 370, False),
        (24, 370, False),  # int8: level on validation, -1.6 points on test
        (0, 20, True),
        (2, 20, False),
    ],
)
def test_a_changed_share_is_refused_only_when_significantly_above_half_a_percent(
    changed: int, rows: int, kept: bool
) -> None:
    assert (changed_above_tolerance(changed / rows, rows) >= CHANGED_SIGNIFICANCE) == kept
