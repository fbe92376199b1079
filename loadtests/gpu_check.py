"""``make gpu-check``: what one CUDA machine does with the stars model, in one prepared run.

Two measurements (at most 8 minutes; 172 s on one H200 at the default 10 s per case when the
check still included the resume run that is now a test), written as JSON to
``docs/bench/gpu-<card>.json``:

* **training**: samples/s of fine-tuning with fp32, bf16 autocast and fp16 autocast with a
  ``GradScaler``, with DDP over every visible GPU (one spawned process per GPU, NCCL, joined
  through ``training.distributed``), on synthetic review texts padded per batch like training's.
  Each step is the training loop's own (``training.step.TrainingStep``: the rating loss with its
  ordinal term, AdamW without weight decay on biases and norms, clipping after unscaling, one
  autocast), with the linear schedule, so the numbers are those of the recipe users train;
* **inference**: reviews/s and batch latency of the handler's code path
  (``starrating.encode_batch``, the batching the handler uses on this device from
  ``handlers/model-config.yaml``, forward, calibrated softmax) for several batch sizes, in the
  handler's fp32 and bf16 numerics (``handlers.numerics.apply_precision``).

Whether a run killed with SIGKILL resumes correctly on the GPU is a test,
``tests/gpu/test_resume.py`` (``pytest -m gpu tests/gpu``; ``make gpu-check`` runs it after the
measurements).

A bare GPU machine may have no MLflow, TorchServe, scikit-learn or SciPy: this module imports
only torch, transformers and the parts of this project that import nothing else (the core,
``handlers.batch``/``config``/``numerics``, ``training.step``/``config``/``distributed``).

Exit status: 0 when every measurement finished, 1 when one could not, 2 for bad arguments,
``EXIT_NO_CUDA`` (3) when no CUDA GPU is visible (nothing is measured).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch.multiprocessing.spawn import (
    ProcessExitedException,
    ProcessRaisedException,
    start_processes,
)
from torch.nn.parallel import DistributedDataParallel

from handlers.batch import score
from handlers.config import HandlerConfig
from handlers.numerics import apply_precision
from serving.addresses import free_port
from starrating.artifacts import Artifacts
from starrating.labels import STARS, star_to_id
from starrating.models import DEFAULT_MODEL, load_pretrained
from starrating.text import effective_max_length, encode_batch
from training.config import TrainConfig
from training.distributed import DistributedContext, agree_any, distributed_context
from training.step import ResolvedPrecision, TrainingStep

logger = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_NO_CUDA = 3
DEFAULT_SECONDS_PER_CASE = 10.0
# 3 training cases + 2 x len(INFERENCE_BATCH_SIZES) inference cases at this many seconds each,
# plus process start-up and model loads, stay within 8 minutes.
MAX_SECONDS_PER_CASE = 25.0
DEFAULT_OUT_DIR = Path("docs/bench")

TRAIN_PRECISIONS: tuple[ResolvedPrecision, ...] = ("fp32", "bf16", "fp16")
# The handler's numerics that run on a GPU (int8 dynamic quantization is CPU only).
INFERENCE_PRECISIONS = ("fp32", "bf16")
INFERENCE_BATCH_SIZES = (1, 8, 32, 128)
TRAIN_BATCH_PER_GPU = 32
WARMUP_STEPS = 5
WARMUP_BATCHES = 3
# Distinct pre-tokenised batches cycled through, so batches differ in length as in training.
BATCH_POOL = 16
STARTUP_TIMEOUT_S = 180.0

_REVIEW_WORDS = (
    "the battery lasts all day and the screen is bright but the speaker sounds thin "
    "i returned it after a week because it stopped charging customer service was helpful "
    "great value for the price works exactly as described would buy again "
    "cheap plastic feels flimsy and the buttons stick terrible quality avoid "
    "arrived late box damaged but the product itself is fine okay not amazing "
    "love the design my kids use it every day excellent sound picture quality "
    "setup took five minutes instructions were clear disappointed with the camera"
).split()


class GpuCheckError(RuntimeError):
    """A measurement that could not run to its end (a worker failed or timed out)."""


# -- review texts -----------------------------------------------------------------------------


def synthetic_reviews(count: int, seed: int) -> tuple[list[str], list[int]]:
    """``count`` review-like texts with random stars: words from a review vocabulary, lengths
    log-normal around 40 words (a long tail, so batches pad as real review batches do)."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        words = min(300, max(3, round(rng.lognormvariate(math.log(40), 0.7))))
        texts.append(" ".join(rng.choices(_REVIEW_WORDS, k=words)) + ".")
    return texts, [rng.choice(STARS) for _ in range(count)]


