"""``make gpu-check`` on a machine without a GPU: the refusal, the arguments, and each
measurement run for real on the CPU at a tiny size (the code path the GPU runs)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from handlers import MODEL_SUBDIR
from handlers.star_handler import StarHandler
from loadtests import gpu_check
from loadtests.gpu_check import (
    EXIT_NO_CUDA,
    INFERENCE_BATCH_SIZES,
    GpuCheckConfig,
    TrainingCase,
    TrainingRun,
    card_slug,
    handler_config,
    load_model,
    measure_serving,
    measure_training,
    rate_as_handler,
    run_ddp_training,
    run_gpu_check,
    training_batches,
    write_report,
)
from starrating.artifacts import load_artifacts
from tests.gpu.threads import one_torch_thread
from tests.handlers.conftest import make_context, start_batch
from training.config import TrainConfig
from training.distributed import DistributedContext
from training.loop import Trainer

REPO = Path(__file__).resolve().parents[2]
CPU = DistributedContext(0, 0, 1, torch.device("cpu"), True)
# What a bare GPU machine may lack: the check must run without any of them.
ABSENT = ("mlflow", "ts", "model_archiver", "sklearn", "scipy", "matplotlib", "pyarrow", "fastapi")


@pytest.fixture(autouse=True)
def _one_torch_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with one_torch_thread(monkeypatch):
        yield


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible")
def test_without_a_gpu_it_says_so_and_exits_with_its_own_status(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--out", str(out), "--seconds-per-case", "1"]) == EXIT_NO_CUDA == 3
    assert "no CUDA GPU is visible" in caplog.text
    assert not out.exists()


def test_help_lists_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    for option in ("--model", "--out", "--seconds-per-case", "--batch-size", "status 3"):
        assert option in shown


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seconds-per-case", "0"], "must be in (0, 25]"),
        (["--seconds-per-case", "26"], "stays within 8 minutes"),
        (["--seconds-per-case", "fast"], "not a number"),
        (["--batch-size", "0"], "must be at least 1"),
        (["--batch-size", "2.5"], "not a whole number"),
        (["--unknown"], "unrecognized arguments: --unknown"),
    ],
)
def test_bad_arguments_fail_at_once_naming_the_problem(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_out_must_be_a_file_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--out must be a file path" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("NVIDIA H100 80GB HBM3", "nvidia-h100-80gb-hbm3"),
        ("NVIDIA A100-SXM4-40GB", "nvidia-a100-sxm4-40gb"),
        ("Tesla T4", "tesla-t4"),
        ("  ../weird/ name  ", "weird-name"),
        ("???", "unknown"),
    ],
)
def test_the_card_name_becomes_a_safe_file_name(name: str, slug: str) -> None:
    assert card_slug(name) == slug


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_steps_and_counts_samples(tiny_model_dir: Path, precision: str) -> None:
    case = TrainingCase(precision, str(tiny_model_dir), batch_size=4, steps=2, warmup_steps=1)  # type: ignore[arg-type]
    result = measure_training(CPU, case)
    assert (result.precision, result.steps, result.world_size, result.global_batch) == (
        precision,
        2,
        1,
        4,
    )
    assert result.samples_per_s > 0
    assert math.isfinite(result.final_loss)


def test_the_gpu_check_takes_the_training_loops_step(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    """From the same weights, on the same batch with the same dropout, one step of the GPU
    check's run leaves the weights one step of ``training.loop.Trainer`` leaves. Every part of
    the recipe a copy could get wrong is on: weight decay (not on biases and norms), the ordinal
    term of the loss, clipping; no warmup, so the first step moves the weights."""
    config = TrainConfig(
        out=tmp_path / "run",
        data=tiny_data_dir,
        model=str(tiny_model_dir),
        max_length=64,
        max_steps=10,
        lr=1e-2,
        weight_decay=0.5,
        ordinal_weight=0.5,
        grad_clip=0.1,
        warmup_ratio=0.0,
        num_workers=0,
        progress=False,
        tracking=False,
    )
    trainer = Trainer(config, CPU)
    trainer.model.train()
    model, tokenizer = load_model(str(tiny_model_dir), config.max_length, CPU.device)
    model.load_state_dict(trainer.model.state_dict())
    run = TrainingRun.create(model, "fp32", CPU, total_steps=10, settings=config)
    batch = training_batches(tokenizer, 4, config.max_length, CPU.device, seed=0)[0]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}

    torch.manual_seed(0)
    trainer.training_step.take(batch)
    torch.manual_seed(0)
    run.train_step(batch)

    groups = [
        (len(g["params"]), g["weight_decay"]) for g in run.training_step.optimizer.param_groups
    ]
    assert groups == [(len(g["params"]), g["weight_decay"]) for g in trainer.optimizer.param_groups]
    assert [decay for _, decay in groups] == [0.5, 0.0] and all(n for n, _ in groups)
    stepped = dict(trainer.model.named_parameters())
    for name, param in run.model.named_parameters():
        torch.testing.assert_close(param, stepped[name], rtol=0, atol=0, msg=name)
    assert sum(not torch.equal(p, before[n]) for n, p in model.named_parameters()) > 20


@pytest.mark.slow
def test_ddp_training_runs_one_process_per_device(tiny_model_dir: Path) -> None:
    cases = [TrainingCase("fp32", str(tiny_model_dir), batch_size=2, steps=2, warmup_steps=1)]
    (result,) = run_ddp_training(cases, world_size=2, timeout_s=120)
    assert (result.world_size, result.global_batch, result.steps) == (2, 4, 2)
    assert result.samples_per_s > 0


def test_inference_is_the_handlers_code_path(tiny_model_dir: Path, tmp_path: Path) -> None:
    texts = ["I loved it, works well.", "Really bad.", "ok " * 40, "Broke after a day!"]
    model_dir = tmp_path / "extracted"
    shutil.copytree(tiny_model_dir, model_dir / MODEL_SUBDIR)
    context = make_context(model_dir)
    handler = StarHandler()
    handler.initialize(context)
    start_batch(context, len(texts))
    answers = handler.handle([{"body": {"text": t}} for t in texts], context)
    from_handler = torch.tensor(
        [[a["probabilities"][str(s)] for s in range(1, 6)] for a in answers]
    )

    cpu = torch.device("cpu")
    ours = rate_as_handler(load_artifacts(tiny_model_dir), texts, handler_config(cpu), cpu)
    torch.testing.assert_close(ours, from_handler)


def test_inference_measures_every_precision_and_batch_size(tiny_model_dir: Path) -> None:
    results = measure_serving(
        str(tiny_model_dir), torch.device("cpu"), batch_sizes=(1, 4), seconds=0.01, min_batches=2
    )
    assert [(r.precision, r.batch_size) for r in results] == [
        ("fp32", 1),
        ("fp32", 4),
        ("bf16", 1),
        ("bf16", 4),
    ]
    for result in results:
        assert result.strategy == handler_config(torch.device("cpu")).strategy
        assert result.batches >= 2
        assert result.reviews_per_s > 0
        assert 0 < result.p50_ms <= result.p95_ms


@pytest.mark.slow
def test_the_whole_check_measures_everything_and_writes_its_report(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """What ``make gpu-check`` runs, on the CPU: the JSON a GPU run would write."""
    config = GpuCheckConfig(str(tiny_model_dir), seconds_per_case=0.05, batch_size=4)
    out = write_report(run_gpu_check(config, torch.device("cpu")), tmp_path / "gpu.json")
    report = json.loads(out.read_text())

    assert [r["precision"] for r in report["training"]] == ["fp32", "bf16", "fp16"]
    assert all(r["samples_per_s"] > 0 and r["world_size"] == 1 for r in report["training"])
    assert set(report["training_speedup_over_fp32"]) == {"bf16", "fp16"}
    assert [(r["precision"], r["batch_size"]) for r in report["inference"]] == [
        (precision, size) for precision in ("fp32", "bf16") for size in INFERENCE_BATCH_SIZES
    ]


def test_the_report_goes_to_docs_bench_named_after_the_card(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = write_report({"card": "NVIDIA H200", "ok": True}, None)
    assert out == Path("docs/bench/gpu-nvidia-h200.json")
    assert json.loads(out.read_text())["card"] == "NVIDIA H200"


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible")
def test_on_a_bare_machine_without_a_gpu_it_runs_and_says_there_is_no_gpu(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A fresh interpreter without MLflow, TorchServe, scikit-learn or SciPy: the measurements
    run (one tiny step each), the resume test imports, and ``python -m loadtests.gpu_check``
    exits with its own status."""
    out = tmp_path / "gpu.json"
    script = textwrap.dedent(
        f"""
        import runpy, sys
        for name in {ABSENT!r}:
            sys.modules[name] = None  # as if not installed
        import torch
        from loadtests.gpu_check import TrainingCase, measure_serving, measure_training
        import tests.gpu.test_resume  # what make gpu-check runs after the measurements
        from training.distributed import DistributedContext

        cpu = DistributedContext(0, 0, 1, torch.device("cpu"), True)
        case = TrainingCase("fp16", {str(tiny_model_dir)!r}, batch_size=2, steps=1, warmup_steps=0)
        measure_training(cpu, case)
        measure_serving({str(tiny_model_dir)!r}, cpu.device, batch_sizes=(2,), seconds=0.01)
        sys.argv = ["gpu_check", "--out", {str(out)!r}, "--seconds-per-case", "1"]
        runpy.run_module("loadtests.gpu_check", run_name="__main__", alter_sys=True)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == EXIT_NO_CUDA == 3, result.stderr
    assert "no CUDA GPU is visible" in result.stderr
    assert not out.exists()
