"""A training run killed with SIGKILL resumes from its newest checkpoint on the device.

The run is the GPU check's (``loadtests.gpu_check.TrainingRun``: the training loop's step, its
AdamW, scaler and autocast, the linear schedule) with ``training.checkpoint``'s checkpoints,
including the device's RNG state. A spawned process trains and writes a checkpoint every few
steps; it is SIGKILLed between two checkpoints and the run is resumed here. The step count must
go on from that checkpoint to the end, every loss must be finite, and the steps trained twice
must give the same losses (up to a GPU's non-deterministic reductions).

On the CPU always, at a tiny size (the tiny test model, fp16 autocast with a loss scaler, whose
state the checkpoint must carry); on CUDA where a device is visible (``-m gpu``; ``make
gpu-check`` runs it), with the bundled MiniLM at the sizes of a real run, in bf16 where the GPU
supports it, else fp16.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from loadtests.gpu_check import TrainingRun, load_model, training_batches
from starrating.models import DEFAULT_MODEL
from tests.gpu.threads import one_torch_thread
from training import checkpoint as ckpt
from training.config import TrainConfig
from training.distributed import DistributedContext
from training.step import ResolvedPrecision

# The steps trained before the kill and again after it see the same weights, batches and
# dropout masks: their losses agree up to the GPU's non-deterministic reductions, and exactly
# on the CPU (where the tiny model's losses differ little whatever the dropout masks).
GPU_LOSS_RTOL = 1e-3
STARTUP_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class ResumeCase:
    """Checkpoint every ``checkpoint_every`` steps, SIGKILL once step ``kill_after_step`` is
    done (between two checkpoints), resume to ``total_steps``."""

    device: str
    precision: ResolvedPrecision
    model: str | None = None
    batch_size: int = 32
    checkpoint_every: int = 20
    kill_after_step: int = 50
    total_steps: int = 120
    loss_rtol: float = GPU_LOSS_RTOL


@dataclass(frozen=True)
class ResumeResult:
    checkpoint_every: int
    total_steps: int
    killed: bool
    last_step_before_kill: int
    resumed_from_step: int | None
    first_step_after_resume: int | None
    final_step: int | None
    losses_finite: bool
    steps_trained_twice: int
    max_rel_loss_diff: float | None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def checkpoint_of(run: TrainingRun) -> dict[str, Any]:
    """What ``training.checkpoint.save_checkpoint`` needs to continue ``run``."""
    return {
        "step": run.step,
        "epoch": 0,
        "batches": run.step,
        "world_size": 1,
        "model": run.model.state_dict(),
        "optimizer": run.training_step.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.training_step.scaler.state_dict(),
        "rng": ckpt.capture_rng(run.device),
    }


def restore(run: TrainingRun, saved: dict[str, Any]) -> None:
    run.model.load_state_dict(saved["model"])
    run.training_step.optimizer.load_state_dict(saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    run.training_step.scaler.load_state_dict(saved["scaler"])
    ckpt.restore_rng(saved["rng"], run.device)
    run.step = int(saved["step"])


def train_with_checkpoints(case: ResumeCase, directory: Path, progress: Path) -> int | None:
    """Train to ``case.total_steps`` from the newest checkpoint in ``directory`` (if any),
    writing one ``{"step", "loss"}`` line per step to ``progress`` and a checkpoint every
    ``case.checkpoint_every`` steps; the step it resumed from."""
    device = torch.device(case.device)
    settings = TrainConfig(out=directory)
    torch.manual_seed(settings.seed)
    model, tokenizer = load_model(case.model, settings.max_length, device)
    batches = training_batches(tokenizer, case.batch_size, settings.max_length, device, seed=0)
    ctx = DistributedContext(0, 0, 1, device, True)
    run = TrainingRun.create(model, case.precision, ctx, case.total_steps, settings)
    found = ckpt.load_latest_checkpoint(directory)
    if found is not None:
        restore(run, found[1])
    resumed_from = run.step if found is not None else None
    with progress.open("a", encoding="utf-8") as out:
        while run.step < case.total_steps:
            loss = float(run.train_step(batches[run.step % len(batches)]))
            out.write(json.dumps({"step": run.step, "loss": loss}) + "\n")
            out.flush()
            if run.step % case.checkpoint_every == 0:
                ckpt.save_checkpoint(directory, checkpoint_of(run), keep=settings.keep_checkpoints)
    return resumed_from


def _resume_worker(case: ResumeCase, directory: str, progress: str) -> None:
    train_with_checkpoints(case, Path(directory), Path(progress))


def read_progress(path: Path) -> dict[int, float]:
    """Loss by step from a progress file; a line cut short by the kill is left out."""
    losses: dict[int, float] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            losses[int(row["step"])] = float(row["loss"])
    return losses


def _wait_for_step(process: Any, progress: Path, step: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while max(read_progress(progress), default=0) < step:
        if not process.is_alive():
            raise AssertionError(f"the run to be killed exited with {process.exitcode} early")
        if time.monotonic() > deadline:
            raise AssertionError(f"the run to be killed did not reach step {step} in time")
        time.sleep(0.01)


def check_resume(case: ResumeCase, timeout_s: float = STARTUP_TIMEOUT_S) -> ResumeResult:
    """Train in a spawned process, SIGKILL it after ``case.kill_after_step``, resume here."""
    with tempfile.TemporaryDirectory(prefix="starrating-resume-") as tmp:
        directory, killed_log, resumed_log = Path(tmp), Path(tmp) / "a", Path(tmp) / "b"
        process = multiprocessing.get_context("spawn").Process(
            target=_resume_worker, args=(case, str(directory / "ckpt"), str(killed_log))
        )
        process.start()
        try:
            _wait_for_step(process, killed_log, case.kill_after_step, timeout_s)
            process.kill()  # SIGKILL
        finally:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
        before = read_progress(killed_log)
        resumed_from = train_with_checkpoints(case, directory / "ckpt", resumed_log)
        after = read_progress(resumed_log)
    return judge_resume(case, process.exitcode == -signal.SIGKILL, before, resumed_from, after)


def judge_resume(
    case: ResumeCase,
    killed: bool,
    before: dict[int, float],
    resumed_from: int | None,
    after: dict[int, float],
) -> ResumeResult:
    """Whether the resumed run went on from its checkpoint and repeated the lost steps."""
    problems = []
    last = max(before, default=0)
    if not killed:
        problems.append("the run was not killed by SIGKILL mid-run")
    if resumed_from is None:
        problems.append("no checkpoint to resume from")
    elif resumed_from % case.checkpoint_every or resumed_from > last:
        problems.append(f"resumed from step {resumed_from}, not a checkpoint of the killed run")
    first, final = min(after, default=None), max(after, default=None)
    if resumed_from is not None and first != resumed_from + 1:
        problems.append(f"the resumed run began at step {first}, not {resumed_from + 1}")
    if final != case.total_steps or len(after) != case.total_steps - (resumed_from or 0):
        problems.append(f"the resumed run did not step on to {case.total_steps}")
    finite = all(math.isfinite(v) for v in [*before.values(), *after.values()])
    if not finite:
        problems.append("a loss was not finite")
    twice = sorted(set(before) & set(after))
    diff = None
    if twice:
        diff = max(abs(after[s] - before[s]) / max(abs(before[s]), 1e-12) for s in twice)
        if not diff <= case.loss_rtol:
            problems.append(f"the steps trained twice differ in loss by {diff:.2e} (relative)")
    return ResumeResult(
        checkpoint_every=case.checkpoint_every,
        total_steps=case.total_steps,
        killed=killed,
        last_step_before_kill=last,
        resumed_from_step=resumed_from,
        first_step_after_resume=first,
        final_step=final,
        losses_finite=finite,
        steps_trained_twice=len(twice),
        max_rel_loss_diff=diff,
        problems=problems,
    )


def _case(device: str, tiny_model_dir: Path) -> ResumeCase:
    if device == "cpu":
        return ResumeCase(
            "cpu",
            "fp16",
            str(tiny_model_dir),
            batch_size=4,
            checkpoint_every=5,
            kill_after_step=12,
            total_steps=40,
            loss_rtol=0.0,
        )
    precision: ResolvedPrecision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return ResumeCase("cuda:0", precision, DEFAULT_MODEL)


@pytest.mark.slow
@pytest.mark.parametrize(
    "device",
    [
        pytest.param("cpu", id="cpu"),
        pytest.param(
            "cuda",
            id="cuda",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
            ],
        ),
    ],
)
def test_a_run_killed_with_sigkill_resumes_from_its_checkpoint(
    device: str, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = _case(device, tiny_model_dir)
    with one_torch_thread(monkeypatch):
        result = check_resume(case)
    assert result.ok, result.problems
    assert result.killed
    assert result.resumed_from_step is not None
    assert result.resumed_from_step % case.checkpoint_every == 0
    assert result.first_step_after_resume == result.resumed_from_step + 1
    assert case.kill_after_step <= result.last_step_before_kill < case.total_steps
    assert result.final_step == case.total_steps
    assert result.steps_trained_twice >= 1


def steps(first: int, last: int, loss: float = 1.5) -> dict[int, float]:
    return {s: loss for s in range(first, last + 1)}


def test_a_resume_that_starts_over_or_diverges_is_reported() -> None:
    case = ResumeCase("cpu", "fp32", checkpoint_every=10, total_steps=40)
    good = judge_resume(case, True, steps(1, 25), 20, steps(21, 40))
    assert good.ok and good.steps_trained_twice == 5 and good.max_rel_loss_diff == 0

    close = judge_resume(case, True, steps(1, 25), 20, steps(21, 40, loss=1.5 * (1 + 1e-4)))
    assert close.ok
    exact = ResumeCase("cpu", "fp32", checkpoint_every=10, total_steps=40, loss_rtol=0.0)
    assert not judge_resume(exact, True, steps(1, 25), 20, steps(21, 40, loss=1.5 * (1 + 1e-4))).ok

    from_scratch = judge_resume(case, True, steps(1, 25), None, steps(1, 40))
    assert not from_scratch.ok
    assert "no checkpoint to resume from" in from_scratch.problems

    diverged = judge_resume(case, True, steps(1, 25), 20, steps(21, 40, loss=1.6))
    assert any("differ in loss" in p for p in diverged.problems)

    blew_up = judge_resume(case, True, steps(1, 25), 20, {**steps(21, 39), 40: math.nan})
    assert "a loss was not finite" in blew_up.problems

    not_killed = judge_resume(case, False, steps(1, 40), 40, {})
    assert "the run was not killed by SIGKILL mid-run" in not_killed.problems