def training_batches(
    tokenizer: Any, batch_size: int, max_length: int, device: torch.device, seed: int
) -> list[dict[str, torch.Tensor]]:
    """``BATCH_POOL`` batches as training tokenises them (``encode_batch``, padded to the
    batch's longest review), with labels, already on ``device``."""
    texts, stars = synthetic_reviews(BATCH_POOL * batch_size, seed)
    batches = []
    for start in range(0, len(texts), batch_size):
        encoded = dict(encode_batch(tokenizer, texts[start : start + batch_size], max_length))
        labels = [star_to_id(s) for s in stars[start : start + batch_size]]
        encoded["labels"] = torch.tensor(labels)
        batches.append({k: v.to(device) for k, v in encoded.items()})
    return batches


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a clock read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_model(name: str | None, max_length: int, device: torch.device) -> tuple[Any, Any]:
    """``load_pretrained`` without transformers' notice about the fresh classification head."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    model, tokenizer = load_pretrained(name, max_length)
    return model.to(device), tokenizer  # type: ignore[arg-type]


# -- training ---------------------------------------------------------------------------------


@dataclass
class TrainingRun:
    """A model trained as ``training.loop`` trains it: its ``TrainingStep`` (the loop's loss,
    parameter groups, AdamW, scaler and autocast) and the linear schedule, DDP-wrapped when
    ``ctx`` has several processes."""

    model: torch.nn.Module
    training_step: TrainingStep
    scheduler: Any
    device: torch.device
    step: int = 0

    @classmethod
    def create(
        cls,
        model: torch.nn.Module,
        precision: ResolvedPrecision,
        ctx: DistributedContext,
        total_steps: int,
        settings: TrainConfig,
    ) -> TrainingRun:
        from transformers import get_linear_schedule_with_warmup

        device = ctx.device
        wrapped: torch.nn.Module = model
        if ctx.distributed:
            ids = [device] if device.type == "cuda" else None
            wrapped = DistributedDataParallel(model, device_ids=ids)
        training_step = TrainingStep.create(model, settings, device, precision, module=wrapped)
        scheduler = get_linear_schedule_with_warmup(  # type: ignore[no-untyped-call]
            training_step.optimizer, math.ceil(settings.warmup_ratio * total_steps), total_steps
        )
        model.train()
        return cls(model, training_step, scheduler, device)

    def train_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One optimizer step on ``batch`` and one of the schedule; the loss, on the device."""
        loss = self.training_step.take(batch)
        self.scheduler.step()
        self.step += 1
        return loss


@dataclass(frozen=True)
class TrainingCase:
    """What one training measurement runs; ``steps`` (a test's) or else ``seconds`` bound it."""

    precision: ResolvedPrecision
    model: str | None = None
    batch_size: int = TRAIN_BATCH_PER_GPU
    seconds: float = DEFAULT_SECONDS_PER_CASE
    steps: int | None = None
    warmup_steps: int = WARMUP_STEPS


@dataclass(frozen=True)
class TrainingResult:
    precision: ResolvedPrecision
    world_size: int
    global_batch: int
    steps: int
    seconds: float
    samples_per_s: float
    final_loss: float
    peak_memory_gib: float | None


def measure_training(ctx: DistributedContext, case: TrainingCase) -> TrainingResult:
    """Train ``case`` on ``ctx.device`` (every rank of a DDP group calls it together): warm-up
    steps, then steps until ``case.steps`` or ``case.seconds``; samples/s over all ranks."""
    settings = TrainConfig(out=Path(tempfile.gettempdir()))
    torch.manual_seed(settings.seed)  # same head on every rank, as in training
    model, tokenizer = load_model(case.model, settings.max_length, ctx.device)
    batches = training_batches(
        tokenizer, case.batch_size, settings.max_length, ctx.device, seed=ctx.rank
    )
    run = TrainingRun.create(model, case.precision, ctx, total_steps=10_000, settings=settings)
    for i in range(case.warmup_steps):
        run.train_step(batches[i % len(batches)])
    synchronize(ctx.device)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    agree_any(ctx, True)  # start the clock together
    steps, started = 0, time.perf_counter()
    while True:
        loss = run.train_step(batches[steps % len(batches)])
        steps += 1
        done = steps >= case.steps if case.steps else time.perf_counter() - started >= case.seconds
        if agree_any(ctx, done)[0]:
            break
    synchronize(ctx.device)
    seconds = time.perf_counter() - started
    cuda = ctx.device.type == "cuda"
    peak = torch.cuda.max_memory_allocated(ctx.device) / 2**30 if cuda else None
    samples = steps * case.batch_size * ctx.world_size
    return TrainingResult(
        precision=case.precision,
        world_size=ctx.world_size,
        global_batch=case.batch_size * ctx.world_size,
        steps=steps,
        seconds=round(seconds, 3),
        samples_per_s=round(samples / seconds, 1),
        final_loss=float(loss),
        peak_memory_gib=round(peak, 2) if peak is not None else None,
    )


def _training_worker(
    local_rank: int, world_size: int, port: int, cases: list[TrainingCase], result: str
) -> None:
    """One DDP process: join the group as torchrun would, run every case, rank 0 writes."""
    os.environ |= {
        "RANK": str(local_rank),
        "LOCAL_RANK": str(local_rank),
        "WORLD_SIZE": str(world_size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    with distributed_context() as ctx:
        results = [asdict(measure_training(ctx, case)) for case in cases]
    if ctx.is_main:
        Path(result).write_text(json.dumps(results), encoding="utf-8")


def run_ddp_training(
    cases: Sequence[TrainingCase], world_size: int, timeout_s: float
) -> list[TrainingResult]:
    """``cases`` with DDP over ``world_size`` spawned processes (one per GPU: NCCL; Gloo where
    there is no GPU), within ``timeout_s``."""
    with tempfile.TemporaryDirectory(prefix="starrating-gpu-check-") as tmp:
        result = Path(tmp) / "training.json"
        context = start_processes(  # type: ignore[no-untyped-call]
            _training_worker,
            args=(world_size, free_port(), list(cases), str(result)),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout_s
        try:
            while not context.join(timeout=1):
                if time.monotonic() > deadline:
                    raise GpuCheckError(f"DDP training did not finish within {timeout_s:.0f} s")
        except ProcessRaisedException as exc:
            raise GpuCheckError(f"a DDP training process failed: {exc}") from exc
        except ProcessExitedException as exc:
            raise GpuCheckError(f"a DDP training process died: {exc}") from exc
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
        return [TrainingResult(**row) for row in json.loads(result.read_text(encoding="utf-8"))]


# -- inference --------------------------------------------------------------------------------


@dataclass(frozen=True)
class InferenceResult:
    precision: str
    batch_size: int
    strategy: str
    batches: int
    reviews_per_s: float
    p50_ms: float
    p95_ms: float


def handler_config(device: torch.device) -> HandlerConfig:
    """The handler's settings for ``device`` as shipped in ``handlers/model-config.yaml``."""
    import yaml  # a dependency of transformers

    text = resources.files("handlers").joinpath("model-config.yaml").read_text(encoding="utf-8")
    return HandlerConfig.resolve(yaml.safe_load(text)["handler"], device.type, {})


def rate_as_handler(
    artifacts: Artifacts, texts: Sequence[str], config: HandlerConfig, device: torch.device
) -> torch.Tensor:
    """Calibrated probabilities of ``texts`` on the path of ``StarHandler.preprocess`` and
    ``inference`` (which import TorchServe): one ``encode_batch``, moved to the device, then
    the forward passes of ``sub_batches``, each trimmed to its longest text."""
    encoded = encode_batch(artifacts.tokenizer, texts, artifacts.max_length)
    return score(artifacts, {k: v.to(device) for k, v in encoded.items()}, config)


def measure_inference(
    artifacts: Artifacts,
    texts: Sequence[str],
    device: torch.device,
    *,
    precision: str,
    batch_size: int,
    seconds: float,
    min_batches: int = 1,
) -> InferenceResult:
    """Rate batches of ``batch_size`` round-robin for ``seconds`` (at least ``min_batches``)
    after a warm-up; the model in ``artifacts`` is already in ``precision`` on ``device``."""
    config = handler_config(device)
    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    for batch in batches[:WARMUP_BATCHES]:
        rate_as_handler(artifacts, batch, config, device)
    timings: list[float] = []
    reviews = 0
    started = time.perf_counter()
    while len(timings) < min_batches or time.perf_counter() - started < seconds:
        batch = batches[len(timings) % len(batches)]
        begin = time.perf_counter()
        rate_as_handler(artifacts, batch, config, device)  # its .cpu() waits for the GPU
        timings.append(time.perf_counter() - begin)
        reviews += len(batch)
    elapsed = time.perf_counter() - started
    ordered = sorted(timings)
    return InferenceResult(
        precision=precision,
        batch_size=batch_size,
        strategy=config.strategy,
        batches=len(timings),
        reviews_per_s=round(reviews / elapsed, 1),
        p50_ms=round(1000 * ordered[len(ordered) // 2], 2),
        p95_ms=round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
    )


def measure_serving(
    model_name: str | None,
    device: torch.device,
    *,
    precisions: Sequence[str] = INFERENCE_PRECISIONS,
    batch_sizes: Sequence[int] = INFERENCE_BATCH_SIZES,
    seconds: float,
    min_batches: int = 1,
) -> list[InferenceResult]:
    """Every precision x batch size, one model load (bf16 casts the weights in place, so the
    precisions run in the order given, fp32 first)."""
    settings = TrainConfig(out=Path(tempfile.gettempdir()))
    model, tokenizer = load_model(model_name, settings.max_length, device)
    model.eval()
    artifacts = Artifacts(model, tokenizer, effective_max_length(tokenizer), temperature=1.0)
    texts, _ = synthetic_reviews(max(batch_sizes) * 8, seed=1)
    results = []
    for precision in precisions:
        artifacts = replace(artifacts, model=apply_precision(artifacts.model, precision))
        for batch_size in batch_sizes:
            result = measure_inference(
                artifacts,
                texts,
                device,
                precision=precision,
                batch_size=batch_size,
                seconds=seconds,
                min_batches=min_batches,
            )
            logger.info(
                "inference %s batch %d: %.1f reviews/s, p50 %.2f ms",
                precision,
                batch_size,
                result.reviews_per_s,
                result.p50_ms,
            )
            results.append(result)
    return results


# -- the whole check --------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuCheckConfig:
    """What ``make gpu-check`` was asked to do."""

    model: str = DEFAULT_MODEL
    out: Path | None = None
    seconds_per_case: float = DEFAULT_SECONDS_PER_CASE
    batch_size: int = TRAIN_BATCH_PER_GPU


def card_slug(name: str) -> str:
    """A file-name-safe form of a GPU's name: ``NVIDIA H100 PCIe`` -> ``nvidia-h100-pcie``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def _speedups(training: Sequence[TrainingResult]) -> dict[str, float]:
    fp32 = next(r.samples_per_s for r in training if r.precision == "fp32")
    others = [r for r in training if r.precision != "fp32"]
    return {r.precision: round(r.samples_per_s / fp32, 2) for r in others}


def run_gpu_check(config: GpuCheckConfig, device: torch.device) -> dict[str, Any]:
    """Every measurement: training with DDP over every visible GPU, inference on ``device``
    (the first GPU; a test's CPU, where training runs one process)."""
    started = time.monotonic()
    cuda = device.type == "cuda"
    processes = torch.cuda.device_count() if cuda else 1
    card = torch.cuda.get_device_name(device) if cuda else "cpu"
    bf16 = torch.cuda.is_bf16_supported() if cuda else True
    seconds = config.seconds_per_case
    logger.info("GPU check on %d x %s, %s, %g s per case", processes, card, config.model, seconds)
    cases = [
        TrainingCase(p, config.model, config.batch_size, seconds)
        for p in TRAIN_PRECISIONS
        if p != "bf16" or bf16
    ]
    timeout = STARTUP_TIMEOUT_S + len(cases) * (seconds + 60)
    training = run_ddp_training(cases, processes, timeout)
    for result in training:
        logger.info("training %s: %.1f samples/s", result.precision, result.samples_per_s)
    inference = measure_serving(
        config.model,
        device,
        precisions=[p for p in INFERENCE_PRECISIONS if p != "bf16" or bf16],
        seconds=seconds,
    )
    import transformers

    memory = torch.cuda.get_device_properties(device).total_memory / 2**30 if cuda else None
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "card": card,
        "gpus": processes if cuda else 0,
        "gpu_memory_gib": round(memory, 1) if memory is not None else None,
        "bf16_supported": bf16,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "fp32_matmul_precision": torch.get_float32_matmul_precision(),
        "model": config.model,
        "seconds_per_case": seconds,
        "training": [asdict(r) for r in training],
        "training_speedup_over_fp32": _speedups(training),
        "inference": [asdict(r) for r in inference],
        "wall_s": round(time.monotonic() - started, 1),
    }


def write_report(report: dict[str, Any], out: Path | None) -> Path:
    """``report`` as JSON at ``out``, by default ``docs/bench/gpu-<card>.json``."""
    path = out or DEFAULT_OUT_DIR / f"gpu-{card_slug(report['card'])}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path


def _seconds_per_case(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0 < seconds <= MAX_SECONDS_PER_CASE:
        raise argparse.ArgumentTypeError(
            f"must be in (0, {MAX_SECONDS_PER_CASE:g}] so the whole check stays within 8 "
            f"minutes, got {value}"
        )
    return seconds


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return number


def parse_args(argv: Sequence[str] | None) -> GpuCheckConfig:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.gpu_check",
        description=(
            "On a machine with a CUDA GPU: training samples/s (fp32, bf16, fp16; DDP on every "
            "GPU, each step the training loop's) and the handler's batched inference throughput "
            "(fp32, bf16), as JSON. Exits with status 3 where no CUDA GPU is visible."
        ),
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="'minilm' (bundled, offline; the default), a hub id or a save_pretrained folder.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="Where the JSON goes (default docs/bench/gpu-<card>.json, <card> from the GPU name).",
    )
    parser.add_argument(
        "--seconds-per-case",
        type=_seconds_per_case,
        default=DEFAULT_SECONDS_PER_CASE,
        help=(
            f"Measuring time of each training and inference case (default "
            f"{DEFAULT_SECONDS_PER_CASE:g}, at most {MAX_SECONDS_PER_CASE:g})."
        ),
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=TRAIN_BATCH_PER_GPU,
        help=f"Training batch per GPU (default {TRAIN_BATCH_PER_GPU}).",
    )
    args = parser.parse_args(argv)
    if args.out is not None and (args.out.is_dir() or args.out.parent.is_file()):
        parser.error(f"--out must be a file path, got {args.out}")
    return GpuCheckConfig(args.model, args.out, args.seconds_per_case, args.batch_size)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not torch.cuda.is_available():
        logger.error(
            "no CUDA GPU is visible (torch %s, built for CUDA %s): the GPU check measures "
            "nothing here; run it on a machine with an NVIDIA GPU",
            torch.__version__,
            torch.version.cuda or "none",
        )
        return EXIT_NO_CUDA
    try:
        report = run_gpu_check(config, torch.device("cuda", 0))
    except GpuCheckError as exc:
        logger.error("the GPU check could not finish: %s", exc)
        return EXIT_FAILED
    out = write_report(report, config.out)
    logger.info("wrote %s in %.0f s", out, report["wall_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
